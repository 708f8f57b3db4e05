"""Small helpers the benchmarks share."""

from __future__ import annotations


def log(line: str) -> None:
    print(line, flush=True)


def quiet(_: str) -> None:
    pass


def raise_interrupt(*_: object) -> None:
    """A SIGTERM handler: turn the signal into KeyboardInterrupt so ``finally`` restores."""
    raise KeyboardInterrupt
