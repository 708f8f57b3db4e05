"""Enriching guests with their VMI's labels, annotations and memory request."""

from __future__ import annotations

from typing import Any

import pytest

from overcommit.virt.kubevirt import enrich_guests, vmi_request_kib
from overcommit.virt.model import GuestObservation


def guest(domain: str, uid: str | None = "u-1", kubevirt: bool = True) -> GuestObservation:
    ns, _, name = domain.partition("_")
    return GuestObservation("test:///x", domain, "uuid", 1.0, 4096, 4096, True,
                            vmi_namespace=ns if kubevirt else None,
                            vmi_name=name if kubevirt else None, vmi_uid=uid)


def vmi(uid: str = "u-1", memory: dict[str, Any] | None = None,
        requests: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "vm", "namespace": "ns", "uid": uid,
                         "labels": {"tier": "web"}, "annotations": {"note": "x"}},
            "spec": {"domain": {"memory": memory or {}, "resources": {"requests": requests or {}}}}}


def test_a_vmi_adds_labels_annotations_and_the_request() -> None:
    [g] = enrich_guests([guest("ns_vm")], {("ns", "vm"): vmi(requests={"memory": "1Gi"})})
    assert (g.labels, g.annotations, g.request_kib) == ({"tier": "web"}, {"note": "x"}, 1024**2)
    assert g.problem is None


def test_the_uid_comes_from_the_vmi_when_the_domain_had_none() -> None:
    [g] = enrich_guests([guest("ns_vm", uid=None)], {("ns", "vm"): vmi(uid="u-9")})
    assert g.vmi_uid == "u-9"


@pytest.mark.parametrize(("memory", "requests", "kib"), [
    ({"guest": "2Gi"}, {"memory": "1536Mi"}, 1536 * 1024),  # request first: overcommit
    ({"guest": "2Gi"}, {}, 2 * 1024**2),
    ({}, {"memory": "1073741824"}, 1024**2),
    ({}, {"memory": "1.5Gi"}, 1536 * 1024),
    ({"guest": "oops"}, {"memory": "1e9"}, None),  # not parsed: unknown, not zero
    ({}, {}, None),
])
def test_memory_request(memory: dict[str, Any], requests: dict[str, Any],
                        kib: int | None) -> None:
    assert vmi_request_kib(vmi(memory=memory, requests=requests)) == kib


def test_guests_without_a_vmi_are_left_as_they_are() -> None:
    plain, orphan = guest("plain", uid=None, kubevirt=False), guest("ns_gone")
    assert enrich_guests([plain, orphan], {("ns", "vm"): vmi()}) == [plain, orphan]


def test_a_domain_of_an_earlier_vmi_with_the_same_name_gets_a_problem() -> None:
    [g] = enrich_guests([guest("ns_vm", uid="old")], {("ns", "vm"): vmi(uid="new")})
    assert g.problem is not None and "earlier VMI ns/vm" in g.problem
    assert g.labels == {} and g.request_kib is None
