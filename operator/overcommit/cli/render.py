"""The CLI's output: plans, cycles and host status as JSON (``-o json``) or short text."""

from __future__ import annotations

import dataclasses
from typing import Any

from overcommit.api.schema import json_name, to_json
from overcommit.api.status import Guest
from overcommit.host.base import Change
from overcommit.planning.capacity import Capacity
from overcommit.planning.observation import Observation
from overcommit.planning.plan import NodePlan
from overcommit.planning.relief import local_status
from overcommit.planning.selection import Selection
from overcommit.reconcile.guests import GuestResult
from overcommit.reconcile.node import CycleResult
from overcommit.reconcile.summary import (
    capacity_status,
    guest_entries,
    ladder_status,
    merged_bytes,
)
from overcommit.units import human_bytes

JSON = dict[str, Any]
GUEST_FIELDS = [f.name for f in dataclasses.fields(Guest)]


def _selection_json(selection: Selection) -> JSON:
    return {
        "policy": selection.winner.name if selection.winner else None,
        "overridden": [{"name": loser.name, "reason": loser.reason}
                       for loser in selection.losers],
    }


def ladder_json(plan: NodePlan) -> JSON | None:
    """The reclamation ladder as the node state shows it (camelCase), or None."""
    status = ladder_status(plan.ladder)
    if status is None:
        return None
    shown: JSON = to_json(dataclasses.replace(status,
                                              relief_status=local_status(plan.ladder) or None))
    return shown


def _plan_extras(plan: NodePlan) -> JSON:
    return {
        "ladder": ladder_json(plan),
        "engine": plan.merge_engine,
        "dryRun": plan.dry_run,
        "problems": [{"reason": p.reason, "message": p.message} for p in plan.problems],
        "notes": list(plan.notes),
        "adaptive": None if plan.adaptive is None else {
            "phase": plan.adaptive.phase.value, "reason": plan.adaptive.reason,
            "pagesToScan": plan.adaptive.pages_to_scan, "sleepMillisecs": plan.adaptive.sleep_ms,
        },
    }


def guests_json(guests: GuestResult | None) -> JSON:
    """Per-guest state (max, current, target, usable, reason) and the endpoints that failed;
    every key present, null when unknown."""
    if guests is None:
        return {"guests": [], "endpointsDown": [], "guestErrors": []}
    entries = [{"endpoint": endpoint,
                **{json_name(name): getattr(entry, name) for name in GUEST_FIELDS}}
               for endpoint, entry in guest_entries(guests)]
    return {"guests": entries, "endpointsDown": list(guests.endpoints_down),
            "guestErrors": list(guests.errors)}


def plan_json(selection: Selection, plan: NodePlan, changes: list[Change],
              guests: GuestResult | None = None) -> JSON:
    return {**_selection_json(selection), **_plan_extras(plan),
            "changes": [c.as_json() for c in changes],
            "balloons": [t.as_json() for t in (guests.planned if guests else [])],
            **guests_json(guests)}


def cycle_json(report: CycleResult) -> JSON:
    data = {**_selection_json(report.selection), **_plan_extras(report.plan)}
    data["notes"] = data["notes"] + report.notes
    data.update({
        "changes": [c.as_json() for c in report.changes],
        "errors": [e.as_json() for e in report.errors],
        "restored": report.restored,
        "originals": report.originals,
        "savedBytes": merged_bytes(report.observation),
        "balloons": [t.as_json() for t in report.guests.applied],
        "balloonedBytes": report.guests.ballooned_bytes,
        **guests_json(report.guests),
        "capacity": capacity_json(report.capacity),
    })
    return data


def _changes_text(data: JSON) -> list[str]:
    lines = [f"  {c['path']}: {c['from']} -> {c['to']}" for c in data["changes"]]
    lines += [f"  balloon {b['domain']}: {human_bytes(b['from'])} -> {human_bytes(b['to'])} "
              f"({b['reason']})" for b in data.get("balloons", [])]
    return lines or ["  (no changes)"]


def _guests_text(data: JSON) -> list[str]:
    lines = [f"guest {g['domain']}: current {human_bytes(g['currentBytes'])} of "
             f"{human_bytes(g['maxBytes'])}"
             + (f", usable {human_bytes(g['usableBytes'])}" if g["usableBytes"] else "")
             + (", deflates on OOM (autodeflate)" if g.get("autodeflate") else "")
             + (", reports free pages" if g.get("freePageReporting") else "")
             + (f": {g['reason']}" if g["reason"] else "") for g in data.get("guests", [])]
    lines += [f"libvirt endpoint down: {e}" for e in data.get("endpointsDown", [])]
    lines += [f"guest error: {e}" for e in data.get("guestErrors", [])]
    return lines


def _common_text(data: JSON) -> list[str]:
    lines = [f"policy: {data['policy'] or '(none selects this host)'}"]
    ladder = data.get("ladder")
    if ladder:
        relief = ", relief wanted" if ladder.get("relief") else ""
        lines.append(f"ladder: {ladder['state']}{relief} ({ladder['reason']})")
        if ladder.get("reliefStatus"):
            lines.append(f"relief: {ladder['reliefStatus']}")
    lines += [f"overridden: {o['name']} ({o['reason']})" for o in data["overridden"]]
    lines += [f"problem: {p['reason']}: {p['message']}" for p in data["problems"]]
    lines += [f"note: {n}" for n in data["notes"]]
    return lines


def plan_text(data: JSON) -> str:
    return "\n".join([*_common_text(data), "planned changes:", *_changes_text(data),
                      *_guests_text(data)])


def cycle_text(data: JSON) -> str:
    lines = [*_common_text(data), "changes:", *_changes_text(data)]
    lines += [f"error: {e['path']} = {e['value']}: {e['errno']}: {e['reason']}"
              for e in data["errors"]]
    lines += _guests_text(data)
    if data["restored"]:
        lines.append("restored the recorded originals")
    lines.append(f"saved by merging: {human_bytes(data['savedBytes'])}")
    lines += _capacity_text(data)
    return "\n".join(lines)


def capacity_json(capacity: Capacity | None) -> JSON | None:
    """The capacity as the node state shows it (camelCase), or None."""
    status = capacity_status(capacity)
    return None if status is None else to_json(status)


def _capacity_text(data: JSON) -> list[str]:
    capacity = data.get("capacity")
    if not capacity:
        return []
    evidence = capacity.get("evidence") or {}
    settled = "" if evidence.get("settled") else ", not settled yet"
    return [f"capacity: supports {capacity['summary']}, headroom {capacity['headroom']} "
            f"(observed {evidence.get('observedSeconds')} s of {evidence.get('windowSeconds')} "
            f"s{settled})", f"  {capacity['reason']}"]


def status_json(obs: Observation, originals: dict[str, str],
                guests: GuestResult | None = None, capacity: Capacity | None = None) -> JSON:
    merged = merged_bytes(obs)
    return {
        "capacity": capacity_json(capacity),
        **guests_json(guests),
        "balloonedBytes": guests.ballooned_bytes if guests else 0,
        "engines": {name: reading.present for name, reading in sorted(obs.readings.items())},
        "settings": dict(sorted(obs.settings().items())),
        "counters": {name: dict(reading.counters) for name, reading in
                     sorted(obs.readings.items()) if reading.counters},
        "saved": {"mergedBytes": merged, "summary": human_bytes(merged)},
        "memory": {"totalBytes": obs.mem_total, "availableBytes": obs.mem_available},
        "ksmdCpuSeconds": obs.ksmd_cpu_seconds,
        "originals": originals,
    }


def status_text(data: JSON) -> str:
    engines = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in data["engines"].items())
    lines = [f"engines: {engines}",
             f"saved by merging: {data['saved']['summary']}",
             f"memory: {human_bytes(data['memory']['availableBytes'])} available of "
             f"{human_bytes(data['memory']['totalBytes'])}",
             "settings:"]
    lines += [f"  {path} = {value}" for path, value in data["settings"].items()]
    lines += _guests_text(data)
    lines += _capacity_text(data)
    if data["originals"]:
        lines.append("recorded originals (restore puts these back):")
        lines += [f"  {path} = {value}" for path, value in data["originals"].items()]
    return "\n".join(lines)
