"""Pure parts of the scale benchmark: what the simulated agents write, the naive design's policy
status, when a policy status reflects a change, API-server metrics and the cost model.

No I/O here (``bench/scale_kube.py`` talks to the API server, ``bench/scale.py`` runs it all).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
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
NAIVE = "naive"  # read-modify-write: GET, PUT with the resourceVersion, retry on 409
NAIVE_MERGE = "naive_merge"  # one JSON merge patch of its own entry: no resourceVersion, no 409
DESIGNS = (PER_NODE, NAIVE, NAIVE_MERGE)
NAIVE_DESIGNS = frozenset({NAIVE, NAIVE_MERGE})

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


def naive_merge_patch(node: str, entry: Mapping[str, Any]) -> JSON:
    """The naive_merge agent's write: a JSON merge patch (RFC 7386) of the status that sets its
    own entry only. No resourceVersion, so the API server applies it to whatever is current and
    it never conflicts; the API server still rewrites the whole object in etcd."""
    return {"status": {"nodes": {node: dict(entry)}}}


def policy_collection(design: str) -> str:
    return POLICIES if design == PER_NODE else NAIVE_POLICIES


def policy_object(design: str, name: str) -> JSON:
    api_version, kind = (f"{GROUP}/{VERSION}", POLICY_KIND) if design == PER_NODE else \
        (f"{NAIVE_GROUP}/{VERSION}", NAIVE_KIND)
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name},
            "spec": {"nodeSelector": {"matchLabels": {POOL_LABEL: "bench"}},
                     "ksm": {"mode": "Static", "enabled": True, "pagesToScan": 1000},
                     "zswap": {"enabled": True, "compressor": "zstd"}}}


def policy_change(pages_to_scan: int) -> JSON:
    """A spec change every node must apply (a new generation): the burst scenario's trigger."""
    return {"spec": {"ksm": {"pagesToScan": pages_to_scan}}}


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


def summary_counts(status: Mapping[str, Any] | None, nodes: int, generation: int) -> bool:
    """The summary counts exactly ``nodes`` matched and applied, at ``generation`` (after 20 %
    of the Nodes vanished: the survivors)."""
    return summary_complete(status, nodes, generation)


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


def naive_at(status: Mapping[str, Any] | None, nodes: Collection[str], generation: int) -> bool:
    """Every one of ``nodes`` has an entry at ``generation`` (other entries may linger)."""
    entries = (status or {}).get("nodes") or {}
    return all((entries.get(n) or {}).get("generation") == generation for n in nodes)


def naive_stale(status: Mapping[str, Any] | None, alive: Collection[str]) -> int:
    """Entries of nodes that are gone: nobody removes them in the naive designs."""
    entries = (status or {}).get("nodes") or {}
    return sum(1 for n in entries if n not in alive)


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


# -- latency (the API server's own histogram) and etcd's size --------------------------------
# Long-running requests are not in apiserver_request_duration_seconds' meaning of latency: a
# watch lasts as long as it lasts (the API server's own SLO excludes WATCH and CONNECT too).
LONG_RUNNING_VERBS = frozenset({"WATCH", "WATCHLIST", "CONNECT"})
LATENCY = "apiserver_request_duration_seconds_bucket"


def latency_buckets(text: str, verbs: Collection[str] | None = None) -> dict[float, float]:
    """The API server's request-duration histogram summed over every label set: cumulative
    count by upper bound (``le``), long-running verbs left out; only ``verbs`` when given."""
    buckets: dict[float, float] = {}
    for labels, value in samples(text, LATENCY):
        verb = labels.get("verb", "")
        if verb in LONG_RUNNING_VERBS or (verbs is not None and verb not in verbs):
            continue
        bound = math.inf if labels.get("le") == "+Inf" else float(labels.get("le", "nan"))
        buckets[bound] = buckets.get(bound, 0.0) + value
    return buckets


def bucket_delta(after: Mapping[float, float], before: Mapping[float, float]) -> dict[float, float]:
    return {le: after[le] - before.get(le, 0.0) for le in after}


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets: linear inside the bucket that
    holds the q-th observation; the highest finite bound when it falls into +Inf; None without
    observations."""
    bounds = sorted(buckets)
    if not bounds or math.inf not in buckets or buckets[math.inf] <= 0:
        return None
    total = buckets[math.inf]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == math.inf:
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def latency_figures(after: str, before: str) -> JSON:
    """p50/p99 and count of the API server's non-long-running requests between two scrapes of
    its /metrics, all of them and the writes alone."""
    out: JSON = {}
    for name, verbs in (("", None), ("write_", WRITE_VERBS)):
        delta = bucket_delta(latency_buckets(after, verbs), latency_buckets(before, verbs))
        out[f"apiserver_{name}p50_s"] = histogram_quantile(0.50, delta)
        out[f"apiserver_{name}p99_s"] = histogram_quantile(0.99, delta)
        out[f"apiserver_{name}requests"] = int(delta.get(math.inf, 0.0))
    return out


ETCD_DB_METRICS = ("etcd_mvcc_db_total_size_in_bytes", "etcd_debugging_mvcc_db_total_size_in_bytes")


def etcd_db_bytes(text: str) -> int | None:
    """etcd's database file size (what a defragmentation would not give back included), from
    its own /metrics; None if it reports neither name."""
    for metric in ETCD_DB_METRICS:
        found = samples(text, metric)
        if found:
            return int(found[0][1])
    return None


def rejected(text: str) -> int:
    """Requests API Priority and Fairness rejected so far (429s it sent)."""
    return int(sum(v for _, v in samples(text, "apiserver_flowcontrol_rejected_requests_total")))


# -- identities: a pod per node, its bound token ----------------------------------------------
AGENT_NAMESPACE = "memory-overcommit"
AGENT_ACCOUNT = "overcommit-agent"
CONTROLLER_ACCOUNT = "overcommit-controller"
AGENT_USER = f"system:serviceaccount:{AGENT_NAMESPACE}:{AGENT_ACCOUNT}"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"


def kwok_node(name: str) -> JSON:
    """A Node kwok manages (its annotation): kwok sets it Ready, renews its Lease and posts its
    status heartbeats, as a kubelet would."""
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {KWOK_ANNOTATION: "fake"},
                         "labels": {POOL_LABEL: "bench", "kubernetes.io/hostname": name,
                                    "kubernetes.io/os": "linux", "type": "kwok"}},
            "status": {"allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"},
                       "capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"}}}


def agent_pod_name(node: str) -> str:
    return f"overcommit-agent-{node}"


def agent_pod(node: str) -> JSON:
    """The agent DaemonSet's pod on ``node`` (bound there by nodeName, as the DaemonSet
    controller does), under the shipped service account."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": agent_pod_name(node), "namespace": AGENT_NAMESPACE,
                         "labels": {"app.kubernetes.io/name": "memory-overcommit",
                                    "app.kubernetes.io/component": "agent"}},
            "spec": {"nodeName": node, "serviceAccountName": AGENT_ACCOUNT,
                     "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": "agent", "image": "memory-overcommit:bench"}]}}


def token_request(pod: str, pod_uid: str, seconds: int = 24 * 3600) -> JSON:
    """A TokenRequest bound to the pod, as the kubelet asks for a projected token volume: the
    token then names the pod's node (authentication.kubernetes.io/node-name)."""
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds,
                     "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod,
                                        "uid": pod_uid}}}


def identity_problems(review: Mapping[str, Any], node: str) -> list[str]:
    """What is wrong with a SelfSubjectReview's answer for the agent on ``node``: it must be the
    agent's service account, bound to ``node``, and in no privileged group."""
    user = ((review.get("status") or {}).get("userInfo")) or {}
    problems = []
    if user.get("username") != AGENT_USER:
        problems.append(f"username {user.get('username')!r}, not {AGENT_USER!r}")
    groups: Sequence[str] = user.get("groups") or []
    if "system:masters" in groups:
        problems.append("in system:masters")
    if (user.get("extra") or {}).get(NODE_NAME_EXTRA) != [node]:
        problems.append(f"{NODE_NAME_EXTRA} is {(user.get('extra') or {}).get(NODE_NAME_EXTRA)}"
                        f", not [{node!r}]")
    return problems


def naive_rbac() -> list[JSON]:
    """Bench-only: what the agents' service account needs on top of the shipped RBAC to write a
    naive policy's status (the shipped role has no write on any policy, by design)."""
    name = "memory-overcommit-bench-naive"
    return [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": name},
             "rules": [{"apiGroups": [NAIVE_GROUP], "resources": [NAIVE_PLURAL],
                        "verbs": ["get", "list", "watch"]},
                       {"apiGroups": [NAIVE_GROUP], "resources": [f"{NAIVE_PLURAL}/status"],
                        "verbs": ["get", "update", "patch"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": name},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": name},
             "subjects": [{"kind": "ServiceAccount", "name": AGENT_ACCOUNT,
                           "namespace": AGENT_NAMESPACE}]}]


def spread(values: Sequence[float | None]) -> JSON:
    """Median, min and max of the repeats that produced a value (None left out)."""
    got = sorted(v for v in values if v is not None)
    if not got:
        return {"median": None, "min": None, "max": None, "n": 0}
    mid = len(got) // 2
    median = got[mid] if len(got) % 2 else (got[mid - 1] + got[mid]) / 2
    return {"median": median, "min": got[0], "max": got[-1], "n": len(got)}


# -- repeats ----------------------------------------------------------------------------------
HEADLINES = ("apiserver_p99_s", "apiserver_write_p99_s", "etcd_db_bytes", "converge_s",
             "steady_writes_per_node_min", "events_per_agent_min", "bytes_per_agent_min",
             "policy_object_bytes", "setup_s")
SCENARIO_FIGURES = ("converge_s", "apiserver_p99_s", "apiserver_write_p99_s", "agent_writes",
                    "agent_writes_failed", "conflicts", "apf_rejected", "etcd_db_bytes",
                    "apiserver_policy_event_bytes", "stale_entries", "node_states_left")


# kube-apiserver v1.34's documented minimum etcd 3.5; below it (Debian's 3.4.23 is also below
# the 3.4 minimum, 3.4.29) the API server cannot ask etcd for watch progress and serves
# consistent lists from etcd, not from its cache.
ETCD_SUPPORTED = (3, 5, 11)


def etcd_caveat(version: str) -> str | None:
    """Why figures served by etcd ``version`` do not stand for a real cluster's (None: they
    do, or the version is unreadable)."""
    try:
        found = tuple(int(part) for part in version.split(".")[:3])
    except ValueError:
        return None
    if found >= ETCD_SUPPORTED:
        return None
    minimum = ".".join(map(str, ETCD_SUPPORTED))
    return (f"etcd {version} is below kube-apiserver's supported minimum {minimum} (of 3.5): "
            "at 5,000 nodes its API server took half the requests of one on etcd 3.6 "
            "(bench/README.md); for figures to quote, leave KUBEBUILDER_ASSETS and "
            "TEST_ASSET_ETCD unset: bench.scale then builds and uses the etcd kube-apiserver "
            "depends on (scripts/install-kube --etcd)")


def summarise(all_runs: list[JSON]) -> JSON:
    """Medians over the repeats at top level (the shape of one run), each with its spread; a
    run that failed (``error``) is listed, not counted."""
    runs = [r for r in all_runs if "error" not in r]
    errors = [r["error"] for r in all_runs if "error" in r]
    if not runs:
        # A run that failed part-way keeps what it measured until then: shown, not a median.
        partial = [r for r in all_runs if "failed_in" in r]
        return {"repeats": 0, "errors": errors, "apiserver_p99_s": None, "etcd_db_bytes": None,
                "burst": None, "failover": None, "vanish": None, "runs": all_runs,
                "partial": partial[-1] if partial else None}
    out: JSON = {"repeats": len(runs), "errors": errors, "spread": {}}
    for key in HEADLINES:
        s = spread([r.get(key) for r in runs])
        out[key], out["spread"][key] = s["median"], s
    for scenario in ("steady", "churn", "burst", "failover", "vanish"):
        if all(r.get(scenario) is None for r in runs):
            out[scenario] = None
            continue
        out[scenario] = {}
        for key in SCENARIO_FIGURES:
            values = [(r.get(scenario) or {}).get(key) for r in runs]
            if all(v is None for v in values) and key != "converge_s":
                continue
            s = spread(values)
            out[scenario][key], out["spread"][f"{scenario}.{key}"] = s["median"], s
        out[scenario]["timed_out"] = sum(1 for r in runs if scenario not in ("steady", "churn")
                                         and (r.get(scenario) or {}).get("converge_s") is None)
    out["agent_identity"] = runs[0]["agent_identity"]
    # What served the runs (one entry per distinct pair: a mixed set is visible).
    out["versions"] = [dict(v) for v in {tuple(sorted(r["versions"].items()))
                                         for r in runs if r.get("versions")}]
    out["runs"] = runs
    return out
