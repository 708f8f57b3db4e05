"""Pure parts of the scale benchmark: what the simulated agents write, the naive design's policy
status, when a policy status reflects a change, API-server metrics and the cost model.

No I/O here (``bench/scale_kube.py`` talks to the API server, ``bench/scale.py`` runs it all).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from overcommit.api.policy import GROUP, POLICY_KIND, VERSION, PolicySpec
from overcommit.api.schema import doc, fit, openapi_schema, to_json
from overcommit.api.status import (
    Condition,
    Engine,
    Guest,
    HostMemory,
    NodeStateStatus,
    PolicyRef,
    Saved,
    condition_of,
)
from overcommit.units import human_bytes

JSON = dict[str, Any]
PER_NODE = "per_node_state"
NAIVE = "naive"
DESIGNS = (PER_NODE, NAIVE)

POLICIES = f"/apis/{GROUP}/{VERSION}/memoryovercommitpolicies"
NODE_STATES = f"/apis/{GROUP}/{VERSION}/memoryovercommitnodestates"
# The naive design needs a policy whose status takes one entry per node: a bench-only kind with
# the real spec schema and a map of node entries as status.
NAIVE_GROUP = "naive.memoryovercommit.io"
NAIVE_KIND = "NaiveOvercommitPolicy"
NAIVE_PLURAL = "naiveovercommitpolicies"
NAIVE_POLICIES = f"/apis/{NAIVE_GROUP}/{VERSION}/{NAIVE_PLURAL}"
POOL_LABEL = "scale.memoryovercommit.io/pool"

GIB = 2**30
PAGE = 4096
GUESTS_PER_NODE = 6


# -- what an agent reports ------------------------------------------------------------------
@dataclass(frozen=True)
class NodeView:
    """What one simulated node observes in one cycle."""

    node: str
    index: int  # the node's number, so nodes differ a little as real ones do
    policy_uid: str
    generation: int
    tick: int  # advances while counters move (KSM keeps merging, zswap keeps storing)
    failed: bool = False


KSM_SETTINGS = {
    "run": "1", "pages_to_scan": "1000", "sleep_millisecs": "20", "max_page_sharing": "256",
    "merge_across_nodes": "1", "use_zero_pages": "0", "smart_scan": "1", "advisor_mode": "none",
    "advisor_max_cpu": "70", "advisor_target_scan_time": "200",
    "advisor_min_pages_to_scan": "500", "advisor_max_pages_to_scan": "30000",
    "stable_node_chains_prune_millisecs": "2000",
}
ZSWAP_SETTINGS = {
    "enabled": "Y", "compressor": "zstd", "max_pool_percent": "20",
    "accept_threshold_percent": "90", "shrinker_enabled": "Y", "zpool": "zsmalloc",
    "same_filled_pages_enabled": "Y",
}
ORIGINALS = {"sys/kernel/mm/ksm/run": "0", "sys/kernel/mm/ksm/pages_to_scan": "100",
             "sys/module/zswap/parameters/enabled": "N",
             "sys/module/zswap/parameters/compressor": "lzo"}


def settings() -> dict[str, str]:
    out = {f"sys/kernel/mm/ksm/{k}": v for k, v in KSM_SETTINGS.items()}
    out |= {f"sys/module/zswap/parameters/{k}": v for k, v in ZSWAP_SETTINGS.items()}
    out["proc/sys/vm/swappiness"] = "60"
    return dict(sorted(out.items()))


def counters(view: NodeView) -> dict[str, int]:
    sharing = 400_000 + 997 * view.index + 1_500 * view.tick
    return {
        "ksm.full_scans": 40 + view.tick, "ksm.general_profit": (sharing - 30_000) * PAGE,
        "ksm.ksm_zero_pages": 2_000, "ksm.pages_scanned": 9_000_000 + 60_000 * view.tick,
        "ksm.pages_shared": sharing // 9, "ksm.pages_sharing": sharing,
        "ksm.pages_skipped": 1_200, "ksm.pages_unshared": 700_000, "ksm.pages_volatile": 30_000,
        "ksm.stable_node_chains": 3, "ksm.stable_node_dups": 41,
        "swap.pswpin": 1_200, "swap.pswpout": 3_400, "swap.swap_devices": 1,
        "swap.swap_total_bytes": 8 * GIB, "swap.swap_free_bytes": 7 * GIB,
        "swap.swap_used_bytes": GIB, "swap.swap_size_bytes": 8 * GIB,
        "zswap.zswapped_bytes": (600 + view.tick) * 2**20,
        "zswap.zswap_pool_bytes": (200 + view.tick // 3) * 2**20,
        "zswap.zswpin": 50 + view.tick, "zswap.zswpout": 9_000 + 7 * view.tick,
        "zswap.zswpwb": 3,
    }


def guests(view: NodeView) -> list[Guest]:
    out = []
    for g in range(GUESTS_PER_NODE):
        name = f"vm-{view.index:05d}-{g}"
        uid = f"{view.index:08x}-{g:04x}-4000-8000-{view.index * 7 + g:012x}"
        out.append(Guest(domain=f"tenant-{g % 3}_{name}", vmi_namespace=f"tenant-{g % 3}",
                         vmi_name=name, vmi_uid=uid, max_bytes=8 * GIB,
                         current_bytes=7 * GIB, target_bytes=7 * GIB,
                         usable_bytes=3 * GIB + 2**20 * (view.tick % 64),
                         reason="idle: gave 1.0Gi (usable 3.0Gi above the 20% margin)"))
    return out


def conditions(view: NodeView, policy: str) -> list[Condition]:
    stamp = "2026-01-01T00:00:00Z"
    if view.failed:
        reason = "ApplyFailed"
        message = ("1 setting(s) could not be written; first: sys/kernel/mm/ksm/"
                   "merge_across_nodes: EBUSY: pages are merged")
        return [Condition("Ready", "False", reason, message, view.generation, stamp),
                Condition("Degraded", "True", reason, message, view.generation, stamp)]
    return [Condition("Ready", "True", "Applied",
                      f"policy {policy} generation {view.generation} is applied",
                      view.generation, stamp),
            Condition("Degraded", "False", "AsExpected", "no problems", view.generation, stamp)]


def saved(view: NodeView) -> Saved:
    c = counters(view)
    merged = (c["ksm.pages_sharing"] + c["ksm.ksm_zero_pages"]) * PAGE
    compressed = c["zswap.zswapped_bytes"] - c["zswap.zswap_pool_bytes"]
    ballooned = GUESTS_PER_NODE * GIB
    total = merged + compressed + ballooned
    return Saved(merged_bytes=merged, merging_profit_bytes=c["ksm.general_profit"],
                 ballooned_bytes=ballooned, compressed_bytes=compressed, total_bytes=total,
                 summary=human_bytes(total))


def node_status(view: NodeView, policy: str) -> NodeStateStatus:
    """A node state's status of the size and shape the real agent writes (~5 KiB)."""
    return NodeStateStatus(
        policy=PolicyRef(policy, view.policy_uid, view.generation), overridden=[],
        conditions=conditions(view, policy), engine="ksm",
        engines=[Engine(name, name != "uksm")
                 for name in ("ksm", "meminfo", "psi", "swap", "uksm", "zswap")],
        settings=settings(), counters=counters(view), originals=ORIGINALS, saved=saved(view),
        memory=HostMemory(total_bytes=256 * GIB, available_bytes=40 * GIB,
                          swap_total_bytes=8 * GIB, swap_free_bytes=7 * GIB,
                          psi_some_avg10="1.25", psi_full_avg10="0.40"),
        guest_count=GUESTS_PER_NODE, guests=guests(view),
        last_errors=["sys/kernel/mm/ksm/merge_across_nodes: EBUSY: pages are merged"]
        if view.failed else [])


# -- the naive design -----------------------------------------------------------------------
@dataclass(frozen=True)
class NaiveEntry:
    """One node's entry in the naive policy status: the least a cluster summary needs."""

    generation: int | None = doc("The policy generation the node applied.", minimum=0)
    ready: str | None = doc("The node's Ready condition status.", max_length=16)
    reason: str | None = doc("The Ready condition's reason.", max_length=128)
    message: str | None = doc("The Ready condition's message.", max_length=1024)
    merged_bytes: int | None = doc("Saved by merging on the node.", minimum=0)
    ballooned_bytes: int | None = doc("Taken back from guests.", minimum=0)
    compressed_bytes: int | None = doc("Saved by zswap.", minimum=0)


@dataclass(frozen=True)
class NaiveStatus:
    """Every agent writes its own entry into the policy's status."""

    nodes: dict[str, NaiveEntry] | None = doc("One entry per node, keyed by node name.")


def naive_entry(status: NodeStateStatus) -> JSON:
    """The entry a naive agent writes into the policy status, from its node status."""
    ready = condition_of(status, "Ready")
    saved_ = status.saved or Saved()
    entry = fit(NaiveEntry(generation=status.policy.generation if status.policy else None,
                           ready=ready.status, reason=ready.reason, message=ready.message,
                           merged_bytes=saved_.merged_bytes,
                           ballooned_bytes=saved_.ballooned_bytes,
                           compressed_bytes=saved_.compressed_bytes))
    out: JSON = to_json(entry)
    return out


def with_naive_entry(policy: Mapping[str, Any], node: str, entry: Mapping[str, Any]) -> JSON:
    """``policy`` with ``entry`` for ``node`` in its status (the PUT body); ``policy`` itself is
    left as it was (only the path to the entry is copied: the rest is shared)."""
    status = dict(policy.get("status") or {})
    status["nodes"] = {**(status.get("nodes") or {}), node: dict(entry)}
    return {**policy, "status": status}


def naive_crd() -> JSON:
    spec = openapi_schema(PolicySpec)
    status = openapi_schema(NaiveStatus)
    schema = {"type": "object",
              "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                             "metadata": {"type": "object"}, "spec": spec, "status": status}}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{NAIVE_PLURAL}.{NAIVE_GROUP}"},
            "spec": {"group": NAIVE_GROUP, "scope": "Cluster",
                     "names": {"plural": NAIVE_PLURAL, "singular": NAIVE_KIND.lower(),
                               "kind": NAIVE_KIND, "listKind": f"{NAIVE_KIND}List"},
                     "versions": [{"name": VERSION, "served": True, "storage": True,
                                   "subresources": {"status": {}},
                                   "schema": {"openAPIV3Schema": schema}}]}}


def policy_object(design: str, name: str) -> JSON:
    api_version, kind = (f"{GROUP}/{VERSION}", POLICY_KIND) if design == PER_NODE else \
        (f"{NAIVE_GROUP}/{VERSION}", NAIVE_KIND)
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name},
            "spec": {"nodeSelector": {"matchLabels": {POOL_LABEL: "bench"}},
                     "ksm": {"mode": "Static", "enabled": True, "pagesToScan": 1000},
                     "zswap": {"enabled": True, "compressor": "zstd"}}}


def conflict_backoff_s(attempt: int, rng: random.Random, base: float = 0.01,
                       cap: float = 10.0) -> float:
    """Exponential backoff with jitter between resourceVersion-conflict retries."""
    ceiling = min(cap, base * 2 ** min(attempt, 30))
    return rng.uniform(ceiling / 2, ceiling)


# -- when the policy status shows a node's change -------------------------------------------
def summary_shows(status: Mapping[str, Any] | None, node: str, failed: bool) -> bool:
    """The controller's summary lists ``node`` as a problem (and counts a failure) iff failed."""
    status = status or {}
    listed = any(p.get("node") == node for p in status.get("problems") or [])
    failures = int((status.get("nodes") or {}).get("failed") or 0)
    return listed == failed and (failures > 0) == failed


def summary_complete(status: Mapping[str, Any] | None, nodes: int, generation: int) -> bool:
    """Every node is counted as applied, for the current generation."""
    status = status or {}
    counts = status.get("nodes") or {}
    return (status.get("observedGeneration") == generation
            and counts.get("matched") == nodes and counts.get("applied") == nodes)


def naive_shows(status: Mapping[str, Any] | None, node: str, failed: bool) -> bool:
    entry = ((status or {}).get("nodes") or {}).get(node)
    return entry is not None and entry.get("ready") == ("False" if failed else "True")


def naive_complete(status: Mapping[str, Any] | None, nodes: int, generation: int) -> bool:
    entries = ((status or {}).get("nodes") or {}).values()
    return len(entries) == nodes and all(e.get("generation") == generation for e in entries)


def shows(design: str, status: Mapping[str, Any] | None, node: str, failed: bool) -> bool:
    return (summary_shows if design == PER_NODE else naive_shows)(status, node, failed)


def complete(design: str, status: Mapping[str, Any] | None, nodes: int, generation: int) -> bool:
    return (summary_complete if design == PER_NODE else naive_complete)(status, nodes, generation)


# -- API-server metrics (Prometheus text format) ---------------------------------------------
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+"
                     r"(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str, metric: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``metric``: (labels, value)."""
    out = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["name"] != metric:
            continue
        labels = dict(_LABEL.findall(match["labels"] or ""))
        out.append((labels, float(match["value"])))
    return out


def resource_key(labels: Mapping[str, str]) -> str:
    """``group/resource[/subresource]`` (core group as ``core``)."""
    key = f"{labels.get('group') or 'core'}/{labels.get('resource', '')}"
    return f"{key}/{labels['subresource']}" if labels.get("subresource") else key


def write_requests(text: str) -> Counter[str]:
    """Write requests the API server has served so far, by resource (any response code)."""
    counts: Counter[str] = Counter()
    for labels, value in samples(text, "apiserver_request_total"):
        if labels.get("verb") in WRITE_VERBS:
            counts[resource_key(labels)] += int(value)
    return counts


def operator_write_codes(text: str) -> Counter[str]:
    """Write requests to the operator's kinds so far, by HTTP response code (409: conflict,
    504: timed out in the API server, ...)."""
    codes: Counter[str] = Counter()
    for labels, value in samples(text, "apiserver_request_total"):
        if labels.get("verb") in WRITE_VERBS and labels.get("group") in OPERATOR_GROUPS:
            codes[labels.get("code", "?")] += int(value)
    return codes


def watch_events(text: str) -> Counter[str]:
    """Watch events sent to watchers so far, by resource, and their bytes (``<key>#bytes``)."""
    counts: Counter[str] = Counter()
    for labels, value in samples(text, "apiserver_watch_events_total"):
        counts[resource_key(labels)] += int(value)
    for labels, value in samples(text, "apiserver_watch_events_sizes_sum"):
        counts[resource_key(labels) + "#bytes"] += int(value)
    return counts


def since(after: Counter[str], before: Counter[str]) -> Counter[str]:
    """What happened between two snapshots (only positive differences)."""
    return Counter({k: after[k] - before.get(k, 0) for k in after if after[k] > before.get(k, 0)})


OPERATOR_GROUPS = frozenset({GROUP, NAIVE_GROUP})


def split_writes(writes: Mapping[str, int]) -> tuple[int, int]:
    """(writes to the operator's kinds, all other writes): the rest is the control plane's own
    bookkeeping (its heartbeat Lease, the ``kubernetes`` Service's endpoints) and the
    controller's leader-election Lease, at fixed rates that do not depend on the node count."""
    ours = sum(v for k, v in writes.items() if k.split("/", 1)[0] in OPERATOR_GROUPS)
    return ours, sum(writes.values()) - ours


def per_minute(count: float, seconds: float) -> float:
    return 60.0 * count / seconds if seconds > 0 else math.nan


def per_node_per_minute(count: float, nodes: int, seconds: float) -> float:
    return per_minute(count, seconds) / nodes if nodes else math.nan


# -- the cost model ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Model:
    """What each design costs per minute at ``nodes``, under a churn of ``node_writes_min``
    node-status writes per node per minute.

    per_node_state: agents write their own small object, seen only by the controller; the
    controller writes each policy at most ``summary_writes_min`` times a minute, and every
    agent receives those: O(1) per agent, O(N) fan-out for the API server.
    naive: each node's write replaces the shared policy object (``base + N x entry`` bytes) and
    is sent to all N agents: O(N) events per agent, O(N^2) events and O(N^3) bytes in all.
    """

    nodes: int
    node_writes_min: float
    summary_writes_min: float
    summary_bytes: float
    naive_entry_bytes: float
    naive_base_bytes: float

    @property
    def naive_object_bytes(self) -> float:
        return self.naive_base_bytes + self.nodes * self.naive_entry_bytes

    def events_per_agent_min(self, design: str) -> float:
        if design == PER_NODE:
            return self.summary_writes_min
        return self.nodes * self.node_writes_min

    def bytes_per_agent_min(self, design: str) -> float:
        size = self.summary_bytes if design == PER_NODE else self.naive_object_bytes
        return self.events_per_agent_min(design) * size

    def fanout_bytes_min(self, design: str) -> float:
        """Bytes the API server sends to all agents' policy watches in a minute."""
        return self.nodes * self.bytes_per_agent_min(design)
