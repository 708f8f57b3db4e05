"""One libvirt endpoint: observe its running guests' balloons, and move them.

``LibvirtEndpoint(uri)`` connects lazily and never raises out of its public methods: a down
daemon, a bad URI or a dead connection become an ``EndpointReading`` with ``ok=False`` (or an
error text from ``set_target``/``ensure_stats_period``), and the next call connects again. A
connection that died since the last call (libvirtd restarted: "Cannot write data: Broken pipe",
then "client socket is closed") is replaced at once and the call retried, so a daemon restart
between two cycles costs no cycle.

Observation is one bulk call, ``getAllDomainStats(BALLOON | STATE)``, when the driver fills the
balloon group (QEMU does); otherwise (the test driver on libvirt 9.0 returns only the state
group) ``memoryStats()`` + ``info()`` per domain. Each domain's XML is parsed once per run of
it (keyed by uuid and domain id, which changes on every start) for the balloon model, the
statistics period and KubeVirt's metadata.

libvirt-python has no type stubs: its objects are ``Any`` here and nowhere else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import libvirt  # type: ignore[import-untyped]

from overcommit.virt.balloonstats import (
    BalloonReading,
    balloon_problem,
    from_bulk,
    from_memory_stats,
    job_in_progress,
    stats_age,
)
from overcommit.virt.domainxml import DomainFacts, DomainXMLError, parse_domain_xml, split_vmi_name
from overcommit.virt.model import GuestObservation

__all__ = ["EndpointReading", "LibvirtEndpoint"]

_T = TypeVar("_T")
_LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
_GROUPS = libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_STATE
# Active = running or paused: a paused guest still holds its memory, so it is reported (with
# a problem) rather than silently missing from the node's picture.
_ACTIVE = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
_NOT_RUNNING = {libvirt.VIR_DOMAIN_PAUSED: "paused", libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
                libvirt.VIR_DOMAIN_CRASHED: "crashed",
                libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended by the guest"}
# A domain that stopped (55, "domain is not running") or went away (42) after it was listed.
_GONE = (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID)
_UNKNOWN_FACTS = DomainFacts(balloon_model=None, stats_period=0, kubevirt=False, vmi_uid=None)

Opener = Callable[[str], Any]


@dataclass(frozen=True)
class EndpointReading:
    """One endpoint at one moment: its guests, or why it could not be read."""

    uri: str
    ok: bool
    error: str | None = None
    guests: list[GuestObservation] = field(default_factory=list)


@dataclass(frozen=True)
class _Limits:
    """What a balloon change is checked against before libvirt is asked."""

    max_kib: int
    has_balloon: bool


def _alive(conn: Any) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:  # closed: "invalid connection pointer"
        return False


def _quiet(_ctx: object, _error: object) -> None:
    """libvirt's default handler prints every error to stderr; callers get them as text."""


def _open(uri: str) -> Any:
    libvirt.registerErrorHandler(_quiet, None)
    return libvirt.open(uri)


class LibvirtEndpoint:
    """A lazily (re)connected libvirt connection and the balloons behind it."""

    def __init__(self, uri: str, *, opener: Opener = _open,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.uri = uri
        self._open = opener  # tests hand in their own connection
        self._wall = wall_clock  # QEMU stamps last_update with host wall-clock seconds
        self._conn: Any = None
        self._facts: dict[tuple[str, int], DomainFacts] = {}
        self._limits: dict[str, _Limits] = {}  # by domain name, from the last observe()
        self._jobs_unsupported = False  # the driver has no job API (libvirt's test driver)

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):  # already dead: nothing to release
                conn.close()

    # ------------------------------------------------------------------ connection

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self._open(self.uri)
        return self._conn

    def _attempt(self, action: Callable[[Any], _T]) -> _T:
        conn = self._connection()
        try:
            return action(conn)
        except libvirt.libvirtError:
            if not _alive(conn):
                self.close()
            raise

    def _with_connection(self, action: Callable[[Any], _T]) -> _T:
        """``action(conn)``; once more on a new connection if an old one turned out dead."""
        reused = self._conn is not None
        try:
            return self._attempt(action)
        except libvirt.libvirtError:
            # A fresh connection that fails, or a live one (the request's own fault): final.
            if not reused or self._conn is not None:
                raise
        return self._attempt(action)

    def _error(self, e: libvirt.libvirtError) -> str:
        where = "" if self._conn is not None else f"endpoint {self.uri} is down: "
        return f"{where}{e} ({_code_name(e)})"

    # ------------------------------------------------------------------ observe

    def observe(self, now: float) -> EndpointReading:
        """Every active guest; ``now`` (monotonic) stamps the observations."""
        try:
            guests = self._with_connection(lambda conn: self._observe_all(conn, now))
        except libvirt.libvirtError as e:
            return EndpointReading(self.uri, ok=False, error=self._error(e))
        return EndpointReading(self.uri, ok=True, guests=guests)

    def _observe_all(self, conn: Any, now: float) -> list[GuestObservation]:
        wall = self._wall()
        guests = [g for dom, record in _bulk_stats(conn)
                  if (g := self._observe_guarded(conn, dom, record, now, wall)) is not None]
        # Forget domains that stopped: the caches stay the size of what runs.
        uuids = {g.uuid for g in guests}
        self._facts = {k: f for k, f in self._facts.items() if k[0] in uuids}
        self._limits = {g.domain: _Limits(g.max_kib, g.has_balloon) for g in guests}
        return sorted(guests, key=lambda g: g.domain)

    def _observe_guarded(self, conn: Any, dom: Any, record: dict[str, Any], now: float,
                         wall: float) -> GuestObservation | None:
        """One guest; None when it went away meanwhile. A dead connection propagates."""
        try:
            return self._observe_domain(dom, record, now, wall)
        except libvirt.libvirtError as e:
            if e.get_error_code() in _GONE:
                return None
            if not _alive(conn):
                raise
            return GuestObservation(self.uri, dom.name(), dom.UUIDString(), now, 0, 0, False,
                                    problem=f"libvirt: {e} ({_code_name(e)})")

    def _observe_domain(self, dom: Any, record: dict[str, Any], now: float,
                        wall: float) -> GuestObservation:
        state, reading = _reading(dom, record)
        try:
            facts, problem = self._facts_for(dom), None
        except DomainXMLError as e:
            facts, problem = _UNKNOWN_FACTS, str(e)
        age = stats_age(reading.stats, wall)
        problem = problem or _state_problem(state) or balloon_problem(facts, reading.stats, age)
        migration = self._job(dom) if facts.has_balloon else None
        return _guest(self.uri, dom.name(), dom.UUIDString(), now, reading, facts,
                      age=age, problem=problem, migration=migration)

    def _job(self, dom: Any) -> str | None:
        """A migration (or another memory-copying job) in progress on the domain, if any."""
        if self._jobs_unsupported:
            return None
        try:
            return job_in_progress(dom.jobStats(0))
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                self._jobs_unsupported = True
                return None
            raise

    def _facts_for(self, dom: Any) -> DomainFacts:
        key = (dom.UUIDString(), dom.ID())  # both local to the handle: no round trip
        facts = self._facts.get(key)
        if facts is None:
            facts = self._facts[key] = parse_domain_xml(dom.XMLDesc(0))
        return facts

    # ------------------------------------------------------------------ act

    def set_target(self, domain: str, kib: int) -> str | None:
        """Move ``domain``'s balloon to ``kib`` KiB (live); None on success, else why not."""
        if not _is_count(kib, minimum=1):
            return f"{domain}: refusing balloon target {kib!r}: must be a positive KiB count"
        return self._act(domain, lambda dom: self._set_target(dom, domain, kib))

    def _set_target(self, dom: Any, domain: str, kib: int) -> str | None:
        limits = self._limits.get(domain) or self._learn_limits(dom)
        if not limits.has_balloon:
            return f"{domain}: {_NO_DEVICE}"
        if kib > limits.max_kib:
            return (f"{domain}: refusing balloon target {kib} KiB: above the domain's maximum "
                    f"memory {limits.max_kib} KiB")
        dom.setMemoryFlags(kib, _LIVE)
        return None

    def _learn_limits(self, dom: Any) -> _Limits:
        """For a domain set before any observe(): two calls instead of the cached answer."""
        return _Limits(dom.info()[1], self._facts_for(dom).has_balloon)

    def ensure_stats_period(self, domain: str, seconds: int) -> str | None:
        """Set the live statistics period when it differs; None on success, else why not."""
        if not _is_count(seconds, minimum=0):
            return f"{domain}: refusing stats period {seconds!r}: must be seconds >= 0"
        return self._act(domain, lambda dom: self._set_period(dom, domain, seconds))

    def _set_period(self, dom: Any, domain: str, seconds: int) -> str | None:
        # The live XML, not the cached facts: anyone (an admin's `virsh dommemstat --period`,
        # another tool) may have changed the period since, and keeping it is this call's job.
        key = (dom.UUIDString(), dom.ID())
        facts = self._facts[key] = parse_domain_xml(dom.XMLDesc(0))
        if not facts.has_balloon:
            # libvirt would say "internal error: No memory balloon device configured"
            return f"{domain}: {_NO_DEVICE}"
        if facts.stats_period != seconds:
            dom.setMemoryStatsPeriod(seconds, _LIVE)
            self._facts[key] = dataclasses.replace(facts, stats_period=seconds)
        return None

    def _act(self, domain: str, change: Callable[[Any], str | None]) -> str | None:
        """``change(domain's handle)``; libvirt's refusals come back as text, never raised."""
        try:
            return self._with_connection(lambda conn: change(conn.lookupByName(domain)))
        except libvirt.libvirtError as e:
            return f"{domain}: {_act_reason(e)}: {self._error(e)}"


def _is_count(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


_NO_DEVICE = ("no balloon device (<memballoon model='none'/>): its memory cannot change while "
              "it runs")
_CODE_NAMES = {
    libvirt.VIR_ERR_INTERNAL_ERROR: "VIR_ERR_INTERNAL_ERROR",
    libvirt.VIR_ERR_NO_SUPPORT: "VIR_ERR_NO_SUPPORT",
    libvirt.VIR_ERR_NO_CONNECT: "VIR_ERR_NO_CONNECT",
    libvirt.VIR_ERR_INVALID_ARG: "VIR_ERR_INVALID_ARG",
    libvirt.VIR_ERR_SYSTEM_ERROR: "VIR_ERR_SYSTEM_ERROR",
    libvirt.VIR_ERR_RPC: "VIR_ERR_RPC",
    libvirt.VIR_ERR_NO_DOMAIN: "VIR_ERR_NO_DOMAIN",
    libvirt.VIR_ERR_OPERATION_INVALID: "VIR_ERR_OPERATION_INVALID",
    libvirt.VIR_ERR_INVALID_CONN: "VIR_ERR_INVALID_CONN",
    libvirt.VIR_ERR_OPERATION_DENIED: "VIR_ERR_OPERATION_DENIED",
    libvirt.VIR_ERR_AUTH_FAILED: "VIR_ERR_AUTH_FAILED",
}


def _code_name(e: libvirt.libvirtError) -> str:
    code = e.get_error_code()
    return _CODE_NAMES.get(code, f"libvirt error {code}")


def _act_reason(e: libvirt.libvirtError) -> str:
    code = e.get_error_code()
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return "gone (destroyed or undefined since it was observed)"
    if code == libvirt.VIR_ERR_OPERATION_INVALID and "balloon" in str(e):
        return _NO_DEVICE  # QEMU: "Unable to change memory of active domain without ..."
    if code == libvirt.VIR_ERR_OPERATION_INVALID:
        return "not running"
    return "failed"


def _bulk_stats(conn: Any) -> list[tuple[Any, dict[str, Any]]]:
    try:
        return list(conn.getAllDomainStats(_GROUPS, _ACTIVE))
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
            raise
    # A driver without the bulk API: list, then ask each domain.
    return [(dom, {}) for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]


def _reading(dom: Any, record: dict[str, Any]) -> tuple[int, BalloonReading]:
    """(state, balloon numbers): from the bulk record when it has them, else two calls."""
    bulk = from_bulk(record)
    state = record.get("state.state")
    if bulk is not None and isinstance(state, int):
        return state, bulk
    info = dom.info()
    return info[0], from_memory_stats(dom.memoryStats(), info)


def _state_problem(state: int) -> str | None:
    name = _NOT_RUNNING.get(state)
    return None if name is None else f"domain is {name}: its balloon cannot move until it runs"


def _guest(uri: str, name: str, uuid: str, now: float, reading: BalloonReading,
           facts: DomainFacts, *, age: float | None, problem: str | None,
           migration: str | None = None) -> GuestObservation:
    namespace, vmi_name = split_vmi_name(name) if facts.kubevirt else (None, None)
    return GuestObservation(
        endpoint=uri, domain=name, uuid=uuid, time=now, max_kib=reading.max_kib,
        current_kib=reading.current_kib, has_balloon=facts.has_balloon, stats=reading.stats,
        vmi_namespace=namespace, vmi_name=vmi_name, vmi_uid=facts.vmi_uid, problem=problem,
        stats_age_s=age, stats_period_s=facts.stats_period if facts.has_balloon else None,
        exclusions=facts.exclusions, migration=migration,
        autodeflate=facts.autodeflate if facts.has_balloon else None,
        free_page_reporting=facts.free_page_reporting if facts.has_balloon else None)
