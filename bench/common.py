"""Small helpers the benchmarks share."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

# Client libraries whose version changes what a simulated agent costs in CPU.
LIBRARIES = ("aiohttp", "kopf", "kubernetes", "libvirt-python")


def log(line: str) -> None:
    print(line, flush=True)


def quiet(_: str) -> None:
    pass


def raise_interrupt(*_: object) -> None:
    """A SIGTERM handler: turn the signal into KeyboardInterrupt so ``finally`` restores."""
    raise KeyboardInterrupt


def host_facts(proc: Path = Path("/proc")) -> dict[str, object]:
    """What ran a benchmark: CPU, kernel, Python, libraries, and this boot's id, so two runs
    can be told apart as the same machine and boot or not (a rebuilt machine is a variable)."""
    cpu_model = next((line.split(":", 1)[1].strip()
                      for line in (proc / "cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "?")
    return {"cpu_model": cpu_model, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(),
            "boot_id": (proc / "sys/kernel/random/boot_id").read_text().strip(),
            "libraries": {name: library_version(name) for name in LIBRARIES}}


def library_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
