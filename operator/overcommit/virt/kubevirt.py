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

__all__ = ["enrich_guests", "vmi_exclusions", "vmi_live_migratable", "vmi_migration",
           "vmi_request_kib"]

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
    own = vmi_exclusions(vmi)
    return dataclasses.replace(
        guest, vmi_uid=guest.vmi_uid or (str(uid) if uid else None),
        labels=_strings(meta.get("labels")), annotations=_strings(meta.get("annotations")),
        request_kib=vmi_request_kib(vmi),
        exclusions=guest.exclusions + tuple(e for e in own if e not in guest.exclusions),
        migration=guest.migration or vmi_migration(vmi),
        live_migratable=vmi_live_migratable(vmi))


def vmi_live_migratable(vmi: Mapping[str, Any]) -> bool:
    """The VMI's ``LiveMigratable`` condition is True (KubeVirt sets it False, with a reason,
    for VMIs that cannot move: host devices, non-shared storage, ...)."""
    for condition in _mapping(vmi.get("status")).get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == "LiveMigratable":
            return condition.get("status") == "True"
    return False


def vmi_exclusions(vmi: Mapping[str, Any]) -> tuple[str, ...]:
    """Why the VMI's spec says its guest is never ballooned: host devices (GPUs, host devices,
    SR-IOV interfaces: VFIO), hugepages, dedicated CPUs, realtime. The domain XML says the
    same once KubeVirt rendered it; the spec says it for every VMI, also where the XML
    differs."""
    domain = _mapping(_mapping(vmi.get("spec")).get("domain"))
    devices = _mapping(domain.get("devices"))
    cpu = _mapping(domain.get("cpu"))
    found = []
    vfio = [name for name in ("hostDevices", "gpus") if devices.get(name)]
    vfio += ["SR-IOV interfaces" for iface in devices.get("interfaces") or []
             if isinstance(iface, Mapping) and "sriov" in iface][:1]
    if vfio:
        found.append(f"VFIO host devices (VMI {', '.join(vfio)}): QEMU pins all guest "
                     "memory, a balloon returns nothing")
    if _mapping(domain.get("memory")).get("hugepages"):
        found.append("hugepages (VMI spec.domain.memory.hugepages): ballooning frees no host "
                     "memory")
    if cpu.get("dedicatedCpuPlacement") is True:
        found.append("dedicated CPUs (VMI dedicatedCpuPlacement): a latency-sensitive guest")
    if "realtime" in cpu:
        found.append("realtime (VMI spec.domain.cpu.realtime): a latency-sensitive guest")
    return tuple(found)


def vmi_migration(vmi: Mapping[str, Any]) -> str | None:
    """A live migration of the VMI in progress (``status.migrationState`` started, neither
    completed nor failed), as a skip reason; None otherwise."""
    state = _mapping(_mapping(vmi.get("status")).get("migrationState"))
    if not state or state.get("completed") is True or state.get("failed") is True \
            or state.get("endTimestamp"):
        return None
    target = state.get("targetNode")
    where = f" to node {target}" if target else ""
    return f"KubeVirt live migration{where} in progress: balloon left alone until it is over"


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
