"""Guests never ballooned (VFIO, hugepages, dedicated CPUs, realtime) and guests migrating: from
domain XML samples, KubeVirt VMI objects and libvirt's job API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libvirt  # type: ignore[import-untyped]
import pytest

from overcommit.virt.balloonstats import job_in_progress
from overcommit.virt.domainxml import (
    DEDICATED,
    HOSTDEV,
    HUGEPAGES,
    REALTIME,
    parse_domain_xml,
)
from overcommit.virt.kubevirt import enrich_guests, vmi_exclusions, vmi_migration
from overcommit.virt.libvirt_source import LibvirtEndpoint
from overcommit.virt.model import GuestObservation
from tests.unit.virt.conftest import WALL, Opener
from tests.unit.virt.test_libvirt_source import FakeLibvirtError, Proxy, observe

SAMPLES = Path(__file__).parent / "samples"


@pytest.mark.parametrize(("sample", "expected"), [
    ("kubevirt-gpu-hugepages.xml", (HOSTDEV, HUGEPAGES)),
    ("kubevirt-dedicated-realtime.xml", (DEDICATED, REALTIME)),
    ("libvirt-sriov-interface.xml", (HOSTDEV,)),
    # memfd-backed shared memory, CPU shares and a non-realtime scheduler: nothing in the way
    ("libvirt-plain.xml", ()),
])
def test_domain_xml_samples(sample: str, expected: tuple[str, ...]) -> None:
    facts = parse_domain_xml((SAMPLES / sample).read_text())
    assert facts.exclusions == expected
    assert facts.has_balloon  # every sample has a balloon: the exclusion is the only reason


def test_a_kubevirt_sample_keeps_its_other_facts() -> None:
    facts = parse_domain_xml((SAMPLES / "kubevirt-gpu-hugepages.xml").read_text())
    assert (facts.balloon_model, facts.stats_period, facts.kubevirt, facts.vmi_uid) == (
        "virtio-non-transitional", 10, True, "vmi-uid-gpu")


@pytest.mark.parametrize(("stats", "expected"), [
    ({"type": 0}, None),
    ({"type": 3, "operation": 5}, None),  # completed
    ({"type": 2, "operation": 5}, "libvirt outgoing migration in progress"),
    ({"type": 1, "operation": 4}, "libvirt incoming migration in progress"),
    ({"type": 2, "operation": 8}, "libvirt dump in progress"),
    ({"type": 2}, "libvirt a job in progress"),
])
def test_libvirt_jobs(stats: dict[str, Any], expected: str | None) -> None:
    got = job_in_progress(stats)
    assert (got is None) if expected is None else (got is not None and got.startswith(expected))


# --------------------------------------------------------------------------- KubeVirt VMIs


def vmi(spec_domain: dict[str, Any] | None = None,
        migration: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"metadata": {"name": "vm", "namespace": "ns", "uid": "u-1"},
                           "spec": {"domain": spec_domain or {}}}
    if migration is not None:
        out["status"] = {"migrationState": migration}
    return out


@pytest.mark.parametrize(("domain", "needle"), [
    ({"devices": {"gpus": [{"name": "gpu1", "deviceName": "nvidia.com/A100"}]}},
     "VFIO host devices (VMI gpus)"),
    ({"devices": {"hostDevices": [{"name": "hd", "deviceName": "vendor/dev"}]}},
     "VFIO host devices (VMI hostDevices)"),
    ({"devices": {"interfaces": [{"name": "net", "sriov": {}}, {"name": "n2", "sriov": {}}]}},
     "VFIO host devices (VMI SR-IOV interfaces)"),
    ({"memory": {"hugepages": {"pageSize": "2Mi"}}}, "hugepages"),
    ({"cpu": {"dedicatedCpuPlacement": True}}, "dedicated CPUs"),
    ({"cpu": {"dedicatedCpuPlacement": True, "realtime": {}}}, "realtime"),
])
def test_vmi_exclusions(domain: dict[str, Any], needle: str) -> None:
    found = vmi_exclusions(vmi(domain))
    assert any(needle in e for e in found), found


def test_an_ordinary_vmi_has_no_exclusions() -> None:
    assert vmi_exclusions(vmi({"cpu": {"cores": 2, "dedicatedCpuPlacement": False},
                               "devices": {"interfaces": [{"name": "d", "masquerade": {}}]},
                               "memory": {"guest": "2Gi"}})) == ()


@pytest.mark.parametrize(("state", "migrating"), [
    (None, False),
    ({"startTimestamp": "2026-12-01T10:00:00Z", "targetNode": "n2"}, True),
    ({"startTimestamp": "2026-12-01T10:00:00Z", "completed": True,
      "endTimestamp": "2026-12-01T10:01:00Z"}, False),
    ({"startTimestamp": "2026-12-01T10:00:00Z", "failed": True}, False),
    ({"startTimestamp": "2026-12-01T10:00:00Z", "endTimestamp": "2026-12-01T10:01:00Z"},
     False),
])
def test_vmi_migration(state: dict[str, Any] | None, migrating: bool) -> None:
    text = vmi_migration(vmi(migration=state))
    assert (text is not None) == migrating
    if text:
        assert text.startswith("KubeVirt live migration to node n2 in progress")


def test_enrichment_adds_the_vmis_exclusions_to_the_domains_once() -> None:
    g = GuestObservation("qemu:///system", "ns_vm", "uuid", 1.0, 4096, 4096, True,
                         vmi_namespace="ns", vmi_name="vm", vmi_uid="u-1",
                         exclusions=(HUGEPAGES,))
    [out] = enrich_guests([g], {("ns", "vm"): vmi(
        {"memory": {"hugepages": {"pageSize": "1Gi"}}, "cpu": {"dedicatedCpuPlacement": True}},
        migration={"startTimestamp": "2026-12-01T10:00:00Z"})})
    assert out.exclusions[0] == HUGEPAGES and len(out.exclusions) == 3
    assert out.migration is not None and "live migration" in out.migration


# --------------------------------------------------------------------------- libvirt's job API


def test_an_endpoint_reports_a_domain_job_and_skips_the_api_where_unsupported(
        node_uri: str) -> None:
    asked: list[str] = []

    class Domain(Proxy):
        def jobStats(self, flags: int = 0) -> dict[str, int]:
            asked.append(self.real.name())
            if self.real.name() == "ns1_vm-a":
                return {"type": 2, "operation": 5}
            return {"type": 0}

    class Connection(Proxy):
        def getAllDomainStats(self, groups: int, flags: int) -> list[tuple[Any, Any]]:
            return [(Domain(d), r) for d, r in self.real.getAllDomainStats(groups, flags)]

    endpoint = LibvirtEndpoint(node_uri, opener=Opener(Connection), wall_clock=lambda: WALL)
    guests = observe(endpoint)
    migration = guests["ns1_vm-a"].migration
    assert migration is not None and "outgoing migration in progress" in migration
    assert guests["plain"].migration is None
    assert "ns1_no-balloon" not in asked  # no balloon: nothing to leave alone
    # libvirt's test driver has no job API: asked once, then never again on that endpoint.
    plain = LibvirtEndpoint(node_uri, opener=Opener(), wall_clock=lambda: WALL)
    assert all(g.migration is None for g in observe(plain).values())
    assert plain._jobs_unsupported


def test_a_domain_gone_while_its_job_is_asked_is_left_out(node_uri: str) -> None:
    class Domain(Proxy):
        def jobStats(self, flags: int = 0) -> dict[str, int]:
            if self.real.name() == "plain":
                raise FakeLibvirtError("domain not found", libvirt.VIR_ERR_NO_DOMAIN)
            return {"type": 0}

    class Connection(Proxy):
        def getAllDomainStats(self, groups: int, flags: int) -> list[tuple[Any, Any]]:
            return [(Domain(d), r) for d, r in self.real.getAllDomainStats(groups, flags)]

    endpoint = LibvirtEndpoint(node_uri, opener=Opener(Connection), wall_clock=lambda: WALL)
    assert "plain" not in observe(endpoint)
