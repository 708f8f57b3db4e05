"""kstatus' generic rules for a custom resource (sigs.k8s.io/cli-utils/pkg/kstatus/status),
re-stated in Python so tests can judge the statuses the controller writes the way Flux does.

In order: a deletionTimestamp makes it Terminating; a status.observedGeneration that differs
from metadata.generation makes it InProgress; a condition Reconciling=True makes it InProgress,
Stalled=True Failed; anything else (a kind kstatus has no special rules for) is Current, even
an object without any status yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CURRENT, IN_PROGRESS, FAILED, TERMINATING = "Current", "InProgress", "Failed", "Terminating"


def compute(obj: Mapping[str, Any]) -> str:
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return TERMINATING
    generation = meta.get("generation", -1)
    if status.get("observedGeneration", generation) != generation:
        return IN_PROGRESS
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Reconciling" and condition.get("status") == "True":
            return IN_PROGRESS
        if condition.get("type") == "Stalled" and condition.get("status") == "True":
            return FAILED
    return CURRENT
