"""The pure parts of bench.ksm_guests: sizes, the image's pages, the sharing it is designed for."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bench.ksm_guests import MIB, PAGE, GuestWorkload, image_path, page_stamp, split_mib
from testkit import guests


def test_split_keeps_the_shared_fraction_and_the_total() -> None:
    assert split_mib(1024, 0.75) == (768, 256)
    assert split_mib(32, 0.75) == (24, 8)
    assert sum(split_mib(33, 0.5)) == 33


def test_designed_sharing_is_every_copy_but_one() -> None:
    workload = GuestWorkload(workers=4, size_mib=32, shared_fraction=0.75)
    assert workload.shared_pages == 24 * MIB // PAGE
    assert workload.achievable_sharing == 3 * 24 * MIB // PAGE
    # The cap counts all of the guests' memory (their kernels merge too), never less than the
    # design.
    assert workload.sharing_cap > workload.achievable_sharing


def test_image_pages_are_distinct_and_a_page_each(tmp_path: Path) -> None:
    path = image_path(1, tmp_path)
    data = path.read_bytes()
    assert len(data) == MIB
    pages = {data[i:i + PAGE] for i in range(0, len(data), PAGE)}
    assert len(pages) == MIB // PAGE  # no two pages equal: only copies across guests merge
    assert data[:PAGE] == page_stamp(0)


def test_image_is_reused_and_rebuilt_when_wrong(tmp_path: Path) -> None:
    path = image_path(1, tmp_path)
    mtime = path.stat().st_mtime_ns
    assert image_path(1, tmp_path).stat().st_mtime_ns == mtime
    path.write_bytes(b"truncated")
    assert image_path(1, tmp_path).stat().st_size == MIB


def test_the_domain_gets_the_disk_read_only() -> None:
    spec = guests.GuestSpec("g", 256, 256, True, True, 0, True, "", Path("/images/golden.img"))
    files = guests.GuestFiles(Path("/d"), Path("/d/console.log"), Path("/d/cmd.sock"))
    image = guests.GuestImage(Path("/k"), Path("/i"), "6.1")
    xml = guests._domain_xml(spec, image, files)
    assert "<source file='/images/golden.img'/>" in xml
    assert "<readonly/>" in xml and "bus='virtio'" in xml
    no_disk = guests._domain_xml(guests.GuestSpec("g", 256, 256, True, True, 0, True, ""),
                                 image, files)
    assert "<disk" not in no_disk


def test_the_trial_guard_allows_the_guests_own_sharing_but_not_the_processes() -> None:
    from bench.ksm_efficiency import sharing_cap
    from overcommit.demo.workload import MergeWorkload

    processes = MergeWorkload(4, 32, 0.75)
    assert sharing_cap(processes) == processes.achievable_sharing
    vms = GuestWorkload(workers=4, size_mib=32, shared_fraction=0.75)
    assert sharing_cap(vms) == vms.sharing_cap > vms.achievable_sharing


def test_a_guest_balloon_deflates_on_oom_only_when_asked() -> None:
    image = guests.GuestImage(Path("/k"), Path("/i"), "6.1")
    files = guests.GuestFiles(Path("/d"), Path("/d/c.log"), Path("/d/c.sock"))
    plain = guests.GuestSpec("g", 256, 256, True, True, 1, True, "")
    assert "autodeflate" not in guests._domain_xml(plain, image, files)
    deflating = dataclasses.replace(plain, autodeflate=True)
    assert "<memballoon model='virtio' autodeflate='on'><stats period='1'/>" in \
        guests._domain_xml(deflating, image, files)
