"""A guest's cgroup v2 memory pressure on fake host trees: cgroup v2, the hybrid layout (whose
unified hierarchy this development machine has, next to cgroup v1 controllers), and pure
cgroup v1 (no reading at all). The trees are built in a temporary directory: the reader only
ever sees paths under its host root."""

from __future__ import annotations

from pathlib import Path

import pytest

from overcommit.host import cgroups
from overcommit.host.base import HostFS
from overcommit.host.cgroups import GuestCgroups, qemu_uuid, unified_path

UUID = "2F1C1E58-3C5E-4D7E-9A55-6D1F0C1B2A10"
POD = ("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/"
       "cri-containerd-abcd.scope")
PSI = ("some avg10=31.50 avg60=12.00 avg300=3.00 total=9876543\n"
       "full avg10=7.25 avg60=2.00 avg300=0.50 total=1234567\n")


def put(root: Path, rel: str, data: str | bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)


def qemu(root: Path, pid: int, uuid: str, cgroup: str, hybrid: bool = False) -> None:
    argv = [b"/usr/libexec/qemu-kvm", b"-name", b"guest=prod_vm,debug-threads=on", b"-uuid",
            uuid.encode(), b"-smp", b"2"]
    put(root, f"proc/{pid}/cmdline", b"\0".join(argv) + b"\0")
    v1 = "12:memory:/kubepods/pod1234/abcd\n4:cpu,cpuacct:/kubepods/pod1234/abcd\n"
    put(root, f"proc/{pid}/cgroup", (v1 if hybrid else "") + f"0::/{cgroup}\n")


@pytest.fixture
def v2(tmp_path: Path) -> Path:
    put(tmp_path, "sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids\n")
    put(tmp_path, f"sys/fs/cgroup/{POD}/memory.pressure", PSI)
    put(tmp_path, "proc/1/cmdline", b"/sbin/init\0")
    put(tmp_path, "proc/77/cmdline", b"")  # a kernel thread
    qemu(tmp_path, 4242, UUID, POD)
    return tmp_path


def test_command_line_and_cgroup_parsing() -> None:
    assert qemu_uuid(b"qemu\0-name\0x\0-uuid\0ABC-1\0-m\0512\0") == "abc-1"
    assert qemu_uuid(b"qemu\0-uuid\0") is None and qemu_uuid(b"bash\0") is None
    assert unified_path("12:memory:/a\n0::/machine.slice/x.scope\n") == "/machine.slice/x.scope"
    assert unified_path("12:memory:/a\n1:name=systemd:/b\n") is None


def test_a_guests_pressure_comes_from_its_qemu_processs_cgroup(v2: Path) -> None:
    reader = GuestCgroups(HostFS(v2))
    got = reader.pressure([UUID, "00000000-0000-0000-0000-000000000000"])
    assert list(got) == [UUID.lower()]
    assert got[UUID.lower()]["some_avg10"] == 3150 and got[UUID.lower()]["full_avg10"] == 725


def test_the_hybrid_layouts_unified_hierarchy_is_used(tmp_path: Path) -> None:
    put(tmp_path, "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")
    put(tmp_path, "sys/fs/cgroup/unified/cgroup.controllers", "")
    put(tmp_path, "sys/fs/cgroup/unified/machine/qemu-1-web.libvirt-qemu/memory.pressure", PSI)
    qemu(tmp_path, 900, UUID, "machine/qemu-1-web.libvirt-qemu", hybrid=True)
    reader = GuestCgroups(HostFS(tmp_path))
    assert reader.mount() == "sys/fs/cgroup/unified"
    assert reader.pressure([UUID])[UUID.lower()]["some_avg10"] == 3150


def test_a_cgroup_v1_host_has_no_guest_pressure_and_is_not_scanned(tmp_path: Path) -> None:
    put(tmp_path, "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")
    qemu(tmp_path, 900, UUID, "machine/x", hybrid=True)
    reader = GuestCgroups(HostFS(tmp_path))
    assert reader.mount() is None and reader.pressure([UUID]) == {}
    assert reader._pids == {}


def test_pids_are_cached_and_found_again_when_the_process_changes(
        v2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reader = GuestCgroups(HostFS(v2))
    scans = 0
    real_scan = reader._scan

    def counting() -> dict[str, int]:
        nonlocal scans
        scans += 1
        return real_scan()

    monkeypatch.setattr(reader, "_scan", counting)
    for _ in range(5):
        assert UUID.lower() in reader.pressure([UUID])
    assert scans == 1
    # The guest restarted: its old pid is gone, a new QEMU has another pid and cgroup.
    (v2 / "proc/4242/cmdline").write_bytes(b"")
    put(v2, "sys/fs/cgroup/machine.slice/new.scope/memory.pressure",
        PSI.replace("31.50", "2.00"))
    qemu(v2, 5151, UUID, "machine.slice/new.scope")
    assert reader.pressure([UUID])[UUID.lower()]["some_avg10"] == 200
    assert scans == 2


def test_a_guest_not_found_is_looked_for_only_every_few_calls(
        v2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reader = GuestCgroups(HostFS(v2))
    scans = 0
    real_scan = reader._scan

    def counting() -> dict[str, int]:
        nonlocal scans
        scans += 1
        return real_scan()

    monkeypatch.setattr(reader, "_scan", counting)
    remote = "11111111-2222-3333-4444-555555555555"  # a guest of another host
    for _ in range(2 * cgroups.RESCAN_EVERY):
        assert reader.pressure([UUID, remote]).keys() == {UUID.lower()}
    assert scans == 2  # the first call, then once per RESCAN_EVERY calls


def test_a_missing_pressure_file_or_cgroup_line_leaves_the_guest_out(v2: Path) -> None:
    (v2 / f"sys/fs/cgroup/{POD}/memory.pressure").unlink()
    assert GuestCgroups(HostFS(v2)).pressure([UUID]) == {}
    (v2 / "proc/4242/cgroup").write_text("12:memory:/x\n")
    assert GuestCgroups(HostFS(v2)).pressure([UUID]) == {}
