"""What the balloon side needs from a libvirt domain's XML. Pure: text in, facts out.

The live XML (``XMLDesc(0)``) of a running domain names its balloon device
(``<memballoon model='virtio'>``, or ``model='none'`` for none), the statistics period
(``<stats period='N'/>``, absent = 0 = off), whether the balloon deflates on OOM
(``<memballoon autodeflate='on'>``: QEMU's deflate-on-oom, the guest kernel takes pages back
from the balloon instead of OOM-killing a process), whether the guest reports its free pages
(``<memballoon freePageReporting='on'>``, KubeVirt's default: the host discards what the guest
frees, so inflating the balloon over free memory gains the host nothing more) and, for
KubeVirt guests, the VMI's uid in the metadata KubeVirt writes: ``<metadata><kubevirt xmlns="http://kubevirt.io"><uid>...``.

It also says which guests are never ballooned (``DomainFacts.exclusions``):

* VFIO host devices (``<hostdev>``, ``<interface type='hostdev'>``: GPUs, SR-IOV functions):
  the device may DMA into any guest page, so QEMU pins all guest memory and disables balloon
  discards; an inflated balloon returns nothing to the host;
* hugepage-backed memory (``<memoryBacking><hugepages/>``): the pages are reserved for the
  guest; ballooning frees no host memory (KubeVirt turns free page reporting off there too);
* dedicated CPUs (``<cputune><vcpupin>``, what KubeVirt's ``dedicatedCpuPlacement`` makes) and
  realtime vCPUs (``<vcpusched scheduler='fifo'|'rr'>``): latency-sensitive guests whose
  owners asked for predictability, not density (KubeVirt also turns free page reporting off).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

KUBEVIRT_NS = "http://kubevirt.io"
# KubeVirt's own rule (virtwrap/util SplitVMINamespaceKey): a name without "_" is in "default".
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class DomainFacts:
    """The parts of one domain's XML that do not change while it runs (the period aside)."""

    balloon_model: str | None  # "virtio", "virtio-transitional", ..., "none"; None: no element
    stats_period: int  # seconds; 0 = the guest driver is not asked for statistics
    kubevirt: bool  # KubeVirt metadata present: the domain is a VMI's
    vmi_uid: str | None
    exclusions: tuple[str, ...] = ()  # why the guest is never ballooned (see the module doc)
    autodeflate: bool = False  # <memballoon autodeflate='on'>: deflates on OOM
    free_page_reporting: bool = False  # <memballoon freePageReporting='on'>

    @property
    def has_balloon(self) -> bool:
        # No <memballoon> element at all means no device too: live XML lists every device
        # (QEMU's driver always shows one; the test driver shows what its config had).
        return self.balloon_model not in (None, "none")


class DomainXMLError(ValueError):
    """The text is not a domain XML document."""


def parse_domain_xml(text: str) -> DomainFacts:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise DomainXMLError(f"unparsable domain XML: {e}") from e
    if root.tag != "domain":
        raise DomainXMLError(f"not a domain XML document (root <{root.tag}>)")
    balloon = root.find("./devices/memballoon")
    kubevirt = root.find(f"./metadata/{{{KUBEVIRT_NS}}}kubevirt")
    return DomainFacts(
        balloon_model=None if balloon is None else balloon.get("model", "virtio"),
        stats_period=_stats_period(balloon),
        kubevirt=kubevirt is not None,
        vmi_uid=None if kubevirt is None else _child_text(kubevirt, "uid"),
        exclusions=exclusions(root),
        autodeflate=balloon is not None and balloon.get("autodeflate") == "on",
        free_page_reporting=balloon is not None and balloon.get("freePageReporting") == "on",
    )


HOSTDEV = ("VFIO host device (<hostdev>): QEMU pins all guest memory, a balloon returns "
           "nothing")
HUGEPAGES = ("hugepage-backed memory (<memoryBacking><hugepages/>): ballooning frees no host "
             "memory")
DEDICATED = "dedicated CPUs (<cputune><vcpupin>): a latency-sensitive guest"
REALTIME = "realtime vCPUs (<vcpusched scheduler='fifo'|'rr'>): a latency-sensitive guest"


def exclusions(root: ET.Element) -> tuple[str, ...]:
    """Why a domain is never ballooned, from its XML (empty: nothing in the way)."""
    found = []
    if root.find("./devices/hostdev") is not None or any(
            iface.get("type") == "hostdev" for iface in root.findall("./devices/interface")):
        found.append(HOSTDEV)
    if root.find("./memoryBacking/hugepages") is not None:
        found.append(HUGEPAGES)
    if root.find("./cputune/vcpupin") is not None:
        found.append(DEDICATED)
    if any(sched.get("scheduler") in ("fifo", "rr")
           for sched in root.findall("./cputune/vcpusched")):
        found.append(REALTIME)
    return tuple(found)


def _stats_period(balloon: ET.Element | None) -> int:
    stats = None if balloon is None else balloon.find("stats")
    try:
        return int(stats.get("period", "0")) if stats is not None else 0
    except ValueError:
        return 0


def _child_text(parent: ET.Element, local_name: str) -> str | None:
    # Match by local name: Go's encoder writes the children in KubeVirt's default namespace,
    # but metadata set by hand (or a future libvirt) may prefix the root only.
    for child in parent:
        if child.tag.rsplit("}", 1)[-1] == local_name:
            return (child.text or "").strip() or None
    return None


def split_vmi_name(domain: str) -> tuple[str, str]:
    """KubeVirt's ``<namespace>_<name>`` domain name as (namespace, name).

    Namespaces are DNS labels (no "_"), so the first "_" separates them; names may hold more.
    """
    namespace, sep, name = domain.partition("_")
    return (namespace, name) if sep else (DEFAULT_NAMESPACE, domain)
