"""The guest half of a cycle: libvirt endpoints -> observations -> balloon plan -> targets.

Kept apart from the kernel half so a libvirt problem (libvirtd down, a launcher socket gone, a
guest destroyed between observe and act) only ever fails the guests it concerns: the engine's
KSM/zswap/swap work never waits on or fails with it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from overcommit.api.policy import BalloonMode, PolicySpec
from overcommit.host.base import HostFS
from overcommit.host.cgroups import GuestCgroups
from overcommit.planning.ladder import Ladder
from overcommit.planning.levers.balloon import BalloonLever
from overcommit.planning.levers.base import LeverInput
from overcommit.planning.observation import Observation
from overcommit.virt.model import BalloonTarget, GuestDecision, GuestObservation

if TYPE_CHECKING:
    from overcommit.virt.libvirt_source import LibvirtEndpoint

log = logging.getLogger("overcommit.guests")

GuestKey = str  # "<uri>\t<domain>": stable across restarts, stored in the state file


def guest_key(endpoint: str, domain: str) -> GuestKey:
    return f"{endpoint}\t{domain}"


def endpoint_of(key: GuestKey) -> str:
    return key.split("\t", 1)[0]


def split_key(key: GuestKey) -> tuple[str, str]:
    """(endpoint, domain) of a stored key, as ``GuestObservation.key`` has them."""
    endpoint, _, domain = key.partition("\t")
    return endpoint, domain


@dataclass(frozen=True)
class VirtSettings:
    """Where the agent finds guests."""

    uris: tuple[str, ...] = ()  # explicit libvirt URIs (plain hosts, tests)
    # With no explicit URIs, use qemu:///system when its socket exists.
    discover_system: bool = True
    # KubeVirt: the host's /var/lib/kubelet/pods mounted at a short path (e.g. /pods).
    pods_dir: str | None = None
    link_dir: str = "/run/memory-overcommit/sockets"
    # The system daemon's sockets are looked for under the host root (a container mounts the
    # host elsewhere; a test's temporary host root has none, so it never reaches a real daemon).
    host_root: str = "/"


@dataclass
class GuestResult:
    """What the guest half saw and did in one cycle."""

    guests: list[GuestObservation] = field(default_factory=list)
    decisions: list[GuestDecision] = field(default_factory=list)
    planned: list[BalloonTarget] = field(default_factory=list)
    applied: list[BalloonTarget] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # per guest or per endpoint
    endpoints_down: list[str] = field(default_factory=list)  # "<uri>: <why>", for people
    down_uris: set[str] = field(default_factory=set)  # the same endpoints, for code
    # Guests the policy's vmSelector picks: only they get the policy's statistics period.
    selected: set[tuple[str, str]] = field(default_factory=set)
    # Whether guest problems matter: the policy in force balloons, or guests still hold a
    # balloon size or statistics period of ours to give back. Otherwise an unreachable
    # endpoint is only reported (endpointsDown), not a problem of the node.
    needed: bool = True

    @property
    def trouble(self) -> list[str]:
        """Guest errors, and unreachable endpoints when they matter (``needed``)."""
        return self.errors + self.endpoints_down if self.needed else list(self.errors)

    def note_down(self, uri: str, why: str | None) -> None:
        self.endpoints_down.append(f"{uri}: {why}")
        self.down_uris.add(uri)

    @property
    def ballooned_bytes(self) -> int:
        return sum(max(0, g.max_kib - g.current_kib) * 1024 for g in self.guests
                   if g.has_balloon)


class GuestManager:
    def __init__(self, settings: VirtSettings,
                 endpoint_factory: Callable[[str], LibvirtEndpoint] | None = None) -> None:
        self.settings = settings
        # Tests inject a factory (e.g. a fixed wall clock for libvirt's test driver).
        self._factory = endpoint_factory
        self._endpoints: dict[str, LibvirtEndpoint] = {}
        self.lever = BalloonLever()
        self.memory: object | None = None  # what the balloon lever remembered
        # Each guest's own memory pressure (its QEMU process's cgroup v2 memory.pressure),
        # read under the same host root as the system daemon's sockets.
        self.cgroups = GuestCgroups(HostFS(settings.host_root))

    def observe(self, now: float,
                vmis: Mapping[tuple[str, str], Mapping[str, Any]] | None = None) -> GuestResult:
        """Every guest on every endpoint; ``vmis`` ((namespace, name) -> VMI object, from the
        API) adds KubeVirt labels, annotations and memory requests."""
        from overcommit.virt.endpoints import discover_endpoints

        report = GuestResult()
        found = discover_endpoints(self.settings.uris, self.settings.pods_dir,
                                   link_dir=self.settings.link_dir,
                                   host_root=self.settings.host_root,
                                   discover_system=self.settings.discover_system)
        if not found:
            self._forget_vanished(set())
            return report
        # Only now: libvirt-python with libvirt and libxml2 costs ~12 MiB of resident memory,
        # which a node without guests (or without libvirt) should not pay.
        try:
            from overcommit.virt.libvirt_source import LibvirtEndpoint
        except ImportError as exc:  # libvirt-python missing: guests unseen, nothing else lost
            for endpoint in found:  # unusable like a down endpoint, and as (un)important
                report.note_down(endpoint.uri, f"libvirt-python is not installed ({exc}); "
                                 "guests are not managed")
            return report
        for endpoint in found:
            if endpoint.problem:
                report.note_down(endpoint.uri, endpoint.problem)
                continue
            client = self._endpoints.get(endpoint.uri)
            if client is None:
                client = (self._factory or LibvirtEndpoint)(endpoint.uri)
                self._endpoints[endpoint.uri] = client
            reading = client.observe(now)
            if not reading.ok:
                report.note_down(endpoint.uri, reading.error)
                continue
            report.guests.extend(reading.guests)
        self._forget_vanished({e.uri for e in found})
        if vmis:
            from overcommit.virt.kubevirt import enrich_guests

            report.guests = enrich_guests(report.guests, vmis)
        return report

    def _forget_vanished(self, live: set[str]) -> None:
        for uri in [u for u in self._endpoints if u not in live]:
            self._endpoints.pop(uri).close()

    def plan(self, report: GuestResult, spec: PolicySpec | None, host: Observation,
             touched: Sequence[GuestKey], restore_on_release: bool,
             ladder: Ladder | None = None) -> None:
        """Balloon targets for this cycle: the policy's, or the release of guests we touched;
        ``ladder`` is the node's reclamation ladder this cycle (None: judged afresh)."""
        balloon = spec.balloon if spec is not None else None
        if balloon is not None and balloon.mode is BalloonMode.AUTO:
            self._add_cgroup_pressure(report)
        plan = self.lever.plan(LeverInput(
            spec, host, self.memory, guests=report.guests,
            touched=frozenset(split_key(key) for key in touched),
            restore_on_release=restore_on_release, ladder=ladder))
        self.memory = plan.memory
        report.selected = set(plan.selected)
        report.decisions = list(plan.decisions)
        report.planned = list(plan.targets)

    def _add_cgroup_pressure(self, report: GuestResult) -> None:
        """Each guest's cgroup memory PSI (Auto counts a stalled cgroup as pressure); only
        where the node has the unified hierarchy and the guest's QEMU process is found."""
        running = [g for g in report.guests if g.problem is None and _local(g.endpoint)]
        if not running:
            return
        try:
            pressure = self.cgroups.pressure(g.uuid for g in running)
        except OSError as exc:  # /proc or the cgroup tree unreadable: the signal is unknown
            log.info("guest cgroup pressure unavailable: %s", exc)
            return
        local = {id(g) for g in running}
        if pressure:
            report.guests = [dataclasses.replace(g, cgroup_pressure=pressure.get(g.uuid.lower()))
                             if id(g) in local else g for g in report.guests]

    def apply(self, report: GuestResult, stats_period: int | None) -> None:
        """Set every planned target; a failure fails only its guest."""
        seen = {(g.endpoint, g.domain) for g in report.guests}
        if stats_period:
            for guest in report.guests:
                if guest.has_balloon and guest.problem is None \
                        and (guest.endpoint, guest.domain) in report.selected:
                    self._stats_period(guest, stats_period)
        for target in report.planned:
            client = self._endpoints.get(target.endpoint)
            if client is None or (target.endpoint, target.domain) not in seen:
                report.errors.append(f"{target.domain}: its endpoint vanished before the "
                                     "balloon could be set")
                continue
            error = client.set_target(target.domain, target.to_kib)
            if error:
                report.errors.append(error)
            else:
                report.applied.append(target)

    def restore_stats_periods(self, report: GuestResult,
                              periods: Mapping[GuestKey, int]) -> dict[GuestKey, int]:
        """Put each guest's own statistics period back; the ones still to do (their endpoint
        is down, or libvirt refused). A guest gone for good has nothing left to restore."""
        live = {guest_key(g.endpoint, g.domain): g for g in report.guests}
        left: dict[GuestKey, int] = {}
        for key, seconds in periods.items():
            guest = live.get(key)
            if guest is None:
                if endpoint_of(key) in report.down_uris:
                    left[key] = seconds
                continue
            client = self._endpoints.get(guest.endpoint)
            error = client.ensure_stats_period(guest.domain, seconds) if client else \
                f"{guest.domain}: its endpoint vanished"
            if error:
                report.errors.append(f"restoring the statistics period: {error}")
                left[key] = seconds
        return left

    def _stats_period(self, guest: GuestObservation, seconds: int) -> None:
        # Every cycle, not only when the observed (cached) period differs: someone may have
        # changed it behind our back, and ensure_stats_period reads the live value.
        client = self._endpoints.get(guest.endpoint)
        if client is not None:
            error = client.ensure_stats_period(guest.domain, seconds)
            if error:
                log.info("stats period for %s: %s", guest.domain, error)

    def close(self) -> None:
        for client in self._endpoints.values():
            client.close()
        self._endpoints.clear()


def _local(uri: str) -> bool:
    """Whether a libvirt endpoint's QEMU processes run on this host (and so show in its
    /proc): the system or session daemon, or a KubeVirt launcher's socket; not a remote
    host, nor libvirt's test driver."""
    parts = urlsplit(uri)
    return parts.scheme in ("qemu", "qemu+unix") and not parts.netloc


def still_owed(report: GuestResult, touched: Sequence[GuestKey], released: bool,
                  restore_on_release: bool = True) -> list[GuestKey]:
    """Guests whose balloon we moved and must give back on release.

    While a policy manages balloons every guest we moved stays on the list; once released,
    a guest leaves it once its release target (its maximum) was set, or when it is gone for
    good (not seen while its endpoint answered: an endpoint that is down, e.g. libvirtd
    restarting, keeps its guests for the next cycle) — and at once when the policy said not
    to give anything back (``restoreOnRelease: false``).
    """
    keys = set(touched) | {guest_key(t.endpoint, t.domain) for t in report.applied}
    if not released:
        return sorted(keys)
    if not restore_on_release:
        return []
    live: Mapping[GuestKey, GuestObservation] = {
        guest_key(g.endpoint, g.domain): g for g in report.guests}
    restored = {guest_key(t.endpoint, t.domain) for t in report.applied}
    return sorted(k for k in keys if k not in restored and (
        endpoint_of(k) in report.down_uris if k not in live
        else live[k].current_kib < live[k].max_kib))
