"""TCP ports for test servers that another process binds a moment later.

A port from ``bind(("", 0))`` comes from the kernel's ephemeral range, the same range every
outgoing connection draws its local port from. Between the moment a harness picks such a port
and the moment its child (kube-apiserver, an agent's probes) binds it, any client connection
may take it, and a server restarted on its old port may find it gone. Ports below that range
are never handed out implicitly, so only a deliberate bind can collide with them.
"""

from __future__ import annotations

import random
import socket
from contextlib import ExitStack
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10000  # clear of the well-known and most registered service ports
TRIES = 200


def ephemeral_range(path: Path = EPHEMERAL_RANGE) -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux's default if it cannot be read)."""
    try:
        low, high = (int(n) for n in path.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_port() -> int:
    """One port nothing listens on now (see ``free_ports``)."""
    return free_ports(1)[0]


def free_ports(count: int = 1, path: Path = EPHEMERAL_RANGE, lowest: int = LOWEST) -> list[int]:
    """``count`` distinct ports nothing listens on now, below the ephemeral range where it
    leaves room, else any free ones. They are held open together while chosen, so none
    repeats. Still racy against a deliberate bind by another process: callers that start a
    server on one should retry with fresh ports on "address already in use"."""
    low = ephemeral_range(path)[0]
    candidates = list(range(lowest, low)) if low - lowest >= 10 * count else []
    random.shuffle(candidates)
    with ExitStack() as held:
        chosen: list[int] = []
        for port in candidates[:TRIES]:
            if len(chosen) == count:
                break
            sock = socket.socket()
            try:
                sock.bind(("", port))  # every interface: a loopback-only listener counts too
            except OSError:
                sock.close()
                continue
            held.enter_context(sock)
            chosen.append(port)
        while len(chosen) < count:  # no room below the range: the kernel's choice
            sock = held.enter_context(socket.socket())
            sock.bind(("", 0))
            chosen.append(int(sock.getsockname()[1]))
        return chosen
