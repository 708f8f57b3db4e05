"""Relief on a KubeVirt node (``ladder.relief``): after each cycle, ask KubeVirt to live-migrate
one guest away while reclaim cannot bring the node out of Critical, and keep the node's pressure
taint as the policy asks.

Whom, whether now and why not are planning's (``overcommit.planning.relief``); this is the I/O
around it: the candidates from the cycle's guests and their VMIs, the migrations in flight from
the agent's cluster-wide watch of VirtualMachineInstanceMigrations, the migration object it
creates and the patch of its own Node's taints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from overcommit.agent.api import AgentApi
from overcommit.api.policy import LadderRelief
from overcommit.api.status import ReliefRequest
from overcommit.kube.client import TRANSPORT_ERRORS, ApiError
from overcommit.kube.clock import now_rfc3339
from overcommit.kube.events import NORMAL, WARNING, EventIntent
from overcommit.planning import relief
from overcommit.planning.ladder import State
from overcommit.planning.relief import Candidate, Decision, InFlight, Memory
from overcommit.reconcile.guests import GuestResult
from overcommit.reconcile.node import CycleResult

NODE_LABEL = "memoryovercommit.io/node"  # on each migration: the node that asked for it
REASON_ANNOTATION = "memoryovercommit.io/relief-reason"
FINISHED = frozenset({"Succeeded", "Failed"})

JSON = dict[str, Any]
VmiKey = tuple[str, str]


def candidates(guests: GuestResult) -> list[Candidate]:
    """The cycle's KubeVirt guests as relief sees them: what each frees and costs to move."""
    found = []
    for guest in guests.guests:
        if guest.vmi_namespace is None or guest.vmi_name is None:
            continue  # not a KubeVirt guest: nothing can migrate it
        current = guest.current_kib * 1024
        usable = guest.stats.get("usable")
        used = current if usable is None else max(0, current - usable * 1024)
        found.append(Candidate(guest.vmi_namespace, guest.vmi_name, current, used,
                               guest.live_migratable is True, guest.migration is not None))
    return found


def migration_summary(body: Mapping[str, Any]) -> JSON:
    """What relief needs of a VirtualMachineInstanceMigration (the agent's index keeps only
    this): its VMI, its phase, and the node that asked for it when it was us."""
    meta = body.get("metadata") or {}
    return {"namespace": meta.get("namespace") or "",
            "vmi": (body.get("spec") or {}).get("vmiName") or "",
            "phase": (body.get("status") or {}).get("phase") or "",
            "node": (meta.get("labels") or {}).get(NODE_LABEL)}


def in_flight(migrations: Iterable[Mapping[str, Any]], node: str,
              node_vmis: Collection[VmiKey]) -> InFlight:
    """The migrations not yet Succeeded or Failed: all of them, those of this node's guests
    (or asked for by this node), and the VMIs they move."""
    pending = [m for m in migrations if m.get("phase") not in FINISHED]
    mine = [m for m in pending
            if m.get("node") == node or (m["namespace"], m["vmi"]) in node_vmis]
    return InFlight(node=len(mine), cluster=len(pending),
                    vmis=frozenset((m["namespace"], m["vmi"]) for m in pending))


def our_effect(taints: Iterable[Mapping[str, Any]]) -> str | None:
    """The effect of our pressure taint among the Node's taints (None: not there)."""
    for taint in taints:
        if taint.get("key") == relief.TAINT_KEY:
            return str(taint.get("effect"))
    return None


@dataclass
class Outcome:
    """What relief did this cycle: the node state's fields and the news."""

    status: str = ""  # ladder.reliefStatus
    last: ReliefRequest | None = None  # ladder.lastRelief
    taint: str | None = None  # ladder.taint: our taint's effect on the Node now
    news: list[EventIntent] = field(default_factory=list)
    requested: str | None = None  # created | failed, when a migration was asked for


class Relief:
    """The agent's relief: what it remembers between cycles, and one :meth:`cycle` each."""

    def __init__(self, node: str, api: AgentApi,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node, self.api, self.clock = node, api, clock
        self.memory = Memory()
        self.last: ReliefRequest | None = None
        # Why migrations cannot be counted (set by the runner when it may not watch them);
        # relief never asks without knowing what is in flight.
        self.blind: str | None = None
        # The Node as our last taint patch left it, with the resourceVersion it replaced: the
        # watch may not have delivered it by the next cycle (2 s apart under pressure).
        self._patched: tuple[str, list[JSON], str] | None = None

    async def cycle(self, report: CycleResult, node: Mapping[str, Any],
                    migrations: Iterable[Mapping[str, Any]]) -> Outcome:
        spec = spec_in_force(report)
        out = Outcome(last=self.last)
        out.taint = await self._taint(report, spec, node, out.news)
        ladder = report.plan.ladder
        if spec is None:
            self.memory = Memory()
            out.status = "off: no policy in force" if _critical(report) else ""
            return out
        guests = candidates(report.guests)
        flight = in_flight(migrations, self.node, {c.key for c in guests})
        decision = relief.decide(ladder, spec, guests, flight, self.memory, self.clock())
        out.status = decision.status
        if decision.ask is not None and self.blind is not None:
            decision = Decision(None, f"unable: {self.blind}",
                                replace(self.memory,
                                        critical_cycles=decision.memory.critical_cycles))
            out.status = decision.status
        if decision.ask is not None and report.plan.dry_run:
            out.status = f"dry run: would have {decision.status}"
        elif decision.ask is not None:
            await self._ask(decision, out)
            return out
        self.memory = decision.memory
        if decision.status.startswith("unable"):
            out.news.append(EventIntent(WARNING, "ReliefUnable", decision.status))
        return out

    async def _ask(self, decision: Decision, out: Outcome) -> None:
        chosen = decision.ask
        assert chosen is not None
        try:
            created = await self.api.create_migration(
                chosen.namespace, chosen.name, {NODE_LABEL: self.node},
                {REASON_ANNOTATION: decision.reason})
        except (ApiError, *TRANSPORT_ERRORS) as exc:
            self.memory = decision.failed(self.memory, self.clock())
            out.status = (f"failed: asking to migrate {chosen.namespace}/{chosen.name}: {exc}; "
                          f"again in {relief.RETRY_AFTER_FAILURE_S:.0f} s")
            out.news.append(EventIntent(WARNING, "ReliefFailed", out.status))
            out.requested = "failed"
            return
        self.memory = decision.memory
        name = str((created.get("metadata") or {}).get("name") or "")
        self.last = out.last = ReliefRequest(chosen.namespace, chosen.name, name, now_rfc3339(),
                                             decision.reason)
        out.news.append(EventIntent(WARNING, "ReliefRequested",
                                    f"asked KubeVirt to live-migrate {chosen.namespace}/"
                                    f"{chosen.name} ({name}): {decision.reason}", change=True))
        out.requested = "created"

    async def _taint(self, report: CycleResult, spec: LadderRelief | None,
                     node: Mapping[str, Any], news: list[EventIntent]) -> str | None:
        """Keep our taint on the Node as the ladder and policy want it; its effect after."""
        taints, version = node.get("taints"), str(node.get("resourceVersion") or "")
        if self._patched is not None and self._patched[0] == version:
            _, taints, version = self._patched  # the watch still shows the Node before it
        have = our_effect(taints or [])
        want = None if spec is None or report.plan.dry_run else \
            relief.taint_effect(report.plan.ladder, spec)
        if want == have:
            return have
        after = relief.with_taint(taints or [], want)
        try:
            patched = await self.api.set_taints(self.node, taints, after, version)
        except (ApiError, *TRANSPORT_ERRORS) as exc:
            news.append(EventIntent(WARNING, "TaintFailed",
                                    f"could not set {relief.TAINT_KEY} to {want or 'none'}: "
                                    f"{exc}"))
            return have
        self._patched = (version, after,
                         str((patched.get("metadata") or {}).get("resourceVersion") or ""))
        text = (f"{relief.TAINT_KEY}:{want} set" if want else f"{relief.TAINT_KEY} removed")
        state = report.plan.ladder.state.value if report.plan.ladder else "unknown"
        news.append(EventIntent(NORMAL, "NodeTainted" if want else "NodeUntainted",
                                f"{text} (the node is in {state})", change=True))
        return want


def spec_in_force(report: CycleResult) -> LadderRelief | None:
    """The relief settings of the policy in force (defaults when it names none); None when no
    policy is in force: relief belongs to a policy, like every lever."""
    policy = report.selection.winner
    if policy is None:
        return None
    ladder = policy.spec.ladder
    return ladder.relief if ladder is not None and ladder.relief is not None else LadderRelief()


def _critical(report: CycleResult) -> bool:
    ladder = report.plan.ladder
    return ladder is not None and ladder.state is State.CRITICAL
