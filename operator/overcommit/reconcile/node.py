"""One observe -> plan -> act -> report cycle on this host; shared by local mode and the agent."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from overcommit.api.model import Policy
from overcommit.api.policy import BalloonMode
from overcommit.host import catalog
from overcommit.host.base import ApplyError, ApplyResult, Change, HostFS
from overcommit.host.ksm import find_ksmd_pid, ksmd_cpu_seconds
from overcommit.host.sources import HostAdapter
from overcommit.planning.capacity import Capacity
from overcommit.planning.ladder import Ladder
from overcommit.planning.observation import Observation
from overcommit.planning.plan import NodePlan, Problem, plan_node
from overcommit.planning.restores import needs_no_restore, preview, to_record, with_restores
from overcommit.planning.selection import Selection, select_policy
from overcommit.reconcile.capacity import CapacityTracker
from overcommit.reconcile.guests import (
    GuestManager,
    GuestResult,
    VirtSettings,
    guest_key,
    still_owed,
)
from overcommit.reconcile.state import NodeRecord, StateStore


@dataclass
class CycleResult:
    """Everything one cycle saw and did: the input to status, events and the CLI's output."""

    selection: Selection
    plan: NodePlan
    observation: Observation
    changes: list[Change] = field(default_factory=list)
    errors: list[ApplyError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    restored: bool = False
    originals: dict[str, str] = field(default_factory=dict)
    guests: GuestResult = field(default_factory=GuestResult)
    capacity: Capacity | None = None  # measured headroom and the supported ratio
    ksmd_percent: float | None = None  # ksmd's CPU use since the last cycle

    @property
    def settings_after(self) -> dict[str, str]:
        """The node's settings once this cycle's writes landed (observed, plus what changed)."""
        settings = self.observation.settings()
        if not self.plan.dry_run:
            settings.update({c.path: c.after for c in self.changes})
        return settings

    @property
    def problems(self) -> tuple[Problem, ...]:
        return self.plan.problems

    @property
    def ok(self) -> bool:
        return not self.errors and not self.guests.errors


class NodeReconciler:
    """The host side of the operator: owns the adapters, the originals and the adaptive state."""

    def __init__(self, host_root: str | os.PathLike[str] = "/",
                 state_dir: str | os.PathLike[str] = "/var/lib/memory-overcommit",
                 clock: Any = time.monotonic, fs: HostFS | None = None,
                 virt: VirtSettings | None = None, wall_clock: Any = time.time) -> None:
        self.fs = fs if fs is not None else HostFS(host_root)
        # None: this engine manages no guests (unit tests, hosts without libvirt).
        self.guests = GuestManager(virt) if virt is not None else None
        self.host = HostAdapter(self.fs)
        self.store = StateStore(state_dir)
        self.clock = clock
        self.wall_clock = wall_clock  # stamps the ladder's transitions
        # The node's reclamation ladder as the last cycle judged it: its hysteresis, its
        # transitions. Kept across policy changes (the node's memory did not change with them).
        self.ladder: Ladder | None = None
        # What the kernel levers remembered (Adaptive KSM's state), and for which policy
        # generation: a new generation starts them afresh.
        self._memory: Mapping[str, object] = {}
        self._memory_for: tuple[str, int] | None = None
        self._ksmd_pid: int | None = None
        # The savings history behind the supported ratio (kept in the state directory).
        self.capacity = CapacityTracker(state_dir)

    # -- observe ---------------------------------------------------------------------------
    def observe(self) -> Observation:
        readings = self.host.read_all()
        return Observation(time=self.clock(), readings=readings,
                           ksmd_cpu_seconds=self._ksmd_cpu(), page_size=os.sysconf("SC_PAGESIZE"),
                           wall_time=self.wall_clock())

    def _ksmd_cpu(self) -> float | None:
        if self._ksmd_pid is None:
            self._ksmd_pid = find_ksmd_pid(self.fs)
        if self._ksmd_pid is None:
            return None
        try:
            return ksmd_cpu_seconds(self.fs, self._ksmd_pid)
        except (OSError, ValueError):
            self._ksmd_pid = None
            return None

    # -- plan ------------------------------------------------------------------------------
    def plan(self, policies: Sequence[Policy], labels: Mapping[str, str],
             obs: Observation | None = None,
             ksm_owner: str | None = None) -> tuple[Selection, NodePlan, Observation]:
        obs = obs or self.observe()
        selection = select_policy(policies, labels)
        key = (selection.winner.uid or selection.winner.name, selection.winner.generation) \
            if selection.winner else None
        memory = self._memory if key == self._memory_for else {}
        plan = plan_node(selection.winner, obs, memory,
                         {"ksm": ksm_owner} if ksm_owner else None, self.ladder)
        return selection, plan, obs

    # -- act -------------------------------------------------------------------------------
    def cycle(self, policies: Sequence[Policy], labels: Mapping[str, str],
              ksm_owner: str | None = None,
              vmis: Mapping[tuple[str, str], Mapping[str, Any]] | None = None) -> CycleResult:
        """Observe, plan, then apply the differences (or restore when nothing selects us)."""
        selection, plan, obs = self.plan(policies, labels, ksm_owner=ksm_owner)
        self.ladder = plan.ladder  # judged every cycle, whatever the policy or a dry run
        report = CycleResult(selection, plan, obs)
        record = self.store.load()
        self._kernel_cycle(report, record, plan, obs)
        self._guest_cycle(report, record, plan, vmis)
        spec = plan.policy.spec if plan.policy is not None else None
        report.capacity = self.capacity.cycle(
            obs, plan.ladder, report.guests if self.guests is not None else None, spec)
        report.ksmd_percent = self.capacity.ksmd_percent(obs)
        return report

    def _kernel_cycle(self, report: CycleResult, record: NodeRecord, plan: NodePlan,
                      obs: Observation) -> None:
        if plan.policy is None:
            report.restored = bool(record.originals)
            self._restore_into(report, record)
        elif plan.dry_run:
            current = obs.settings()
            report.changes = preview(with_restores(plan.desired, record.originals, current),
                                     current, obs.counter)
            report.notes.append("dry run: nothing was changed")
            report.originals = dict(record.originals)
        else:
            self._apply(report, record, plan, obs)
            self._memory = plan.memory
            self._memory_for = (plan.policy.uid or plan.policy.name, plan.policy.generation)

    def _guest_cycle(self, report: CycleResult, record: NodeRecord, plan: NodePlan,
                     vmis: Mapping[tuple[str, str], Mapping[str, Any]] | None = None) -> None:
        """Observe guests, plan balloons (or release them), act. Never fails the cycle."""
        if self.guests is None:
            return
        guests = report.guests = self.guests.observe(self.clock(), vmis)
        spec = plan.policy.spec.balloon if plan.policy is not None else None
        released = spec is None or spec.mode is BalloonMode.OFF
        self.guests.plan(guests, plan.policy.spec if plan.policy is not None else None,
                         report.observation, record.guests,
                         record.restore_on_release, plan.ladder)
        if plan.dry_run:
            guests.needed = _guests_matter(released, record)
            return
        if not released and spec is not None:
            # Durably note whom we are about to move, so a restart can still give it back.
            keys = sorted(set(record.guests) | {guest_key(t.endpoint, t.domain)
                                                for t in guests.planned})
            if keys != record.guests or record.restore_on_release != spec.restore_on_release:
                record.guests, record.restore_on_release = keys, spec.restore_on_release
                self.store.save(record)
            self._note_stats_periods(record, guests, spec.stats_period_seconds)
        self.guests.apply(guests, None if released or spec is None
                          else spec.stats_period_seconds)
        if released and record.stats_periods:
            left = self.guests.restore_stats_periods(guests, record.stats_periods)
            if left != record.stats_periods:
                record.stats_periods = left
                self.store.save(record)
        after = still_owed(guests, record.guests, released, record.restore_on_release)
        if after != record.guests:
            record.guests = after
            self.store.save(record)
        guests.needed = _guests_matter(released, record)  # after this cycle gave back what it could

    def _note_stats_periods(self, record: NodeRecord, guests: GuestResult,
                            seconds: int) -> None:
        """Durably note a selected guest's own statistics period before we first change it,
        so release (and ``overcommit restore``, also after a crash) can put it back."""
        new = {guest_key(g.endpoint, g.domain): g.stats_period_s for g in guests.guests
               if (g.endpoint, g.domain) in guests.selected and g.has_balloon
               and g.problem is None and g.stats_period_s is not None
               and g.stats_period_s != seconds
               and guest_key(g.endpoint, g.domain) not in record.stats_periods}
        if new:
            record.stats_periods.update(new)
            self.store.save(record)

    def _apply(self, report: CycleResult, record: NodeRecord, plan: NodePlan,
               obs: Observation) -> None:
        assert plan.policy is not None
        current = obs.settings()
        target = with_restores(plan.desired, record.originals, current)
        grew = self.store.record_before_change(
            record, to_record(target, current, record.originals, obs.counter), current)
        if grew or record.allow_unmerge != plan.allow_unmerge \
                or record.policy != plan.policy.name:
            record.allow_unmerge = record.allow_unmerge or plan.allow_unmerge
            record.policy = plan.policy.name
            self.store.save(record)  # durably, before the first write
        result = self.host.apply(target, allow_unmerge=plan.allow_unmerge)
        self._collect(report, result)
        self._forget_restored(record, plan.desired)
        report.originals = dict(record.originals)

    def restore(self) -> CycleResult:
        """Put back every recorded original (``overcommit restore``, policy removed)."""
        obs = self.observe()
        report = CycleResult(Selection(None), NodePlan(None), obs)
        record = self.store.load()
        report.restored = bool(record.originals or record.guests or record.stats_periods)
        self._restore_into(report, record)
        self._guest_cycle(report, record, report.plan)
        return report

    def preview_guests(self, policy: Policy | None, obs: Observation,
                       ladder: Ladder | None = None) -> GuestResult:
        """The balloon moves a cycle would make now, without making them (``plan``), under
        ``ladder`` (the node plan's; None: judged afresh)."""
        if self.guests is None:
            return GuestResult()
        record = self.store.load()
        guests = self.guests.observe(self.clock())
        self.guests.plan(guests, policy.spec if policy is not None else None, obs,
                         record.guests, record.restore_on_release, ladder)
        return guests

    def _restore_into(self, report: CycleResult, record: NodeRecord) -> None:
        self._memory = {}
        if not record.originals:
            return
        target = with_restores({}, record.originals, report.observation.settings())
        result = self.host.apply(target, allow_unmerge=record.allow_unmerge)
        self._collect(report, result)
        self._forget_restored(record, {})
        report.originals = dict(record.originals)

    def _forget_restored(self, record: NodeRecord, still_wanted: Mapping[str, str]) -> None:
        """Drop originals that are back in place and no longer named by the policy."""
        candidates = [path for path in record.originals if path not in still_wanted]
        if not candidates:
            return  # the steady state: no second read of the host this cycle
        now = Observation(time=self.clock(), readings=self.host.read_all())
        current = now.settings()
        done = {path for path in candidates
                if needs_no_restore(path, current, record.originals[path], now.counter)}
        # A reset setting stays recorded while what resets it is still ours to put back.
        done = {path for path in done if not any(
            key in record.originals and key not in done for key in catalog.resetters_of(path))}
        if not done:
            return
        for path in done:
            del record.originals[path]
        if not record.originals:
            record.allow_unmerge = False
            record.policy = ""
        self.store.save(record)

    @staticmethod
    def _collect(report: CycleResult, result: ApplyResult) -> None:
        report.changes.extend(result.changes)
        report.errors.extend(result.errors)
        report.notes.extend(result.notes)


def _guests_matter(released: bool, record: NodeRecord) -> bool:
    """Whether guest trouble is the node's: a policy balloons, or guests still hold a balloon
    size or statistics period of ours to give back."""
    return not released or bool(record.guests or record.stats_periods)
