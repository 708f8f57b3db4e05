"""Static mapping from a policy's sections to kernel settings (path -> canonical value).

Only what the policy names is emitted; an unset field is never written. Values come from the
validated model, whose bounds are the kernel's own, so every value here is one the kernel takes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from overcommit.api.policy import KsmMode, KsmSpec, SwapSpec, UksmSpec, ZswapSpec
from overcommit.host._sysfs import SettingsSource
from overcommit.host.ksm import ADVISOR_NONE, KSM_DIR, KsmSource
from overcommit.host.swap import SYSCTL_VM
from overcommit.host.uksm import UKSM_DIR, UksmSource, canonical_cpu_ratios
from overcommit.host.zswap import ZSWAP_DIR

Settings = dict[str, str]
Value = int | bool | str | None

ADVISOR_MODE = f"{KSM_DIR}/advisor_mode"
KSM_RUN = f"{KSM_DIR}/run"
KSM_PAGES_TO_SCAN = f"{KSM_DIR}/pages_to_scan"
KSM_SLEEP = f"{KSM_DIR}/sleep_millisecs"


def _resets(source: type[SettingsSource]) -> dict[str, tuple[str, ...]]:
    return {source.directory + "/" + key: tuple(f"{source.directory}/{name}" for name in names)
            for key, names in source.resets.items()}


# Path -> the paths the kernel resets when it changes (advisor_mode, UKSM's cpu_governor).
RESETS = _resets(KsmSource) | _resets(UksmSource)


def advisor_on(settings: Mapping[str, str]) -> bool:
    """Whether KSM's advisor runs in ``settings``: it then owns pages_to_scan, and the kernel
    refuses (EINVAL) a write of it."""
    return settings.get(ADVISOR_MODE, ADVISOR_NONE) != ADVISOR_NONE


def resetters_of(path: str) -> list[str]:
    """The settings whose change makes the kernel reset ``path``."""
    return [key for key, reset in RESETS.items() if path in reset]


def _flag(value: Value) -> str:
    return "1" if value else "0"


def _yn(value: Value) -> str:
    return "Y" if value else "N"


def _named(directory: str, files: Mapping[str, Value],
           render: Callable[[Value], str] = str) -> Settings:
    """``directory/file = render(value)`` for every file whose value the policy names."""
    return {f"{directory}/{name}": render(value) for name, value in files.items()
            if value is not None}


def ksm_static_settings(ksm: KsmSpec, current: Mapping[str, str]) -> Settings:
    """Settings for modes Static and KernelAdvisor (Adaptive adds its own rate on top)."""
    out = _named(KSM_DIR, {
        "sleep_millisecs": ksm.sleep_millisecs,
        "max_page_sharing": ksm.max_page_sharing,
        "stable_node_chains_prune_millisecs": ksm.stable_node_chains_prune_millisecs,
    })
    out |= _named(KSM_DIR, {"merge_across_nodes": ksm.merge_across_nodes,
                            "use_zero_pages": ksm.use_zero_pages,
                            "smart_scan": ksm.smart_scan}, _flag)
    if ksm.enabled is not None:
        out[KSM_RUN] = "1" if ksm.enabled else ("2" if ksm.unmerge_on_disable else "0")
    if ksm.mode is KsmMode.KERNEL_ADVISOR:
        out |= _advisor_settings(ksm)
        out.setdefault(KSM_RUN, "1")
    elif ksm.pages_to_scan is not None:
        out[KSM_PAGES_TO_SCAN] = str(ksm.pages_to_scan)
    # pages_to_scan is EINVAL while the advisor runs: naming it implies advisor off. Named also
    # when already off, so a recorded advisor_mode original is not put back under the rate.
    if (KSM_PAGES_TO_SCAN in out or ksm.mode is KsmMode.ADAPTIVE) and ADVISOR_MODE in current:
        out[ADVISOR_MODE] = "none"
    return out


def _advisor_settings(ksm: KsmSpec) -> Settings:
    out = {ADVISOR_MODE: "scan-time"}
    advisor = ksm.advisor
    if advisor is not None:
        out |= _named(KSM_DIR, {
            "advisor_max_cpu": advisor.max_cpu_percent,
            "advisor_target_scan_time": advisor.target_scan_time_seconds,
            "advisor_min_pages_to_scan": advisor.min_pages_to_scan,
            "advisor_max_pages_to_scan": advisor.max_pages_to_scan,
        })
    return out


def uksm_settings(uksm: UksmSpec) -> Settings:
    out = _named(UKSM_DIR, {"run": uksm.enabled}, _flag)
    out |= _named(UKSM_DIR, {
        "cpu_governor": uksm.cpu_governor.value if uksm.cpu_governor else None,
        "max_cpu_percentage": uksm.max_cpu_percentage,
        "abundant_threshold": uksm.abundant_threshold,
        "thrash_threshold": uksm.thrash_threshold,
        "sleep_millisecs": uksm.sleep_millisecs,
    })
    if uksm.cpu_ratios is not None:
        # MAX/n is stored as a ratio of 10000 and reads back rounded; plan what will read back
        # so a correct node never shows a pending change.
        out[f"{UKSM_DIR}/cpu_ratios"] = canonical_cpu_ratios(" ".join(uksm.cpu_ratios))
    if uksm.eval_intervals is not None:
        out[f"{UKSM_DIR}/eval_intervals"] = " ".join(str(v) for v in uksm.eval_intervals)
    return out


def zswap_settings(zswap: ZswapSpec) -> Settings:
    out = _named(ZSWAP_DIR, {
        "compressor": zswap.compressor.value if zswap.compressor else None,
        "max_pool_percent": zswap.max_pool_percent,
        "accept_threshold_percent": zswap.accept_threshold_percent,
    })
    out |= _named(ZSWAP_DIR, {"shrinker_enabled": zswap.shrinker_enabled,
                              "enabled": zswap.enabled}, _yn)
    return out


def swap_settings(swap: SwapSpec) -> Settings:
    return _named(SYSCTL_VM, {"swappiness": swap.swappiness})
