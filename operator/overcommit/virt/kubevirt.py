"""Add what only the VMI object knows to guests seen through libvirt. Pure.

The caller (the agent) fetches the node's VirtualMachineInstances and passes them as JSON
objects (camelCase, as the API serves them) keyed by ``(namespace, name)``; domains name their
VMI ``<namespace>_<name>`` and carry its uid, which ``libvirt_source`` already read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from overcommit.api.schema import quantity_bytes
from overcommit.virt.model import GuestObservation

__all__ = ["enrich_guests", "vmi_request_kib"]

VMIKey = tuple[str, str]


def enrich_guests(guests: Iterable[GuestObservation],
                  vmis: Mapping[VMIKey, Mapping[str, Any]]) -> list[GuestObservation]:
    """Each guest with its VMI's labels, annotations and memory request, when it has a VMI."""
    return [_enrich(g, vmis) for g in guests]


def _enrich(guest: GuestObservation,
            vmis: Mapping[VMIKey, Mapping[str, Any]]) -> GuestObservation:
    if guest.vmi_namespace is None or guest.vmi_name is None:
        return guest  # not a KubeVirt domain
    vmi = vmis.get((guest.vmi_namespace, guest.vmi_name))
    if vmi is None:
        return guest
    meta = _mapping(vmi.get("metadata"))
    uid = meta.get("uid")
    if guest.vmi_uid and uid and uid != guest.vmi_uid:
        # Same name, another VMI: this domain is a deleted VMI's, still shutting down. Its
        # floor and labels are unknown, so the planner must leave it alone.
        return dataclasses.replace(guest, problem=guest.problem or (
            f"belongs to an earlier VMI {guest.vmi_namespace}/{guest.vmi_name} (uid "
            f"{guest.vmi_uid}, the current one is {uid})"))
    return dataclasses.replace(
        guest, vmi_uid=guest.vmi_uid or (str(uid) if uid else None),
        labels=_strings(meta.get("labels")), annotations=_strings(meta.get("annotations")),
        request_kib=vmi_request_kib(vmi))


def vmi_request_kib(vmi: Mapping[str, Any]) -> int | None:
    """The VMI's memory request in KiB, else its guest memory; None when neither parses.

    The request comes first: it is what the scheduler reserved, and with KubeVirt's memory
    overcommit it is below the guest's size, which is the balloon's ceiling, not a floor.
    """
    domain = _mapping(_mapping(vmi.get("spec")).get("domain"))
    requests = _mapping(_mapping(domain.get("resources")).get("requests"))
    for quantity in (requests.get("memory"), _mapping(domain.get("memory")).get("guest")):
        if quantity is None:
            continue
        try:
            return quantity_bytes(quantity) // 1024
        except ValueError:
            continue  # e.g. an exponent form the pattern does not cover
    return None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _strings(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in _mapping(value).items()}
