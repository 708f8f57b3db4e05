"""Pure translation of a cycle into the MemoryOvercommitNodeState status, and change detection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from overcommit.api.model import PolicyError
from overcommit.api.status import find_condition
from overcommit.engine.cycle import CycleReport, saved_bytes
from overcommit.kube.clock import now_rfc3339
from overcommit.report import guests_json, human_bytes

JSON = dict[str, Any]

# Fields whose change is news (written at once); everything else is refreshed at most once per
# status interval, so steady counters never cause a write storm.
SIGNIFICANT = ("policy", "overridden", "conditions", "engine", "engines", "originals",
               "lastErrors", "endpointsDown", "guestCount")


def node_status(report: CycleReport, invalid: Sequence[PolicyError] = (),
                previous: Mapping[str, Any] | None = None) -> JSON:
    """The node state's status after ``report``; keeps condition transition times stable."""
    obs = report.observation
    merged = saved_bytes(obs)
    zswap = obs.readings.get("zswap")
    compressed = 0
    if zswap is not None:
        compressed = max(0, zswap.counters.get("zswapped_bytes", 0)
                         - zswap.counters.get("zswap_pool_bytes", 0))
    policy = report.selection.winner
    ballooned = report.guests.ballooned_bytes
    errors = [f"{e.path}: {e.errno_name}: {e.reason}" for e in report.errors]
    errors += report.guests.trouble
    errors += [line for err in invalid for line in err.lines()]
    status: JSON = {
        "policy": None if policy is None else {"name": policy.name, "uid": policy.uid,
                                                "generation": policy.generation},
        "overridden": [{"name": loser.name, "reason": loser.reason}
                       for loser in report.selection.losers],
        "conditions": _conditions(report, invalid, previous),
        "engine": report.plan.engine if policy is not None else _engine(report),
        "engines": [{"name": name, "present": reading.present}
                    for name, reading in sorted(obs.readings.items())],
        "settings": dict(sorted(report.settings_after.items())),
        "counters": _counters(report),
        "originals": dict(sorted(report.originals.items())),
        "saved": {"mergedBytes": merged,
                  "mergingProfitBytes": obs.counter("ksm", "general_profit"),
                  "balloonedBytes": ballooned, "compressedBytes": compressed,
                  "totalBytes": merged + compressed + ballooned,
                  "summary": human_bytes(merged + compressed + ballooned)},
        "memory": _memory(report),
        "guestCount": len(report.guests.guests),
        "guests": _guests(report),
        "endpointsDown": [text[:1024] for text in report.guests.endpoints_down[:32]],
        "lastErrors": [text[:1024] for text in errors[:32]],
    }
    return status


def _guests(report: CycleReport) -> list[JSON]:
    """The node state's guest entries (the schema's Guest), capped at the CRD's 1024."""
    entries = guests_json(report.guests)["guests"][:1024]
    keep = ("domain", "vmiNamespace", "vmiName", "vmiUid", "maxBytes", "currentBytes",
            "targetBytes", "usableBytes", "reason")
    return [{k: v for k, v in e.items() if k in keep and v is not None} for e in entries]


def _engine(report: CycleReport) -> str:
    obs = report.observation
    return "ksm" if obs.present("ksm") else "uksm" if obs.present("uksm") else "none"


def _counters(report: CycleReport) -> dict[str, int]:
    out = {}
    for name, reading in sorted(report.observation.readings.items()):
        if name in ("meminfo", "psi"):
            continue  # summarised under memory
        for key, value in sorted(reading.counters.items()):
            out[f"{name}.{key}"] = value
    return out


def _memory(report: CycleReport) -> JSON:
    obs = report.observation
    psi = obs.readings.get("psi")
    memory: JSON = {"totalBytes": obs.mem_total, "availableBytes": obs.mem_available,
                    "swapTotalBytes": obs.counter("meminfo", "SwapTotal"),
                    "swapFreeBytes": obs.counter("meminfo", "SwapFree")}
    if psi is not None and psi.present:
        memory["psiSomeAvg10"] = f"{psi.counters.get('some_avg10', 0) / 100:.2f}"
        memory["psiFullAvg10"] = f"{psi.counters.get('full_avg10', 0) / 100:.2f}"
    return memory


def _conditions(report: CycleReport, invalid: Sequence[PolicyError],
                previous: Mapping[str, Any] | None) -> list[JSON]:
    policy = report.selection.winner
    generation = policy.generation if policy else None
    problems = [(p.reason, p.message) for p in report.problems]
    guest_trouble = report.guests.trouble
    if guest_trouble:
        problems.append(("GuestsFailed", "; ".join(guest_trouble)))
    if invalid:
        problems.append(("InvalidPolicy", "; ".join(e.lines()[0] for e in invalid)))
    if report.errors:
        first = report.errors[0]
        problems.insert(0, ("ApplyFailed", f"{len(report.errors)} setting(s) could not be "
                            f"written; first: {first.path}: {first.errno_name}: {first.reason}"))
    if policy is None:
        ready = ("True", "NoPolicy", "no policy selects this node; the node's own settings "
                 "are in place")
    elif report.errors:
        ready = ("False", problems[0][0], problems[0][1])
    elif report.plan.dry_run:
        ready = ("True", "DryRun", f"policy {policy.name} is in dry-run mode: "
                 f"{len(report.changes)} change(s) planned, none made")
    else:
        ready = ("True", "Applied", f"policy {policy.name} generation {generation} is applied")
    degraded = ("True", problems[0][0], problems[0][1]) if problems else \
        ("False", "AsExpected", "no problems")
    return [_condition("Ready", *ready, generation, previous),
            _condition("Degraded", *degraded, generation, previous)]


def _condition(kind: str, status: str, reason: str, message: str, generation: int | None,
               previous: Mapping[str, Any] | None) -> JSON:
    old = find_condition(previous, kind)
    changed = not old or old.get("status") != status
    condition: JSON = {"type": kind, "status": status, "reason": reason,
                       "message": message[:32000],
                       "lastTransitionTime": now_rfc3339() if changed or old is None
                       else old.get("lastTransitionTime")}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def significant(status: Mapping[str, Any]) -> JSON:
    """The part of a status whose change must be written at once."""
    out = {key: status.get(key) for key in SIGNIFICANT}
    out["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                         for c in status.get("conditions") or []]
    return out


def detail(status: Mapping[str, Any]) -> JSON:
    """Everything else (settings, counters, savings, memory) minus the timestamp."""
    return {k: v for k, v in status.items() if k not in SIGNIFICANT and k != "lastUpdate"}


def should_write(new: Mapping[str, Any], last: Mapping[str, Any] | None, since_write_s: float,
                 status_interval_s: float) -> bool:
    """The agent's write gate: news at once, counter-only changes at most once per interval,
    nothing when nothing changed."""
    if last is None:
        return True
    if significant(new) != significant(last):
        return True
    return since_write_s >= status_interval_s and detail(new) != detail(last)
