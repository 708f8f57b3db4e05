"""What a cycle (or a look at the host) amounts to, as the API's typed status parts: memory
saved by each lever, host memory and pressure, one entry per guest. The agent's node state and
the CLI's output both show these, so they are worked out once, here."""

from __future__ import annotations

from overcommit.api.status import Guest, HostMemory, Saved
from overcommit.host.ksm import ksm_saved_bytes
from overcommit.planning.observation import Observation
from overcommit.reconcile.guests import GuestResult
from overcommit.units import human_bytes

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
        target = None if decision is None else decision.target_kib
        entries.append((g.endpoint, Guest(
            domain=g.domain, vmi_namespace=g.vmi_namespace, vmi_name=g.vmi_name,
            vmi_uid=g.vmi_uid, max_bytes=g.max_kib * KIB, current_bytes=g.current_kib * KIB,
            target_bytes=None if target is None else target * KIB,
            usable_bytes=None if usable is None else usable * KIB,
            # The planner's reason covers problems of guests it manages; an unselected guest's
            # reason says why it is not ours at all.
            reason=decision.reason if decision else (g.problem or ""))))
    return entries
