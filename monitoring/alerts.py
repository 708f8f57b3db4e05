"""The alerts the operator ships, each with its runbook: one declaration yields the
PrometheusRule (``deploy/monitoring/prometheusrule.yaml``), the plain Prometheus rule file
(``deploy/monitoring/prometheus/rules.yml``) and the alert section of docs/monitoring.md.

The rules expect the scrape jobs to be named ``overcommit-agent`` and ``overcommit-controller``
and the agents' series to carry a ``node`` label: the shipped ServiceMonitors and the plain
scrape configuration set both (docs/monitoring.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

AGENT_JOB = "overcommit-agent"
CONTROLLER_JOB = "overcommit-controller"
GROUP = "memory-overcommit"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str  # one line, with {{ $labels.x }} templates
    description: str
    runbook: str  # markdown: what it means, how to check, what to do

    def rule(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": f"docs/monitoring.md#{self.name.lower()}",
            },
        }


ALERTS: tuple[Alert, ...] = (
    Alert(
        name="OvercommitNodeStuckInHardOrCritical",
        expr='sum without (state) (overcommit_ladder_state{state=~"Hard|Critical"}) == 1',
        for_="15m", severity="warning",
        summary="Node {{ $labels.node }} has been in the ladder's Hard or Critical state for "
                "15 minutes",
        description="The node is short of memory and the levers have not brought it back to "
                    "Soft or better: guests are held at their floors and, in Critical, relief "
                    "is wanted.",
        runbook="""\
**Meaning.** The node's reclamation ladder ([ladder.md](ladder.md)) has stayed in Hard or
Critical for 15 minutes: MemAvailable below twice M (or memory PSI full above 5 %) and the
levers could not win the memory back. Guests are reclaimed to their floors, nothing grows but a
pressured guest; in Critical the node asks for relief before the kubelet evicts.

**Check.** `kubectl get mons <node> -o yaml`: `status.ladder` (state, since, reason, the last
transitions), `status.memory`, `status.capacity` (is the node promised more than it supports:
negative `headroomBytes`?), each guest's `floorBytes` against its `currentBytes`. The node
dashboard's state timeline and levers show when it started and what moved.

**Act.** Move a VM off the node (`virtctl migrate <vm>`) or stop one; if it happens on many
nodes, the cluster is overcommitted beyond what it supports: lower KubeVirt's
`memoryOvercommit` to the policy's supported ratio (`kubectl get mop -o wide`, column
Supported). A node in Hard because of PSI while MemAvailable is ample is often one pod
thrashing in its own memory limit ([ladder.md](ladder.md#how-the-state-is-computed)).
"""),
    Alert(
        name="OvercommitMemoryPressureFull",
        expr='overcommit_memory_pressure_percent{kind="full"} >= 5',
        for_="10m", severity="warning",
        summary="Node {{ $labels.node }}: every task stalled on memory at least 5% of the "
                "time for 10 minutes",
        description="Memory PSI 'full' (avg10) has stayed at or above 5 %: the node loses "
                    "throughput to memory stalls.",
        runbook="""\
**Meaning.** `/proc/pressure/memory` "full" avg10 has been at least 5 % for 10 minutes: for a
twentieth of the time every non-idle task on the node waited for memory (reclaim, swap-in,
refaults). Guests run slowly even where nothing is killed.

**Check.** The node dashboard's memory panel (MemAvailable and PSI side by side); the node
state's `status.memory` and `status.ladder` (the ladder enters Hard at this figure by
default). High PSI with ample MemAvailable points at one cgroup stalling in its own limit
(a pod or a launcher at its memory limit), not at the node.

**Act.** As for a node stuck in Hard: relieve the node (migrate a VM) or lower the ratio. If a
single pod is the cause, raise its limit or fix it; raise `spec.ladder.psi.*` only if such
stalls are expected on the node.
"""),
    Alert(
        name="OvercommitBalloonStuck",
        expr="abs(overcommit_guest_target_bytes - overcommit_guest_current_bytes)"
             " > 0.05 * overcommit_guest_max_bytes",
        for_="15m", severity="warning",
        summary="Guest {{ $labels.domain }} on {{ $labels.node }}: its balloon has not reached "
                "its target for 15 minutes",
        description="The agent set a balloon target that the guest's driver does not follow.",
        runbook="""\
**Meaning.** For 15 minutes the guest's memory (`overcommit_guest_current_bytes`) has been
more than 5 % of its maximum away from the target the agent set. The guest's virtio-balloon
driver does not inflate or deflate: it is missing, hung, or the guest cannot give the memory
(it uses it: a balloon never takes memory a guest holds).

**Check.** `kubectl get mons <node> -o yaml`: the guest's `targetBytes`, `currentBytes`,
`usableBytes` and `reason`. Inside the guest: `lsmod | grep virtio_balloon`, its free memory;
on the node, `virsh dommemstat <domain>` (through the launcher's socket on KubeVirt).

**Act.** Load or fix the guest's balloon driver (Windows guests need the virtio-win balloon
driver and service). A guest that needs its memory is not a problem of the balloon: raise its
floor (`spec.balloon.floor`) or exclude it (`vmSelector`).
"""),
    Alert(
        name="OvercommitKsmdOverBudget",
        expr="avg_over_time(overcommit_ksmd_cpu_percent[10m]) > overcommit_ksmd_cpu_budget_percent",
        for_="10m", severity="warning",
        summary="ksmd on {{ $labels.node }} uses more CPU than the policy's budget",
        description="ksmd's CPU use, averaged over 10 minutes, is above the budget the policy "
                    "sets (Adaptive KSM's cpuBudgetPercent or the kernel advisor's "
                    "maxCpuPercent).",
        runbook="""\
**Meaning.** ksmd (the kernel's merging thread) has used more CPU than the policy allows,
averaged over 10 minutes, for another 10. Adaptive KSM lowers its scan rate whenever ksmd
exceeds the budget, so this means the tuner cannot hold it: another manager of KSM on the node
(KubeVirt's KSM handler, ksmtuned, tuned), a kernel advisor that overshoots, or a very large
`minPagesToScan`.

**Check.** The node dashboard's ksmd panel; the node state's `settings`
(`pages_to_scan`, `sleep_millisecs`), `conditions` (`KsmManagedElsewhere`), Events
(`AdaptiveKsm`).

**Act.** Stop the other manager, or lower `spec.ksm.adaptive.minPagesToScan`/`maxPagesToScan`,
or raise the budget if the merging pays for the CPU (compare `overcommit_saved_bytes{kind=
"merged"}`).
"""),
    Alert(
        name="OvercommitAgentDown",
        expr=f'up{{job="{AGENT_JOB}"}} == 0 or absent(up{{job="{AGENT_JOB}"}})',
        for_="5m", severity="critical",
        summary="The memory-overcommit agent {{ $labels.instance }} cannot be scraped",
        description="An agent's metrics endpoint has not answered for 5 minutes (or no agent "
                    "is scraped at all).",
        runbook="""\
**Meaning.** Prometheus cannot scrape an agent (or finds none). Without its agent a node keeps
the settings and balloon sizes it had, but nothing reacts to its memory any more: the ladder,
Auto ballooning and Adaptive KSM stop.

**Check.** `kubectl -n memory-overcommit get pods -o wide -l
app.kubernetes.io/component=agent`; the pod's events and logs (`kubectl -n memory-overcommit
logs <pod>`); whether the port is taken on the node (the agent keeps working without metrics
and logs `metrics are off`).

**Act.** Fix what keeps the pod from running (image, node taints, the hostPath mounts of
[deploy.md](deploy.md)); a pod that runs but is not scraped points at the ServiceMonitor or the
scrape configuration (the headless Service `overcommit-agent-metrics`, port `metrics`).
"""),
    Alert(
        name="OvercommitAgentNotReporting",
        expr="time() - overcommit_agent_last_cycle_timestamp_seconds > 300",
        for_="5m", severity="warning",
        summary="The agent on {{ $labels.node }} has not finished a cycle for over 5 minutes",
        description="The agent answers scrapes but its reconcile loop has stopped cycling.",
        runbook="""\
**Meaning.** The agent serves metrics, but its last completed cycle is more than 5 minutes old
(it cycles every 30 s, and every 10 s under pressure): its loop is stuck, e.g. on a hung
libvirt call or an API server it cannot reach.

**Check.** The agent's log (`cycle failed`, `CycleFailed` Events on the node state),
`overcommit_agent_errors_total` by kind, its readiness probe (`/readyz` fails when cycles stop).

**Act.** Fix the cause in the log (API server reachability, a libvirt endpoint); restarting the
pod is safe: the agent records originals before it changes anything and converges on start.
"""),
    Alert(
        name="OvercommitControllerDown",
        expr=f'sum(overcommit_controller_leader{{job="{CONTROLLER_JOB}"}}) < 1'
             f' or absent(overcommit_controller_leader{{job="{CONTROLLER_JOB}"}})',
        for_="5m", severity="warning",
        summary="No memory-overcommit controller replica leads",
        description="No scraped controller replica holds the leader Lease: policy statuses "
                    "and KubeVirt's ratio are not updated.",
        runbook="""\
**Meaning.** No controller replica reports `overcommit_controller_leader 1` for 5 minutes (or
none is scraped). The agents keep applying policies, but policy statuses, Events and the
KubeVirt ratio manager stop.

**Check.** `kubectl -n memory-overcommit get pods -l app.kubernetes.io/component=controller`,
their logs, the Lease `kubectl -n memory-overcommit get lease`.

**Act.** Fix what keeps the Deployment's pods from running or reaching the API server.
"""),
    Alert(
        name="OvercommitPolicyStalled",
        expr='max by (policy, reason) (overcommit_policy_condition{type="Stalled"}) == 1',
        for_="10m", severity="warning",
        summary="Policy {{ $labels.policy }} is Stalled: {{ $labels.reason }}",
        description="Nodes report problems with the policy (or it is invalid) for 10 minutes.",
        runbook="""\
**Meaning.** The policy's `Stalled` condition has been True for 10 minutes: nodes where it is
in force report a problem (the reason is the most frequent one: `ApplyFailed`,
`EngineMissing`, `GuestsFailed`, `KsmManagedElsewhere`, ...) or the policy itself is invalid.

**Check.** `kubectl describe mop <policy>`: `status.problems` lists up to 20 nodes with their
reasons, the Events (`NodeProblem`) say when each started; then `kubectl get mons <node> -o
yaml` on one of them.

**Act.** By reason: [operations.md](operations.md) has the troubleshooting table.
"""),
    Alert(
        name="OvercommitRatioAboveSupported",
        expr="overcommit_policy_kubevirt_configured_percent"
             " > on (policy) overcommit_policy_capacity_supported_percent",
        for_="30m", severity="warning",
        summary="KubeVirt's memoryOvercommit is above what policy {{ $labels.policy }}'s "
                "nodes support",
        description="The cluster-wide overcommit ratio lets the scheduler place more guest "
                    "memory than the measured savings cover on at least one node.",
        runbook="""\
**Meaning.** KubeVirt's `spec.configuration.developerConfiguration.memoryOvercommit` has been
above the ratio the policy's nodes support (the least of theirs, [capacity.md](capacity.md))
for 30 minutes. Packed to that ratio, a node would need more memory than its sustained savings
give: it would live in Soft or Hard, and in the end evict.

**Check.** `kubectl get mop -o wide` (Supported and KubeVirt columns, the limiting node), then
`kubectl get mons <node> -o yaml` (`status.capacity.reason` has the arithmetic). A node that is
not settled yet (`evidence.settled: false`) has less evidence than the window asks.

**Act.** Lower `memoryOvercommit` to the supported ratio, or let the controller keep it in
line (`spec.capacity.kubevirt.manage: true`). Running VMs take a changed ratio at their next
live migration (KubeVirt recomputes the launcher's request then), new VMs at once.
"""),
)


def prometheus_rule(namespace: str = "memory-overcommit") -> dict[str, Any]:
    """The PrometheusRule for the Prometheus Operator."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "memory-overcommit", "namespace": namespace,
                     "labels": {"app.kubernetes.io/name": "memory-overcommit",
                                "app.kubernetes.io/component": "monitoring"}},
        "spec": rule_groups(),
    }


def rule_groups() -> dict[str, Any]:
    """The plain Prometheus rule file (``rule_files:``), also the PrometheusRule's spec."""
    return {"groups": [{"name": GROUP, "rules": [alert.rule() for alert in ALERTS]}]}


def docs_section() -> str:
    """The alert table and every runbook, for docs/monitoring.md."""
    lines = ["| alert | severity | for | fires when |", "|---|---|---|---|"]
    lines += [f"| [`{a.name}`](#{a.name.lower()}) | {a.severity} | {a.for_} | "
              f"`{a.expr.replace('|', chr(92) + '|')}` |" for a in ALERTS]
    for alert in ALERTS:
        lines += ["", f"### {alert.name}", "", f"{alert.description}", "", alert.runbook.rstrip()]
    return "\n".join(lines) + "\n"
