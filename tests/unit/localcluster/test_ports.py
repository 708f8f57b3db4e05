"""Ports for test servers: distinct, free, and clear of the kernel's ephemeral range."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from overcommit.localcluster.ports import LOWEST, ephemeral_range, free_ports


def range_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ip_local_port_range"
    path.write_text(text)
    return path


def test_ports_are_distinct_free_and_below_the_ephemeral_range(tmp_path: Path) -> None:
    path = range_file(tmp_path, "32768\t60999\n")
    ports = free_ports(20, path)
    assert len(set(ports)) == 20
    assert all(LOWEST <= port < 32768 for port in ports), ports
    for port in ports:  # nothing holds them any more
        with socket.socket() as sock:
            sock.bind(("", port))


def test_a_port_someone_listens_on_is_not_chosen(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # loopback only: a bind on every interface still fails
        taken.listen()
        busy = taken.getsockname()[1]
        # 30 candidates, the taken one among them; 3 of them asked for, 20 times over.
        path = range_file(tmp_path, f"{busy + 8} 65535")
        for _ in range(20):
            ports = free_ports(3, path, lowest=busy - 22)
            assert busy not in ports and len(set(ports)) == 3, ports


def test_without_room_below_the_range_the_kernel_chooses(tmp_path: Path) -> None:
    path = range_file(tmp_path, f"{LOWEST + 5} 60999")  # room for fewer than 10 per port
    ports = free_ports(2, path)
    assert len(set(ports)) == 2  # held together while chosen: never the same one twice
    low, high = ephemeral_range()  # the kernel draws from its real range, not the file's
    assert all(low <= port <= high for port in ports), (ports, low, high)


@pytest.mark.parametrize("text", ["", "garbage", "1 2 3"])
def test_an_unreadable_range_falls_back_to_linux_defaults(tmp_path: Path, text: str) -> None:
    assert ephemeral_range(range_file(tmp_path, text)) == (32768, 60999)
    assert ephemeral_range(tmp_path / "missing") == (32768, 60999)
