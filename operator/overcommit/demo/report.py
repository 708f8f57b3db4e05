"""What both demos (local control plane and real node) print about the node state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from overcommit.api.status import find_condition

SHOWN_KSM = ("run", "pages_to_scan", "sleep_millisecs")


def describe_node_state(node: str, status: Mapping[str, Any]) -> str:
    """The node state's policy, readiness, saving, KSM settings, capacity and originals."""
    settings = status.get("settings") or {}
    ksm = {k.rsplit("/", 1)[1]: v for k, v in settings.items()
           if "/ksm/" in k and k.rsplit("/", 1)[1] in SHOWN_KSM}
    ready = find_condition(status, "Ready")
    lines = [f"node state {node}: policy={(status.get('policy') or {}).get('name')} "
             f"ready={ready.get('status')} ({ready.get('reason')}) "
             f"saved={(status.get('saved') or {}).get('summary')} ksm={ksm}"]
    capacity = status.get("capacity") or {}
    if capacity:
        lines.append(f"  supports {capacity.get('summary')}, headroom "
                     f"{capacity.get('headroom')}: {capacity.get('reason')}")
    lines.append(f"  originals (restored on exit): {status.get('originals')}\n")
    return "\n".join(lines)
