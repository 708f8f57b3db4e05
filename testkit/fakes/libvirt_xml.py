"""Config files for libvirt's test driver (``test:///<absolute path>``): many domains, no daemon.

``write_node(dir, domains)`` writes a ``<node>`` document with one ``<domain type='test'>`` per
``FakeDomain`` and returns its URI. Opening that URI gives a private, in-process copy: every
``libvirt.open()`` of it starts again from the file (unlike ``test:///default``, which is shared
within a process), so a reconnect resets what earlier calls changed.

What the test driver does on libvirt 9.0 (probed with libvirt-python 9.0.0, Debian 12):

* ``getAllDomainStats(BALLOON | STATE, ...)`` returns every domain with the state group only
  (``state.state``, ``state.reason``): no ``balloon.*`` keys at all. The
  ``..._STATS_ACTIVE``/``_RUNNING`` filters work (``_RUNNING`` drops a suspended domain).
* ``memoryStats()`` with a balloon device: synthetic values derived from the current memory
  (``actual`` = current, ``available`` = current, ``unused`` = ``usable`` = ``rss`` =
  current/2, ``disk_caches`` = current/8, swap/faults 0) and ``last_update`` a constant
  627319920, not a time: a real wall clock makes those stats ~37 years old. With
  ``<memballoon model='none'/>`` or no ``<memballoon>`` element: ``{}``.
* ``info()`` -> ``[state, max KiB, current KiB, vcpus, cpu ns]``.
* ``setMemoryFlags(kib, AFFECT_LIVE)`` updates current memory (and the stats with it); 0 is
  refused ("memory in virDomainSetMemoryFlags must not be zero", VIR_ERR_INVALID_ARG), above
  max too ("invalid argument: cannot set memory higher than max memory", VIR_ERR_INVALID_ARG).
  Unlike QEMU it also succeeds on a domain *without* a balloon device.
* ``setMemoryStatsPeriod(s, AFFECT_LIVE)`` works and shows in the live XML's
  ``<stats period>``; without a balloon device: "internal error: No memory balloon device
  configured, can not set the collection period" (VIR_ERR_INTERNAL_ERROR, as on QEMU).
* On a destroyed (still defined) domain calls fail with VIR_ERR_OPERATION_INVALID "domain is
  not running"; once undefined, VIR_ERR_NO_DOMAIN.
* Domains in the file start running; ``<test:runstate>5</test:runstate>`` (namespace
  ``http://libvirt.org/schemas/domain/test/1.0``) keeps one shut off. ``<metadata>`` is kept
  and served back in ``XMLDesc()`` (KubeVirt's ``<kubevirt xmlns="http://kubevirt.io">``).
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
KUBEVIRT_NS = "http://kubevirt.io"
# The test driver's constant memoryStats()['last_update'] on libvirt 9.0 (see above).
TEST_DRIVER_LAST_UPDATE = 627319920


@dataclass(frozen=True)
class FakeDomain:
    name: str
    max_kib: int = 1024 * 1024
    current_kib: int | None = None  # None: = max_kib
    balloon: str | None = "virtio"  # the <memballoon> model; None: no element at all
    stats_period: int = 10  # 0: no <stats> element
    vmi_uid: str | None = None  # KubeVirt metadata when set
    running: bool = True
    uuid: str | None = None  # None: derived from the name (stable across runs)
    autodeflate: bool = False  # <memballoon autodeflate='on'>
    free_page_reporting: bool = False  # <memballoon freePageReporting='on'>

    @property
    def domain_uuid(self) -> str:
        return self.uuid or str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"fake-domain:{self.name}"))


def _balloon_xml(d: FakeDomain) -> str:
    if d.balloon is None:
        return ""
    with_stats = d.stats_period > 0 and d.balloon != "none"  # as libvirt would show it
    stats = f"<stats period='{d.stats_period}'/>" if with_stats else ""
    deflate = " autodeflate='on'" if d.autodeflate else ""
    reporting = " freePageReporting='on'" if d.free_page_reporting else ""
    return f"<memballoon model={quoteattr(d.balloon)}{deflate}{reporting}>{stats}</memballoon>"


def _metadata_xml(d: FakeDomain) -> str:
    if d.vmi_uid is None:
        return ""
    # As KubeVirt's Go encoder writes it: the children in the default namespace.
    return (f"<metadata><kubevirt xmlns='{KUBEVIRT_NS}'><uid>{escape(d.vmi_uid)}</uid>"
            f"<graceperiod><deletionGracePeriodSeconds>30</deletionGracePeriodSeconds>"
            f"</graceperiod></kubevirt></metadata>")


def domain_xml(d: FakeDomain) -> str:
    current = d.max_kib if d.current_kib is None else d.current_kib
    runstate = "" if d.running else "<test:runstate>5</test:runstate>"
    return f"""  <domain type='test'>
    <name>{escape(d.name)}</name>
    <uuid>{d.domain_uuid}</uuid>
    {_metadata_xml(d)}
    <memory unit='KiB'>{d.max_kib}</memory>
    <currentMemory unit='KiB'>{current}</currentMemory>
    <vcpu>1</vcpu>
    <os><type arch='x86_64'>hvm</type></os>
    <devices>{_balloon_xml(d)}</devices>
    {runstate}
  </domain>
"""


def node_xml(domains: Sequence[FakeDomain]) -> str:
    body = "".join(domain_xml(d) for d in domains)
    return f"<node xmlns:test='{TEST_NS}'>\n{body}</node>\n"


def write_node(directory: Path, domains: Sequence[FakeDomain], name: str = "node.xml") -> str:
    """Write the config and return its URI (the test driver wants an absolute path)."""
    path = (directory / name).resolve()
    path.write_text(node_xml(domains))
    return f"test://{path}"


def kubevirt_fleet(count: int, namespaces: int = 5) -> list[FakeDomain]:
    """``count`` running KubeVirt-style guests ``ns<k>_vm-<i>`` of 1-4 GiB, half ballooned
    down to 3/4, every tenth without a balloon device."""
    fleet = []
    for i in range(count):
        max_kib = (1 + i % 4) * 1024 * 1024
        fleet.append(FakeDomain(
            name=f"ns{i % namespaces}_vm-{i:04d}", max_kib=max_kib,
            current_kib=max_kib * 3 // 4 if i % 2 else max_kib,
            balloon="none" if i % 10 == 9 else "virtio",
            vmi_uid=str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"fake-vmi:{i}"))))
    return fleet
