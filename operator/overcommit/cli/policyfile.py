"""``overcommit run``'s policy source: the file, read again every cycle."""

from __future__ import annotations

import sys
import threading
from typing import Any

from overcommit.api.model import PolicyError, load_policies

REMOVAL_SETTLE_SECONDS = 0.5


def _settle(stop: threading.Event, seconds: float) -> None:
    """A pause that a stop request (SIGTERM, Ctrl-C) cuts short."""
    stop.wait(seconds)


class PolicyFile:
    """``run``'s policy file, re-read every cycle.

    A file without policy documents (empty, only comments or ``---``) and a deleted file mean
    "no policies": the next cycle restores the originals, as deleting the custom resource does
    in a cluster. A file that does not parse or validate, or cannot be read, keeps the last good
    policies. Each change of state is reported once on stderr, not every cycle. Standard input
    (``-f -``) is read once.
    """

    def __init__(self, path: str, stop: threading.Event) -> None:
        self.path, self.stop = path, stop
        self._said = ""

    def first(self) -> list[Any]:
        """The policies at start-up: the file must exist, and standard input must hold a policy
        (a typo, or an empty pipe, should not mean "restore")."""
        policies: list[Any] = load_policies(self.path, allow_empty=self.path != "-")
        if not policies:
            self._say(self._empty)
        return policies

    def reload(self, previous: list[Any]) -> list[Any]:
        if self.path == "-":
            return previous  # stdin was read once, at start-up
        policies = self._read(previous, final=not previous)
        if previous and not policies:
            # An editor saving (truncate then write, or delete then rename) is not a removal:
            # only a file still empty or gone a moment later restores the host.
            _settle(self.stop, REMOVAL_SETTLE_SECONDS)
            if self.stop.is_set():
                return previous
            policies = self._read(previous, final=True)
        return policies

    def _read(self, previous: list[Any], *, final: bool) -> list[Any]:
        """The file's policies; ``final``: a removal found now is acted on, so say it."""
        try:
            policies: list[Any] = load_policies(self.path, allow_empty=True)
        except FileNotFoundError:
            if final:
                self._say(f"overcommit: {self.path} was deleted: no policies, so the originals "
                          "are restored")
            return []
        except PolicyError as err:
            self._say("\n".join([f"overcommit: {self.path} is invalid; keeping the previous "
                                 "policies until it is fixed:", *err.lines()]))
            return previous
        except OSError as exc:
            self._say(f"overcommit: cannot read {self.path} ({exc.strerror or exc}); keeping the "
                      "previous policies")
            return previous
        if not policies:
            if final:
                self._say(self._empty)
        elif self._said:
            print(f"overcommit: {self.path} is valid again ({len(policies)} "
                  f"{'policy' if len(policies) == 1 else 'policies'})", file=sys.stderr)
            self._said = ""  # a later problem is reported again
        return policies

    @property
    def _empty(self) -> str:
        return (f"overcommit: {self.path} has no policy documents: no policies, so the "
                "originals are restored")

    def _say(self, message: str) -> None:
        if message != self._said:
            print(message, file=sys.stderr)
            sys.stderr.flush()
            self._said = message
