"""Static mapping from a policy's sections to kernel settings (path -> canonical value).

Only what the policy names is emitted; an unset field is never written. Values come from the
validated model, whose bounds are the kernel's own, so every value here is one the kernel takes.
"""

from __future__ import annotations

from overcommit.api.policy import KsmMode, KsmSpec, SwapSpec, UksmSpec, ZswapSpec
from overcommit.host.ksm import KSM_DIR
from overcommit.host.swap import SYSCTL_VM
from overcommit.host.uksm import UKSM_DIR, canonical_cpu_ratios
from overcommit.host.zswap import ZSWAP_DIR

Settings = dict[str, str]

ADVISOR_MODE = f"{KSM_DIR}/advisor_mode"
KSM_RUN = f"{KSM_DIR}/run"
KSM_PAGES_TO_SCAN = f"{KSM_DIR}/pages_to_scan"
KSM_SLEEP = f"{KSM_DIR}/sleep_millisecs"


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _yn(value: bool) -> str:
    return "Y" if value else "N"


def ksm_static_settings(ksm: KsmSpec, current: dict[str, str]) -> Settings:
    """Settings for modes Static and KernelAdvisor (Adaptive adds its own rate on top)."""
    out: Settings = {}
    plain = {
        "sleep_millisecs": ksm.sleep_millisecs,
        "max_page_sharing": ksm.max_page_sharing,
        "stable_node_chains_prune_millisecs": ksm.stable_node_chains_prune_millisecs,
    }
    for name, number in plain.items():
        if number is not None:
            out[f"{KSM_DIR}/{name}"] = str(number)
    flags = {
        "merge_across_nodes": ksm.merge_across_nodes,
        "use_zero_pages": ksm.use_zero_pages,
        "smart_scan": ksm.smart_scan,
    }
    for name, flag in flags.items():
        if flag is not None:
            out[f"{KSM_DIR}/{name}"] = _flag(flag)
    if ksm.enabled is not None:
        out[KSM_RUN] = "1" if ksm.enabled else ("2" if ksm.unmerge_on_disable else "0")
    if ksm.mode is KsmMode.KERNEL_ADVISOR:
        out.update(_advisor_settings(ksm))
        out.setdefault(KSM_RUN, "1")
    elif ksm.pages_to_scan is not None:
        out[KSM_PAGES_TO_SCAN] = str(ksm.pages_to_scan)
    # pages_to_scan is EINVAL while the advisor runs: naming it implies advisor off.
    if (KSM_PAGES_TO_SCAN in out or ksm.mode is KsmMode.ADAPTIVE) \
            and current.get(ADVISOR_MODE, "none") != "none":
        out[ADVISOR_MODE] = "none"
    return out


def _advisor_settings(ksm: KsmSpec) -> Settings:
    out = {ADVISOR_MODE: "scan-time"}
    advisor = ksm.advisor
    if advisor is None:
        return out
    files = {
        "advisor_max_cpu": advisor.max_cpu_percent,
        "advisor_target_scan_time": advisor.target_scan_time_seconds,
        "advisor_min_pages_to_scan": advisor.min_pages_to_scan,
        "advisor_max_pages_to_scan": advisor.max_pages_to_scan,
    }
    for name, value in files.items():
        if value is not None:
            out[f"{KSM_DIR}/{name}"] = str(value)
    return out


def uksm_settings(uksm: UksmSpec) -> Settings:
    out: Settings = {}
    if uksm.enabled is not None:
        out[f"{UKSM_DIR}/run"] = _flag(uksm.enabled)
    if uksm.cpu_governor is not None:
        out[f"{UKSM_DIR}/cpu_governor"] = uksm.cpu_governor.value
    numbers = {
        "max_cpu_percentage": uksm.max_cpu_percentage,
        "abundant_threshold": uksm.abundant_threshold,
        "thrash_threshold": uksm.thrash_threshold,
        "sleep_millisecs": uksm.sleep_millisecs,
    }
    for name, number in numbers.items():
        if number is not None:
            out[f"{UKSM_DIR}/{name}"] = str(number)
    if uksm.cpu_ratios is not None:
        # MAX/n is stored as a ratio of 10000 and reads back rounded; plan what will read back
        # so a correct node never shows a pending change.
        out[f"{UKSM_DIR}/cpu_ratios"] = canonical_cpu_ratios(" ".join(uksm.cpu_ratios))
    if uksm.eval_intervals is not None:
        out[f"{UKSM_DIR}/eval_intervals"] = " ".join(str(v) for v in uksm.eval_intervals)
    return out


def zswap_settings(zswap: ZswapSpec) -> Settings:
    out: Settings = {}
    if zswap.compressor is not None:
        out[f"{ZSWAP_DIR}/compressor"] = zswap.compressor.value
    if zswap.max_pool_percent is not None:
        out[f"{ZSWAP_DIR}/max_pool_percent"] = str(zswap.max_pool_percent)
    if zswap.accept_threshold_percent is not None:
        out[f"{ZSWAP_DIR}/accept_threshold_percent"] = str(zswap.accept_threshold_percent)
    if zswap.shrinker_enabled is not None:
        out[f"{ZSWAP_DIR}/shrinker_enabled"] = _yn(zswap.shrinker_enabled)
    if zswap.enabled is not None:
        out[f"{ZSWAP_DIR}/enabled"] = _yn(zswap.enabled)
    return out


def swap_settings(swap: SwapSpec) -> Settings:
    if swap.swappiness is None:
        return {}
    return {f"{SYSCTL_VM}/swappiness": str(swap.swappiness)}
