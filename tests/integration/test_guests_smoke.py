"""Real guests under the real libvirtd (qemu:///system, TCG): boot, balloon, eat, no driver.

Proves the test infrastructure the balloon feature will be tested with
(testkit.libvirtd + guests): libvirt's balloon statistics and the guest's own
/proc/meminfo agree, a live balloon change reaches the guest, and guest-side memory use shows in
libvirt's ``usable``. Needs root; missing parts FAIL with a message naming
scripts/install-libvirt (a skipped suite would look green while testing nothing).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import re
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from testkit import guests, libvirtd
from testkit.waiting import wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

MAX_MIB = 512
# The balloon moves in 256-page chunks (1 MiB with 4 KiB pages): the guest's MemTotal lands
# within that of the target.
GRANULARITY_KIB = 256 * 4
PREFIX = "oc-smoke-"


def fail(message: str) -> None:
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="module")
def lv() -> ModuleType:
    try:
        # imported here: a missing binding must fail the test, not collection
        libvirt = importlib.import_module("libvirt")
    except ImportError:
        fail(f"libvirt-python is not installed in this virtualenv: {libvirtd.INSTALL_HINT}")
    return libvirt


@pytest.fixture(scope="module")
def conn(lv: ModuleType) -> Iterator[Any]:
    try:
        libvirtd.ensure_libvirtd()
        guests.guest_image()  # builds once, or fails here with the install hint
    except (libvirtd.LibvirtdError, guests.GuestError) as e:
        fail(str(e))
    # The default handler prints every libvirt error to stderr, expected ones included.
    lv.registerErrorHandler(lambda _ctx, _err: None, None)
    connection = lv.open(libvirtd.URI)
    _reap_stale(connection)
    yield connection
    connection.close()


def _reap_stale(connection: Any) -> None:
    """Destroy smoke-test guests left by an earlier run that was killed before its cleanup."""
    for dom in connection.listAllDomains(0):
        m = re.fullmatch(rf"{PREFIX}(\d+)-\w+", dom.name())
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            guests.destroy_guest(dom)


@contextlib.contextmanager
def started(connection: Any, suffix: str, **kwargs: Any) -> Iterator[Any]:
    # share_pages=False: these guests must not feed the host's KSM, which another job may be
    # measuring right now (and the smoke test does not need merging).
    dom = guests.define_guest(connection, f"{PREFIX}{os.getpid()}-{suffix}", share_pages=False,
                              **kwargs)
    try:
        yield dom
    finally:
        guests.destroy_guest(dom)


def wait(condition: Callable[[], object], what: str, timeout: float = 60.0) -> Any:
    return wait_for(condition, timeout, what, interval=0.2)


def stats_with(dom: Any, *keys: str) -> Callable[[], dict[str, int] | None]:
    def probe() -> dict[str, int] | None:
        stats: dict[str, int] = dom.memoryStats()
        return stats if all(k in stats for k in keys) else None
    return probe


@pytest.fixture(scope="module")
def pair(conn: Any) -> Iterator[tuple[Any, Any]]:
    """Two 512 MiB guests with a balloon and its driver, booted in parallel."""
    start = time.monotonic()
    with started(conn, "a", memory_mib=MAX_MIB, max_memory_mib=MAX_MIB) as a, \
            started(conn, "b", memory_mib=MAX_MIB, max_memory_mib=MAX_MIB) as b:
        try:
            for dom in (a, b):
                guests.wait_booted(dom, timeout=180)
        except guests.GuestError as e:
            fail(str(e))
        print(f"\ntwo guests defined and booted in parallel in {time.monotonic() - start:.1f}s")
        yield a, b


@pytest.fixture
def balloon_at_max(pair: tuple[Any, Any], lv: ModuleType) -> Iterator[None]:
    yield
    for dom in pair:  # whatever a test did to the balloon, the next one starts from max
        dom.setMemoryFlags(MAX_MIB * 1024, lv.VIR_DOMAIN_AFFECT_LIVE)


def test_balloon_stats_match_the_guests_meminfo(pair: tuple[Any, Any]) -> None:
    for dom in pair:
        stats = wait(stats_with(dom, "usable", "available"), f"{dom.name()} balloon stats")
        meminfo = guests.guest_meminfo(dom)
        assert stats["actual"] == MAX_MIB * 1024
        assert stats["available"] == meminfo["MemTotal"]
        # usable is MemAvailable sampled at another moment: close, not equal.
        assert abs(stats["usable"] - meminfo["MemAvailable"]) < 16 * 1024


@pytest.mark.usefixtures("balloon_at_max")
def test_live_balloon_shrinks_the_guests_memtotal(pair: tuple[Any, Any],
                                                  lv: ModuleType) -> None:
    a, _ = pair
    full = guests.guest_meminfo(a)["MemTotal"]
    started_at = time.monotonic()
    a.setMemoryFlags(256 * 1024, lv.VIR_DOMAIN_AFFECT_LIVE)
    shrunk = guests.wait_meminfo(
        a, lambda m: m["MemTotal"] <= full - 256 * 1024 + GRANULARITY_KIB, timeout=60,
        what="MemTotal to drop by 256 MiB")
    print(f"\nballoon to 256 MiB: guest MemTotal {full} -> {shrunk['MemTotal']} kB "
          f"after {time.monotonic() - started_at:.1f}s")
    assert shrunk["MemTotal"] >= full - 256 * 1024 - GRANULARITY_KIB
    wait(lambda: a.memoryStats()["actual"] == 256 * 1024,
         "libvirt's actual = 256 MiB")
    wait(lambda: a.memoryStats().get("available") == shrunk["MemTotal"],
         "libvirt's available to follow MemTotal")

    a.setMemoryFlags(MAX_MIB * 1024, lv.VIR_DOMAIN_AFFECT_LIVE)
    guests.wait_meminfo(a, lambda m: m["MemTotal"] >= full - GRANULARITY_KIB, timeout=60,
                        what="MemTotal back to its full size")


def test_eating_lowers_memavailable_and_usable(pair: tuple[Any, Any]) -> None:
    _, b = pair
    before = guests.guest_meminfo(b)["MemAvailable"]
    usable_before = wait(stats_with(b, "usable"), "usable")["usable"]
    started_at = time.monotonic()
    guests.eat(b, 200)
    print(f"\nguest ate 200 MiB in {time.monotonic() - started_at:.1f}s")
    try:
        eaten = guests.wait_meminfo(b, lambda m: m["MemAvailable"] <= before - 190 * 1024,
                                    what="MemAvailable to fall by ~200 MiB")
        assert eaten["MemAvailable"] >= before - 215 * 1024, "fell by far more than was eaten"
        wait(lambda: b.memoryStats()["usable"] <= usable_before - 190 * 1024,
             "libvirt's usable to fall by ~200 MiB")
    finally:
        guests.stop_eating(b)
    guests.wait_meminfo(b, lambda m: m["MemAvailable"] >= before - 10 * 1024,
                        what="MemAvailable to recover after stop")
    wait(lambda: b.memoryStats()["usable"] >= usable_before - 10 * 1024,
         "libvirt's usable to recover")


def test_eating_past_the_guests_memory_shows_oom_kills(pair: tuple[Any, Any]) -> None:
    _, b = pair
    before = guests.guest_meminfo(b)["MemAvailable"]
    kills = len(guests.oom_kills(b))
    # The OOM killer may kill chunks that were already full, so eat() can even succeed.
    with contextlib.suppress(guests.GuestError):
        guests.eat(b, 600)
    try:
        assert len(guests.oom_kills(b)) > kills, "no 'Out of memory: Killed process' on the console"
    finally:
        guests.stop_eating(b)
    guests.wait_meminfo(b, lambda m: m["MemAvailable"] >= before - 10 * 1024,
                        what="MemAvailable to recover after stop")


def test_guest_without_balloon_driver(conn: Any, lv: ModuleType) -> None:
    """Device present, driver not loaded: no guest statistics, and a live balloon change is
    accepted (returns 0) but never happens. Recorded behaviour of libvirt 9.0 / QEMU 7.2."""
    start = time.monotonic()
    with started(conn, "nodriver", balloon_driver=False) as dom:
        guests.wait_booted(dom, timeout=120)
        print(f"\none guest defined and booted alone in {time.monotonic() - start:.1f}s")
        _, log = guests.guest_run(dom, "ls /sys/bus/virtio/drivers")
        assert "virtio_balloon" not in log
        time.sleep(3 * 2)  # three stats periods: a driver would have answered by now
        stats = dom.memoryStats()
        assert "usable" not in stats and "available" not in stats, stats
        assert stats["last_update"] == 0
        full = guests.guest_meminfo(dom)["MemTotal"]

        assert dom.setMemoryFlags(256 * 1024, lv.VIR_DOMAIN_AFFECT_LIVE) == 0
        time.sleep(3 * 2)  # three meminfo periods
        assert guests.guest_meminfo(dom)["MemTotal"] == full
        assert dom.info()[2] == MAX_MIB * 1024  # never inflated


def test_domain_without_balloon_device_rejects_a_live_change(conn: Any, lv: ModuleType) -> None:
    with started(conn, "nodevice", with_balloon=False) as dom:
        assert "usable" not in dom.memoryStats()
        with pytest.raises(lv.libvirtError) as e:
            dom.setMemoryFlags(256 * 1024, lv.VIR_DOMAIN_AFFECT_LIVE)
        assert e.value.get_error_code() == lv.VIR_ERR_OPERATION_INVALID
        assert "without the balloon device" in str(e.value)


def test_a_guest_loads_its_read_only_disk_into_memory(conn: Any, tmp_path: Any) -> None:
    """The KSM benchmark's guests workload (bench.ksm_guests): the image attached read-only
    arrives whole in the guest's memory, beside random data of its own."""
    from bench.ksm_guests import image_path

    image = image_path(16, tmp_path)
    with started(conn, "disk", memory_mib=256, max_memory_mib=256, disk=image) as dom:
        guests.wait_booted(dom, timeout=180)
        before = guests.guest_meminfo(dom)["Shmem"]
        guests.load_disk(dom, unique_mib=4)
        rc, out = guests.guest_run(dom, "md5sum /mnt/disk/image; wc -c < /mnt/disk/unique")
        assert rc == 0, out
        expected = hashlib.md5(image.read_bytes()).hexdigest()
        assert expected in out, f"the guest's copy differs from the image: {out!r}"
        assert str(4 << 20) in out.split(), out
        # Resident: the tmpfs holds both (Shmem grows by 20 MiB once meminfo is reported again).
        wait(lambda: guests.guest_meminfo(dom)["Shmem"] >= before + (20 << 10) * 0.95 or None,
             "the guest's Shmem to grow by the 20 MiB loaded")
