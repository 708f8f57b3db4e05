"""The third KSM workload: real TCG guests booted from one image.

``workers`` guests under the real libvirtd, each with the same read-only disk image attached
(the "golden image" every VM of a pool is cloned from). Each guest copies the image into its
memory (a tmpfs: resident, as the programs and data a guest loaded from its disk are) and adds
``size_mib x (1 - shared_fraction)`` MiB of random data of its own. So, as with the process
workloads, the first ``shared_fraction`` of every guest's ``size_mib`` is identical across
guests and the rest is unique, and the designed saving is ``(N - 1) x shared pages``.

What is real here and not in the process workloads: QEMU marks the guest RAM mergeable itself,
the content sits wherever the guest kernel put it (guest-physical pages, not aligned across
guests), the guest kernels' own identical pages (kernel text, the initramfs, page tables of
the same programs) merge too, and the guests keep running (their timers, the meminfo reporter)
while ksmd scans. The guests' own identical pages are why the sharing can exceed the designed
figure: t90 is still judged against the designed figure, and the trial guard against what the
guests' memory could share at most (``sharing_cap``).

The image is built once (``image_path``) in the test-support cache: page ``i`` holds a stamp
with its index, so no two pages of the image are equal (only copies across guests merge).
Guests start fresh for every trial (each strategy meets the same, unmerged guests) and are
destroyed after it, also on errors; a run killed before that leaves guests that the next run
removes (``testkit.guests.destroy_stale``).
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testkit import guests
from testkit.libvirtd import URI, ensure_libvirtd

PREFIX = "oc-bench-ksm-"
PAGE = mmap.PAGESIZE
MIB = 1 << 20
# The guest's own memory on top of its content: the kernel, busybox, the tmpfs's metadata.
GUEST_OVERHEAD_MIB = 160
BOOT_TIMEOUT_S = 300.0


def split_mib(size_mib: int, shared_fraction: float) -> tuple[int, int]:
    """(shared, unique) MiB of one guest's ``size_mib`` of content."""
    shared = int(size_mib * shared_fraction)
    return shared, size_mib - shared


def page_stamp(index: int) -> bytes:
    """Page ``index`` of the image: a stamp, zero-padded to a page (distinct from every other
    page of the image, identical in every guest's copy)."""
    stamp = b"golden-image-page-%012d" % index
    return stamp + bytes(PAGE - len(stamp))


def image_path(shared_mib: int, directory: Path | None = None) -> Path:
    """The image of ``shared_mib`` MiB, written once (atomically) and then reused."""
    directory = directory or guests.cache_dir() / "ksm-images"
    path = directory / f"golden-{shared_mib}mib.img"
    if path.exists() and path.stat().st_size == shared_mib * MIB:
        return path
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.part")
    with open(partial, "wb") as f:
        for index in range(shared_mib * MIB // PAGE):
            f.write(page_stamp(index))
    os.replace(partial, path)
    return path


@dataclass(frozen=True)
class QemuProcess:
    pid: int


def qemu_pid(name: str, timeout: float = 30.0) -> int:
    """The QEMU process of libvirt's domain ``name`` (libvirt writes its pid file)."""
    pidfile = Path(f"/run/libvirt/qemu/{name}.pid")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(OSError, ValueError):
            return int(pidfile.read_text().strip())
        time.sleep(0.2)
    raise RuntimeError(f"no pid file {pidfile} for guest {name}")


@dataclass
class GuestWorkload:
    """``workers`` guests, each with ``size_mib`` of content (module doc)."""

    workers: int = 4
    size_mib: int = 1024
    shared_fraction: float = 0.75
    log: Callable[[str], None] = print
    domains: list[Any] = field(default_factory=list)
    processes: list[QemuProcess] = field(default_factory=list)

    @property
    def shared_pages(self) -> int:
        return split_mib(self.size_mib, self.shared_fraction)[0] * MIB // PAGE

    @property
    def achievable_sharing(self) -> int:
        """The designed saving, in ``pages_sharing``: every guest's copy of the image but one."""
        return (self.workers - 1) * self.shared_pages

    @property
    def guest_mib(self) -> int:
        return self.size_mib + GUEST_OVERHEAD_MIB

    @property
    def sharing_cap(self) -> int:
        """The most ``pages_sharing`` these guests could reach: all memory of every guest but
        one. More means someone else's pages are merged."""
        return (self.workers - 1) * self.guest_mib * MIB // PAGE

    def start(self) -> GuestWorkload:
        if self.workers < 2:
            raise ValueError("the guests workload needs at least 2 guests")
        ensure_libvirtd()
        lv = guests._libvirt()
        conn = lv.open(URI)
        try:
            guests.destroy_stale(conn, PREFIX)
            shared, unique = split_mib(self.size_mib, self.shared_fraction)
            image = image_path(shared)
            started = time.monotonic()
            try:
                self._boot(conn, image)
                for domain in self.domains:
                    guests.load_disk(domain, unique, timeout=BOOT_TIMEOUT_S)
            except BaseException:
                self.stop()
                raise
        finally:
            conn.close()
        self.log(f"  {self.workers} guests x {self.guest_mib} MiB booted and loaded "
                 f"({shared} MiB of the image + {unique} MiB of their own each) in "
                 f"{time.monotonic() - started:.1f} s")
        return self

    def _boot(self, conn: Any, image: Path) -> None:
        for i in range(self.workers):
            name = f"{PREFIX}{os.getpid()}-{i}"
            # No balloon statistics: nothing here reads them, and the guests stay as quiet as
            # the process workloads (their meminfo reporter still runs).
            self.domains.append(guests.define_guest(
                conn, name, self.guest_mib, self.guest_mib, stats_period=0, disk=image))
        for domain in self.domains:
            guests.wait_booted(domain, timeout=BOOT_TIMEOUT_S)
        self.processes = [QemuProcess(qemu_pid(d.name())) for d in self.domains]

    def stop(self) -> None:
        guests.destroy_guests(self.domains)
        self.domains, self.processes = [], []

    def __enter__(self) -> GuestWorkload:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

