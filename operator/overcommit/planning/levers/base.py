"""The interface every lever's planner has: what it sees of the node and the policy, what it
plans. Like the host's sources, one small class per lever (KSM, UKSM, zswap, swap, balloon), so
adding or changing a lever touches its own module only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from overcommit.api.policy import PolicySpec
from overcommit.planning.ladder import Ladder, State
from overcommit.planning.observation import Observation
from overcommit.virt.model import GuestObservation


@dataclass(frozen=True)
class Problem:
    """Something the node cannot do as asked; becomes a condition reason and message."""

    reason: str
    message: str


@dataclass(frozen=True)
class LeverInput:
    """What a lever's planner may look at: the policy in force (None: no policy selects the
    node), the host, the node's reclamation ladder (``planning.ladder``: the one judgement of
    host memory and pressure every lever obeys; no lever reads host memory for that on its
    own), and what the lever remembered from its last plan for the same policy generation."""

    spec: PolicySpec | None
    obs: Observation
    previous: object | None = None
    # Another manager of a lever on this node, by lever name (KubeVirt's KSM handler): the
    # lever then leaves the node alone and says why instead of fighting it.
    owners: Mapping[str, str] = field(default_factory=dict)
    # The guest half: the guests seen, and the ones whose balloon we moved (to give back).
    guests: Sequence[GuestObservation] = ()
    touched: frozenset[tuple[str, str]] = frozenset()  # (endpoint, domain)
    restore_on_release: bool = True
    ladder: Ladder | None = None  # None: judged as Clear (hold, no pressure)

    @property
    def state(self) -> State:
        """The ladder's state this cycle."""
        return self.ladder.state if self.ladder is not None else State.CLEAR


@dataclass(frozen=True)
class LeverPlan:
    """A lever's plan: kernel settings (path -> canonical value), problems, notes, the paths
    it moves every cycle by itself (not news), and what it remembers for the next cycle."""

    settings: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = ()
    tuned: frozenset[str] = frozenset()
    memory: object | None = None


class Lever(Protocol):
    """One lever's planner. Pure: no I/O, no clock but the observation's."""

    @property
    def name(self) -> str: ...

    def plan(self, given: LeverInput) -> LeverPlan: ...


Section = TypeVar("Section")


class SectionLever(Generic[Section]):
    """A lever planned from one section of the policy's spec (``spec.<name>``): nothing to plan
    when the policy has no such section (restoring what an earlier policy changed is
    ``planning.restores``' business, not the lever's)."""

    name = ""

    def plan(self, given: LeverInput) -> LeverPlan:
        section: Any = getattr(given.spec, self.name, None)
        return LeverPlan() if section is None else self.plan_section(section, given)

    def plan_section(self, section: Section, given: LeverInput) -> LeverPlan:
        raise NotImplementedError
