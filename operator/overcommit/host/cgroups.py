"""A guest's own memory pressure: the cgroup v2 ``memory.pressure`` of its QEMU process.

Read-only, like the host's PSI source, and with the same counters (``some_avg10`` in hundredths
of a percent, ...). On a KubeVirt node QEMU runs in the guest's virt-launcher pod, so its cgroup
is the pod's compute container; under plain libvirt it is the ``machine.slice`` scope libvirt
made for the domain. Either way, a QEMU process stalled on memory (its cgroup at its limit, its
pages being reclaimed or read back from swap) shows there before the guest's own balloon
statistics do.

* The QEMU process of a guest is the one whose command line names the domain's UUID
  (``-uuid <uuid>``, as libvirt starts every QEMU); one scan of ``/proc`` maps every running
  QEMU's UUID to its pid, and is repeated only when a UUID is missing or its pid went away.
* Its cgroup is the ``0::<path>`` line of ``/proc/<pid>/cgroup`` (the unified hierarchy).
* The unified hierarchy is mounted at ``/sys/fs/cgroup`` (cgroup v2) or, on a host with the
  hybrid layout, at ``/sys/fs/cgroup/unified``; a pure cgroup v1 host has neither and every
  guest's pressure is None (unknown, so never "pressured" on this signal).

Paths are relative to the host root (``HostFS``), so tests build a fake tree.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable

from overcommit.host._sysfs import read_text
from overcommit.host.base import HostFS
from overcommit.host.pressure import parse_psi

UNIFIED_MOUNTS = ("sys/fs/cgroup", "sys/fs/cgroup/unified")
# A guest whose QEMU process was not found (a remote endpoint's, or a process this /proc does
# not show) is looked for again only every this many calls: a scan reads every process's
# command line.
RESCAN_EVERY = 6


def qemu_uuid(cmdline: bytes) -> str | None:
    """The ``-uuid`` argument of a NUL-separated command line, lower case; None without."""
    args = cmdline.split(b"\0")
    for flag, value in itertools.pairwise(args):
        if flag == b"-uuid" and value:
            return value.decode("ascii", "replace").lower()
    return None


def unified_path(proc_cgroup: str) -> str | None:
    """The unified-hierarchy path (``0::/machine.slice/...``) in ``/proc/<pid>/cgroup``."""
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "" and path:
            return path
    return None


class GuestCgroups:
    """``pressure(uuids)``: each guest's cgroup memory PSI, by domain UUID."""

    def __init__(self, fs: HostFS) -> None:
        self.fs = fs
        self._pids: dict[str, int] = {}
        self._mount: str | None = None
        self._calls_since_scan = 0
        self._scanned = False

    def mount(self) -> str | None:
        """Where the unified hierarchy is, under the host root; None on a cgroup v1 host."""
        if self._mount is None:
            self._mount = next((m for m in UNIFIED_MOUNTS
                                if self.fs.exists(f"{m}/cgroup.controllers")), "")
        return self._mount or None

    def pressure(self, uuids: Iterable[str]) -> dict[str, dict[str, int]]:
        """The memory.pressure counters of each guest found (UUID -> counters); guests whose
        process or cgroup file is not found are left out."""
        mount = self.mount()
        if mount is None:
            return {}
        wanted = [u.lower() for u in uuids]
        self._calls_since_scan += 1
        gone = any(u in self._pids and not self._alive(u) for u in wanted)
        missing = any(u not in self._pids for u in wanted)
        if gone or (missing and self._calls_since_scan >= RESCAN_EVERY) \
                or (missing and not self._scanned):
            self._pids, self._calls_since_scan, self._scanned = self._scan(), 0, True
        out = {}
        for uuid in wanted:
            pid = self._pids.get(uuid)
            cgroup = None if pid is None else read_text(self.fs, f"proc/{pid}/cgroup")
            path = None if cgroup is None else unified_path(cgroup)
            if path is None:
                continue
            text = read_text(self.fs, f"{mount}/{path.strip('/')}/memory.pressure"
                             if path.strip("/") else f"{mount}/memory.pressure")
            if text is not None:
                out[uuid] = parse_psi(text)
        return out

    def _cmdline(self, pid: int | str) -> bytes:
        with contextlib.suppress(OSError):
            return self.fs.path(f"proc/{pid}/cmdline").read_bytes()
        return b""

    def _alive(self, uuid: str) -> bool:
        return qemu_uuid(self._cmdline(self._pids[uuid])) == uuid

    def _scan(self) -> dict[str, int]:
        """Every process with a ``-uuid`` on its command line (QEMU), by that UUID."""
        found: dict[str, int] = {}
        for entry in self.fs.listdir("proc"):
            if entry.isdigit():
                uuid = qemu_uuid(self._cmdline(entry))
                if uuid is not None:
                    found.setdefault(uuid, int(entry))
        return found
