"""Plain data (and short text) views of plans, cycles and host status, for the CLI and status."""

from __future__ import annotations

from typing import Any

from overcommit.engine.cycle import CycleReport, saved_bytes
from overcommit.engine.guests import GuestReport
from overcommit.host.base import Change
from overcommit.planning.observation import Observation
from overcommit.planning.plan import NodePlan
from overcommit.planning.selection import Selection

JSON = dict[str, Any]


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "Ki", "Mi", "Gi", "Ti"):
        if abs(value) < 1024 or unit == "Ti":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _selection_json(selection: Selection) -> JSON:
    return {
        "policy": selection.winner.name if selection.winner else None,
        "overridden": [{"name": loser.name, "reason": loser.reason}
                       for loser in selection.losers],
    }


def _plan_extras(plan: NodePlan) -> JSON:
    return {
        "engine": plan.engine,
        "dryRun": plan.dry_run,
        "problems": [{"reason": p.reason, "message": p.message} for p in plan.problems],
        "notes": list(plan.notes),
        "adaptive": None if plan.adaptive is None else {
            "phase": plan.adaptive.phase.value, "reason": plan.adaptive.reason,
            "pagesToScan": plan.adaptive.pages_to_scan, "sleepMillisecs": plan.adaptive.sleep_ms,
        },
    }


def guests_json(guests: GuestReport | None) -> JSON:
    """Per-guest state (max, current, target, usable, reason) and the endpoints that failed."""
    if guests is None:
        return {"guests": [], "endpointsDown": [], "guestErrors": []}
    decisions = {(d.guest.endpoint, d.guest.domain): d for d in guests.decisions}
    entries = []
    for g in guests.guests:
        decision = decisions.get((g.endpoint, g.domain))
        usable = g.stats.get("usable")
        entries.append({
            "domain": g.domain, "endpoint": g.endpoint, "vmiNamespace": g.vmi_namespace,
            "vmiName": g.vmi_name, "vmiUid": g.vmi_uid, "maxBytes": g.max_kib * 1024,
            "currentBytes": g.current_kib * 1024,
            "targetBytes": None if decision is None or decision.target_kib is None
            else decision.target_kib * 1024,
            "usableBytes": None if usable is None else usable * 1024,
            # The planner's reason covers problems of guests it manages; an unselected guest's
            # reason says why it is not ours at all.
            "reason": decision.reason if decision else (g.problem or ""),
        })
    return {"guests": entries, "endpointsDown": list(guests.endpoints_down),
            "guestErrors": list(guests.errors)}


def plan_json(selection: Selection, plan: NodePlan, changes: list[Change],
              guests: GuestReport | None = None) -> JSON:
    return {**_selection_json(selection), **_plan_extras(plan),
            "changes": [c.as_json() for c in changes],
            "balloons": [t.as_json() for t in (guests.planned if guests else [])],
            **guests_json(guests)}


def cycle_json(report: CycleReport) -> JSON:
    data = {**_selection_json(report.selection), **_plan_extras(report.plan)}
    data["notes"] = data["notes"] + report.notes
    data.update({
        "changes": [c.as_json() for c in report.changes],
        "errors": [e.as_json() for e in report.errors],
        "restored": report.restored,
        "originals": report.originals,
        "savedBytes": saved_bytes(report.observation),
        "balloons": [t.as_json() for t in report.guests.applied],
        "balloonedBytes": report.guests.ballooned_bytes,
        **guests_json(report.guests),
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
             + (f": {g['reason']}" if g["reason"] else "") for g in data.get("guests", [])]
    lines += [f"libvirt endpoint down: {e}" for e in data.get("endpointsDown", [])]
    lines += [f"guest error: {e}" for e in data.get("guestErrors", [])]
    return lines


def _common_text(data: JSON) -> list[str]:
    lines = [f"policy: {data['policy'] or '(none selects this host)'}"]
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
    return "\n".join(lines)


def status_json(obs: Observation, originals: dict[str, str],
                guests: GuestReport | None = None) -> JSON:
    merged = saved_bytes(obs)
    return {
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
    if data["originals"]:
        lines.append("recorded originals (restore puts these back):")
        lines += [f"  {path} = {value}" for path, value in data["originals"].items()]
    return "\n".join(lines)
