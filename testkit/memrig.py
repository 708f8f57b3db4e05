"""A memory rig for tests on a real host: push MemAvailable down to a chosen level with memory
nothing can reclaim or merge, and raise real memory pressure (PSI), always bounded and always
given back. Test support only, never in the product.

* **Fill** (:meth:`MemoryRig.fill_to`): child processes hold anonymous memory in 64 MiB chunks.
  Every 4 KiB page is different (a random 1 MiB pattern, and the page's own 8-byte serial at
  its start), so neither KSM nor zswap's same-filled-page path can win any of it back, and
  every page is touched (written) so it is resident at once; ``mlock=True`` pins it as well.
* **Pressure** (:meth:`MemoryRig.thrash`): readers in a memory cgroup limited to a few MiB read
  a file on disk over and over: each read faults pages in, the cgroup reclaims its own page
  cache, and the readers stall on memory (reclaim and refaults), which the kernel counts in the
  host's ``/proc/pressure/memory`` (``some`` and, with nothing else runnable, ``full``)
  without taking host memory at all.

Safety, because other work shares the machine:

* a **floor** (default :data:`DEFAULT_FLOOR`, 1.5 GiB): a filler allocates a chunk only when
  MemAvailable stays above the floor afterwards, and a watchdog thread reads
  ``/proc/meminfo`` every 20 ms and SIGKILLs every child of the rig at once when MemAvailable
  falls below it (``tripped`` says when and why);
* the children **die with the test process**, also when it is killed hard: they are started
  through ``setpriv --pdeathsig KILL`` (``localcluster.processes.dies_with_this_process``);
  the fillers also have ``oom_score_adj`` 1000, so an OOM kill would take them first;
* :class:`MemoryRig` is a context manager: leaving it (or :meth:`close`) kills the children,
  waits for them, and removes the thrashers' cgroup and file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from overcommit.localcluster.processes import dies_with_this_process

MIB = 1 << 20
GIB = 1 << 30
DEFAULT_FLOOR = 3 * GIB // 2
CHUNK = 64 * MIB
WATCHDOG_PERIOD_S = 0.02
# What one reader (a Python interpreter with its file mapped) holds that the cgroup cannot
# reclaim quickly: ~3 MiB anonymous, ~6 MiB of the interpreter's own mapped files, and the
# page tables of the mapping. Its cgroup gets this much per reader beside the page-cache
# budget, or the memory cgroup's OOM killer takes readers (seen: both readers killed within
# 7 s of each other, and the pressure gone with them).
READER_ROOM = 12 * MIB

# A filler: holds anonymous memory in chunks; "+N"/"-N" on stdin adds or frees N chunks,
# answering "ok <chunks held>" (or "floor <chunks held>" when the floor stopped it early).
FILLER = r"""
import mmap, os, sys
from array import array
chunk, floor, lock = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
try:
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")
except OSError:
    pass
if lock:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
pattern = os.urandom(1 << 20)
serial = os.getpid() << 40
chunks = []

def available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0

def add():
    global serial
    m = mmap.mmap(-1, chunk, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for off in range(0, chunk, 1 << 20):
        m[off:off + (1 << 20)] = pattern
    pages = chunk // 4096
    view = memoryview(m).cast("Q")
    view[0::512] = array("Q", range(serial, serial + pages))
    view.release()
    serial += pages
    if lock:
        address = ctypes.addressof(ctypes.c_char.from_buffer(m))
        libc.mlock(ctypes.c_void_p(address), ctypes.c_size_t(chunk))
    chunks.append(m)

for line in sys.stdin:
    word = line.strip()
    if not word:
        continue
    count = int(word)
    status = "ok"
    if count > 0:
        for _ in range(count):
            if available() - chunk < floor:
                status = "floor"
                break
            add()
    else:
        for _ in range(min(-count, len(chunks))):
            chunks.pop().close()
    print(status, len(chunks), flush=True)
"""

# A thrasher: joins a memory cgroup, then reads a file through a mapping, page by page, until
# killed. The cgroup's limit keeps its page cache to a few MiB, so every pass faults again.
THRASHER = r"""
import mmap, os, sys
procs, path = sys.argv[1], sys.argv[2]
for join in procs.split(","):
    with open(join, "w") as f:
        f.write(str(os.getpid()))
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
print("ready", flush=True)
x = 0
while True:
    for off in range(0, size, 4096):
        x ^= m[off]
"""


def meminfo_bytes(field: str) -> int:
    """One ``/proc/meminfo`` figure now (``MemAvailable``, ``MemTotal``, ...), in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/meminfo has no {field}")


def mem_available() -> int:
    """The host's MemAvailable now, in bytes."""
    return meminfo_bytes("MemAvailable")


def resident(pid: int) -> int:
    """Bytes process ``pid`` holds in RAM now (its VmRSS)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


def memory_psi() -> dict[str, float]:
    """``/proc/pressure/memory`` avg10 figures in percent: {"some": .., "full": ..}."""
    out = {}
    for line in Path("/proc/pressure/memory").read_text().splitlines():
        kind, *pairs = line.split()
        out[kind] = float(dict(p.split("=") for p in pairs)["avg10"])
    return out


class RigTripped(RuntimeError):
    """The safety stop fired: every child was killed and its memory freed."""


class _Filler:
    def __init__(self, floor: int, mlock: bool) -> None:
        argv = dies_with_this_process([sys.executable, "-c", FILLER, str(CHUNK), str(floor),
                                       "1" if mlock else "0"])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.chunks = 0

    def ask(self, count: int) -> bool:
        """Add (or free, negative) ``count`` chunks; False when the floor stopped it."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{count}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().split()
        if not answer:
            raise RigTripped("a filler died (killed by the safety stop or the OOM killer)")
        self.chunks = int(answer[1])
        return answer[0] == "ok"


class MemoryRig:
    """Fills host memory and raises memory pressure, within a floor, and frees it all on exit
    (see the module doc)."""

    def __init__(self, floor: int = DEFAULT_FLOOR, workers: int = 2, mlock: bool = False,
                 scratch: str = "/var/tmp") -> None:
        if floor < GIB:
            raise ValueError("the rig's floor must be at least 1 GiB of MemAvailable")
        self.floor = floor
        self.mlock = mlock
        self.scratch = Path(scratch)
        self._workers = workers
        self._fillers: list[_Filler] = []
        self._thrashers: list[subprocess.Popen[str]] = []
        self._cgroup: Path | None = None
        self.unified_cgroup: Path | None = None
        self.readers_lost = 0
        self._file: Path | None = None
        self.tripped: str | None = None
        self.leftovers = clean_leftovers(self.scratch)
        self.lowest = mem_available()  # the least MemAvailable the watchdog saw
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._watchdog = threading.Thread(target=self._watch, name="memrig-watchdog",
                                          daemon=True)
        self._watchdog.start()

    # -- context ---------------------------------------------------------------------------
    def __enter__(self) -> MemoryRig:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # -- filling ---------------------------------------------------------------------------
    @property
    def held(self) -> int:
        """Bytes the fillers hold now."""
        return sum(f.chunks for f in self._fillers) * CHUNK

    def fill_to(self, target: int, tolerance: int = 2 * CHUNK, timeout: float = 120.0) -> int:
        """Hold as much memory as brings MemAvailable to ``target`` (within ``tolerance``),
        growing or freeing; the MemAvailable reached. Never below the floor: a target under
        it is refused, and the floor stops a filler that would cross it."""
        if target < self.floor + 2 * CHUNK:
            raise ValueError(f"target {target >> 20} MiB is too close to the floor "
                             f"{self.floor >> 20} MiB")
        if not self._fillers:
            self._fillers = [_Filler(self.floor, self.mlock) for _ in range(self._workers)]
        deadline = time.monotonic() + timeout
        while True:
            self._check()
            now = mem_available()
            if abs(now - target) <= tolerance or time.monotonic() > deadline:
                return now
            if now > target:  # grow, in parallel, at most 1 GiB per filler per round
                per = max(1, min((now - target) // CHUNK // len(self._fillers), GIB // CHUNK))
                if not self._round(per):
                    return mem_available()  # the floor stopped a filler: this is as low
            elif self.held:
                self._free(max(1, (target - now) // CHUNK))
            else:
                return now  # nothing held and still below the target: not ours to fix

    def _round(self, per: int) -> bool:
        """Every filler adds ``per`` chunks at once (the write() first, then the answers);
        False when the floor stopped one of them."""
        ok = True
        for filler in self._fillers:
            assert filler.proc.stdin is not None
            filler.proc.stdin.write(f"{per}\n")
            filler.proc.stdin.flush()
        for filler in self._fillers:
            assert filler.proc.stdout is not None
            answer = filler.proc.stdout.readline().split()
            if not answer:
                self._check()
                raise RigTripped("a filler died (killed by the safety stop or the OOM killer)")
            filler.chunks = int(answer[1])
            ok = ok and answer[0] == "ok"
        return ok

    def adjust(self, amount: int) -> int:
        """Hold ``amount`` bytes more (free as much, negative), in whole chunks over the
        fillers, whatever MemAvailable does meanwhile (``fill_to`` aims at a MemAvailable
        instead); the floor still stops a filler. The change in bytes held."""
        self._check()
        if not self._fillers:
            self._fillers = [_Filler(self.floor, self.mlock) for _ in range(self._workers)]
        before, count = self.held, round(amount / CHUNK)
        if count > 0:
            per, extra = divmod(count, len(self._fillers))
            for i, filler in enumerate(self._fillers):
                if per + (i < extra):
                    filler.ask(per + (i < extra))
        else:
            self._free(-count)
        self._check()
        return self.held - before

    def _free(self, count: int) -> None:
        """Free up to ``count`` chunks, from the fuller fillers first."""
        for filler in sorted(self._fillers, key=lambda f: -f.chunks):
            give = min(count, filler.chunks)
            if give:
                filler.ask(-give)
                count -= give

    def release(self) -> None:
        """Free everything the fillers hold (they stay, empty)."""
        for filler in self._fillers:
            if filler.chunks and filler.proc.poll() is None:
                filler.ask(-filler.chunks)

    # -- pressure --------------------------------------------------------------------------
    @contextlib.contextmanager
    def thrash(self, workers: int = 2, limit: int = 16 * MIB, file_size: int = 256 * MIB,
               uuid: str | None = None) -> Iterator[None]:
        """Real memory pressure (PSI) while the block runs: ``workers`` readers of a
        ``file_size`` file whose page cache is held to ``limit`` bytes (a memory cgroup of
        that plus :data:`READER_ROOM` per reader; see the module doc). ``readers_lost`` counts
        readers that died before the block ended (an OOM kill would end the pressure). On a
        host with the hybrid layout they also join a cgroup of their own in the unified
        hierarchy (``unified_cgroup``), whose memory.pressure then shows their stalls; with
        ``uuid`` their command lines end in ``-uuid <uuid>``, as a QEMU guest's does."""
        name = f"memrig-{os.getpid()}"
        self._cgroup = _memory_cgroup(name, limit + workers * READER_ROOM)
        self._file = self.scratch / f"{name}.bin"
        _cold_file(self._file, file_size)
        joins = [self._cgroup / "cgroup.procs"]
        if self._cgroup.parent.name == "memory" and (CGROUP / "unified").is_dir():
            self.unified_cgroup = CGROUP / "unified" / name
            self.unified_cgroup.mkdir(exist_ok=True)
            joins.append(self.unified_cgroup / "cgroup.procs")
        tail = ["-uuid", uuid] if uuid else []
        try:
            for _ in range(workers):
                argv = dies_with_this_process([sys.executable, "-c", THRASHER,
                                               ",".join(str(j) for j in joins),
                                               str(self._file), *tail])
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
                self._thrashers.append(proc)
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    raise RuntimeError("a thrasher could not start (memory cgroup, file?)")
            yield
        finally:
            self._stop_thrashers()

    def _stop_thrashers(self) -> None:
        self.readers_lost += sum(proc.poll() is not None for proc in self._thrashers)
        for proc in self._thrashers:
            _kill(proc)
        self._thrashers = []
        if self._cgroup is not None:
            _remove_cgroup(self._cgroup)
            self._cgroup = None
        if self.unified_cgroup is not None:
            _remove_cgroup(self.unified_cgroup)
            self.unified_cgroup = None
        if self._file is not None:
            self._file.unlink(missing_ok=True)
            self._file = None

    # -- safety ----------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.wait(WATCHDOG_PERIOD_S):
            try:
                now = mem_available()
            except (OSError, RuntimeError):
                continue
            self.lowest = min(self.lowest, now)
            if now < self.floor and self.tripped is None:
                self.tripped = (f"MemAvailable {now >> 20} MiB fell below the floor "
                                f"{self.floor >> 20} MiB: every child killed")
                self._kill_all()

    def _kill_all(self) -> None:
        """SIGKILL every child at once, then reap them (a zombie's memory is already free,
        but it would still show in /proc)."""
        with self._lock:
            children = [f.proc for f in self._fillers] + self._thrashers
            for proc in children:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
            for proc in children:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)

    def _check(self) -> None:
        if self.tripped is not None:
            raise RigTripped(self.tripped)

    def close(self) -> None:
        """Kill every child at once (its memory goes with it), wait, clean up."""
        self._kill_all()
        for filler in self._fillers:
            _kill(filler.proc)
        self._fillers = []
        self._stop_thrashers()
        self._stop.set()
        self._watchdog.join(timeout=5)

    @property
    def children(self) -> list[int]:
        return [f.proc.pid for f in self._fillers] + [p.pid for p in self._thrashers]


def _kill(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


CGROUP = Path("/sys/fs/cgroup")


def _memory_cgroup(name: str, limit: int) -> Path:
    """A memory cgroup of ``limit`` bytes: cgroup v2 where the memory controller is on the
    unified hierarchy, else cgroup v1's memory hierarchy (this development machine's)."""
    controllers = CGROUP / "cgroup.controllers"
    if controllers.exists() and "memory" in controllers.read_text().split():
        path, limit_file = CGROUP / name, "memory.max"
    else:
        path, limit_file = CGROUP / "memory" / name, "memory.limit_in_bytes"
    path.mkdir(exist_ok=True)
    (path / limit_file).write_text(str(limit))
    return path


def clean_leftovers(scratch: Path = Path("/var/tmp")) -> list[str]:
    """Remove what rigs of processes that no longer exist left behind (a test process killed
    hard cannot clean up: its children die with it, its cgroup and file stay); what went."""
    gone = []
    for path in [*scratch.glob("memrig-*.bin"), *CGROUP.glob("memrig-*"),
                 *(CGROUP / "memory").glob("memrig-*"), *(CGROUP / "unified").glob("memrig-*")]:
        pid = path.name.removeprefix("memrig-").removesuffix(".bin")
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        with contextlib.suppress(OSError):
            if path.is_dir():
                _remove_cgroup(path)
            else:
                path.unlink()
            gone.append(str(path))
    return gone


def _remove_cgroup(path: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # EBUSY while the killed readers are still leaving
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _cold_file(path: Path, size: int) -> None:
    """A file of ``size`` random bytes on disk, none of it in the page cache (a thrasher's
    reads must fault it in, charged to its own cgroup)."""
    block = os.urandom(MIB)
    with path.open("wb") as f:
        for _ in range(size // MIB):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
