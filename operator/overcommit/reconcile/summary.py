"""What a cycle (or a look at the host) amounts to, as the API's typed status parts: memory
saved by each lever, host memory and pressure, the reclamation ladder, one entry per guest.
The agent's node state and the CLI's output both show these, so they are worked out once,
here."""

from __future__ import annotations

from overcommit.api.status import (
    CapacityEvidence,
    Guest,
    HostMemory,
    Ksmd,
    Ladder,
    LadderThreshold,
    LadderTransition,
    LeverSavings,
    NodeCapacity,
    Saved,
)
from overcommit.host.ksm import ksm_saved_bytes
from overcommit.planning import capacity as cap
from overcommit.planning import ladder as node_ladder
from overcommit.planning.observation import Observation
from overcommit.reconcile.guests import GuestResult
from overcommit.units import human_bytes, rfc3339

KIB = 1024


def merged_bytes(obs: Observation) -> int:
    reading = obs.readings.get("ksm")
    return ksm_saved_bytes(reading.counters, obs.page_size) if reading else 0


def compressed_bytes(obs: Observation) -> int:
    """zswap's saving: what its pool holds, less what that takes compressed."""
    zswap = obs.readings.get("zswap")
    if zswap is None:
        return 0
    return max(0, zswap.counters.get("zswapped_bytes", 0)
               - zswap.counters.get("zswap_pool_bytes", 0))


def savings(obs: Observation, guests: GuestResult | None) -> Saved:
    """Bytes saved by merging, ballooning and compression, their total and its summary."""
    merged, compressed = merged_bytes(obs), compressed_bytes(obs)
    ballooned = guests.ballooned_bytes if guests is not None else 0
    total = merged + compressed + ballooned
    return Saved(merged_bytes=merged, merging_profit_bytes=obs.counter("ksm", "general_profit"),
                 ballooned_bytes=ballooned, compressed_bytes=compressed, total_bytes=total,
                 summary=human_bytes(total))


def host_memory(obs: Observation) -> HostMemory:
    psi = obs.readings.get("psi")
    present = psi is not None and psi.present
    return HostMemory(
        total_bytes=obs.mem_total, available_bytes=obs.mem_available,
        swap_total_bytes=obs.counter("meminfo", "SwapTotal"),
        swap_free_bytes=obs.counter("meminfo", "SwapFree"),
        psi_some_avg10=f"{obs.counter('psi', 'some_avg10') / 100:.2f}" if present else None,
        psi_full_avg10=f"{obs.counter('psi', 'full_avg10') / 100:.2f}" if present else None)


def guest_entries(guests: GuestResult | None) -> list[tuple[str, Guest]]:
    """(endpoint, entry) per guest seen, in the order seen: size, target, usable memory, and
    why the last decision was taken."""
    if guests is None:
        return []
    decisions = {d.guest.key: d for d in guests.decisions}
    entries = []
    for g in guests.guests:
        decision = decisions.get(g.key)
        usable = g.stats.get("usable")
        rss = g.stats.get("rss")
        target = None if decision is None else decision.target_kib
        floor = None if decision is None else decision.floor_kib
        entries.append((g.endpoint, Guest(
            domain=g.domain, vmi_namespace=g.vmi_namespace, vmi_name=g.vmi_name,
            vmi_uid=g.vmi_uid, max_bytes=g.max_kib * KIB, current_bytes=g.current_kib * KIB,
            target_bytes=None if target is None else target * KIB,
            usable_bytes=None if usable is None else usable * KIB,
            resident_bytes=None if rss is None else rss * KIB,
            floor_bytes=None if floor is None else floor * KIB,
            # The planner's reason covers problems of guests it manages; an unselected guest's
            # reason says why it is not ours at all.
            reason=decision.reason if decision else (g.problem or ""),
            autodeflate=g.autodeflate, free_page_reporting=g.free_page_reporting)))
    return entries


def ladder_status(ladder: node_ladder.Ladder | None) -> Ladder | None:
    """The ladder as the node state shows it: state, since, why, the thresholds in bytes
    (best state first) and the last transitions (newest first)."""
    if ladder is None:
        return None
    th = ladder.thresholds
    return Ladder(
        state=ladder.state.value, since=rfc3339(ladder.since), reason=ladder.reason,
        relief=ladder.relief, minimum_bytes=th.minimum, minimum_source=th.minimum_source,
        thresholds=[LadderThreshold(state.value, th.below[state], th.leave_above(state))
                    for state in reversed(node_ladder.BOUNDED)],
        transitions=[LadderTransition(
            from_state=t.from_state.value if t.from_state is not None else None,
            to_state=t.to_state.value, at=rfc3339(t.at), reason=t.reason)
            for t in ladder.transitions])


def ksmd_status(percent: float | None, budget: int | None) -> Ksmd | None:
    """ksmd's CPU use since the last cycle and the policy's budget for it."""
    if percent is None and budget is None:
        return None
    return Ksmd(cpu_percent=None if percent is None else f"{percent:.2f}",
                budget_percent=budget)


def capacity_status(capacity: cap.Capacity | None) -> NodeCapacity | None:
    """The node's measured headroom and supported ratio as the node state shows it."""
    if capacity is None:
        return None
    c, e = capacity, capacity.evidence
    sustained = LeverSavings(merged_bytes=c.sustained["merged"],
                             ballooned_bytes=c.sustained["ballooned"],
                             compressed_bytes=c.sustained["compressed"],
                             total_bytes=c.sustained_total)
    return NodeCapacity(
        physical_bytes=c.physical, reserve_bytes=c.reserve, non_guest_bytes=c.non_guest,
        guest_committed_bytes=c.committed, guest_resident_bytes=c.resident,
        guest_capacity_bytes=c.guest_capacity, sustained=sustained, counted_bytes=c.counted,
        headroom_bytes=c.headroom, supported_percent=c.supported_percent,
        summary=f"{c.supported_percent}%", headroom=signed_bytes(c.headroom),
        reason=capacity_reason(c),
        evidence=CapacityEvidence(
            window_seconds=e.window, observed_seconds=e.observed, samples=e.samples,
            settled=e.settled, percentile=e.percentile, margin_percent=e.margin_percent,
            pressure_seconds=e.pressure, pressure_budget_percent=e.pressure_budget_percent,
            since=rfc3339(e.since)))


def signed_bytes(value: int) -> str:
    return ("-" if value < 0 else "") + human_bytes(abs(value))


def capacity_reason(c: cap.Capacity) -> str:
    """The arithmetic behind the ratio, in words."""
    e = c.evidence
    capacity = (f"guest capacity {signed_bytes(c.guest_capacity)} = {human_bytes(c.physical)} "
                f"physical - {human_bytes(c.reserve)} reserve - {human_bytes(c.non_guest)} "
                f"non-guest")
    savings = (f"counted savings {human_bytes(c.counted)} = p{e.percentile} over "
               f"{e.observed}s of a {e.window}s window ({human_bytes(c.sustained_total)}: "
               f"merged {human_bytes(c.sustained['merged'])}, ballooned "
               f"{human_bytes(c.sustained['ballooned'])}, compressed "
               f"{human_bytes(c.sustained['compressed'])}) - {e.margin_percent}% margin"
               + (f", {e.pressure}s in Hard/Critical" if e.pressure else ""))
    if c.guest_capacity <= 0:
        ratio = "no room for guests: 100%"
    else:
        ratio = (f"({signed_bytes(c.guest_capacity)} + {human_bytes(c.counted)}) / "
                 f"{signed_bytes(c.guest_capacity)} = {c.supported_percent}%")
    return f"{capacity}; {savings}; {ratio}"
