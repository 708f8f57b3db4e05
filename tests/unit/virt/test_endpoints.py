"""Endpoint discovery against real Unix sockets in a fake kubelet pods dir."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import libvirt  # type: ignore[import-untyped]
import pytest

from overcommit.virt.endpoints import (
    POD_SOCKET_DIR,
    SUN_PATH_MAX,
    Endpoint,
    discover_endpoints,
    launcher_uri,
)

POD_A = "3f6b1c2e-8d4a-4f1e-9b7c-0a1b2c3d4e5f"
POD_B = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
SESSION = "qemu+unix:///session"
SYSTEM = "qemu:///system"
OWN_FORM = SYSTEM if os.geteuid() == 0 else SESSION  # a socket we bind is owned by us


def bind_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, however long: bound through /proc/self/fd/<dir>,
    a short name for the same directory (the length limit is on the name passed to bind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(f"/proc/self/fd/{fd}/{path.name}")
    finally:
        os.close(fd)
    server.listen()
    return server


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for s in opened:
        s.close()


@pytest.fixture
def pods(tmp_path: Path) -> Path:
    return tmp_path / "var/lib/kubelet/pods"


@pytest.fixture
def link_dir(tmp_path: Path) -> str:
    return str(tmp_path / "l")


def launcher(pods: Path, sockets: list[socket.socket], pod: str = POD_A,
             name: str = "virtqemud-sock") -> Path:
    path = pods / pod / POD_SOCKET_DIR / name
    sockets.append(bind_socket(path))
    return path


def discover(pods: str, link_dir: str) -> list[Endpoint]:
    """Launchers only: this host's own libvirtd socket must not add qemu:///system here."""
    return discover_endpoints([], pods, link_dir=link_dir, system_sockets=())


def socket_of(endpoint: Endpoint) -> str:
    return parse_qs(urlsplit(endpoint.uri).query)["socket"][0]


def test_a_long_launcher_path_gets_a_short_link_that_connects(
        pods: Path, link_dir: str, sockets: list[socket.socket]) -> None:
    path = launcher(pods, sockets)
    assert len(os.fsencode(path)) > 108
    [ep] = discover(str(pods), link_dir)
    link = socket_of(ep)
    assert ep.uri.startswith(f"{OWN_FORM}?socket={link_dir}/") and ep.problem is None
    assert (ep.source, ep.socket, ep.pod_uid) == ("kubevirt", str(path), POD_A)
    assert len(os.fsencode(link)) <= SUN_PATH_MAX and os.readlink(link) == str(path)
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(link)
        accepted, _ = sockets[0].accept()
        accepted.close()


def test_libvirt_itself_reaches_the_socket_through_the_uri(
        pods: Path, link_dir: str, sockets: list[socket.socket]) -> None:
    launcher(pods, sockets)
    [ep] = discover(str(pods), link_dir)
    accepted: list[bool] = []

    def serve() -> None:  # hang up at once: libvirt's open then fails, after connecting
        conn, _ = sockets[0].accept()
        accepted.append(True)
        conn.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    with pytest.raises(libvirt.libvirtError):
        libvirt.open(ep.uri)
    server.join(timeout=5)
    assert accepted == [True]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a socket to uid 107 needs root")
def test_the_socket_owner_decides_the_uri_form(pods: Path, link_dir: str,
                                              sockets: list[socket.socket]) -> None:
    root_owned = launcher(pods, sockets, POD_A)
    os.chown(launcher(pods, sockets, POD_B), 107, 107)  # KubeVirt's non-root launcher
    by_pod = {e.pod_uid: e for e in discover(str(pods), link_dir)}
    assert by_pod[POD_A].uri.startswith(f"{SYSTEM}?socket=")
    assert by_pod[POD_B].uri.startswith(f"{SESSION}?socket=")
    assert by_pod[POD_A].socket == str(root_owned)


def test_launcher_uri_forms_and_escaping() -> None:
    assert launcher_uri("/pods/u/sock", 0) == "qemu:///system?socket=/pods/u/sock"
    assert launcher_uri("/pods/u/sock", 107) == "qemu+unix:///session?socket=/pods/u/sock"
    assert launcher_uri("/p+q r/s&t", 107).endswith("?socket=/p%2Bq%20r/s%26t")


def test_vanished_sockets_drop_out_and_their_links_go(
        pods: Path, link_dir: str, sockets: list[socket.socket]) -> None:
    gone = launcher(pods, sockets, POD_A)
    launcher(pods, sockets, POD_B)
    first = discover(str(pods), link_dir)
    assert [e.pod_uid for e in first] == sorted([POD_A, POD_B], key=lambda p: str(pods / p))
    sockets[0].close()
    gone.unlink()  # the kubelet removes the emptyDir with the pod
    Path(link_dir, "0123456789abcdef.new").symlink_to("/nowhere")  # an interrupted update
    Path(link_dir, "keep-me").write_text("not ours")
    [left] = discover(str(pods), link_dir)
    assert left.pod_uid == POD_B
    assert sorted(os.listdir(link_dir)) == sorted([os.path.basename(socket_of(left)), "keep-me"])


def test_short_paths_are_used_as_they_are(link_dir: str,
                                         sockets: list[socket.socket]) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="p") as short:  # pytest's are long
        path = launcher(Path(short), sockets, "u1")
        assert len(os.fsencode(path)) <= SUN_PATH_MAX
        [ep] = discover(short, link_dir)
        assert socket_of(ep) == str(path) and not os.path.exists(link_dir)


def test_older_launchers_libvirt_sock_and_the_preference(
        pods: Path, link_dir: str, sockets: list[socket.socket]) -> None:
    old = launcher(pods, sockets, POD_A, "libvirt-sock")
    launcher(pods, sockets, POD_B, "libvirt-sock")
    new = launcher(pods, sockets, POD_B, "virtqemud-sock")
    by_pod = {e.pod_uid: e.socket for e in discover(str(pods), link_dir)}
    assert by_pod == {POD_A: str(old), POD_B: str(new)}


def test_what_is_not_a_socket_is_ignored(pods: Path, link_dir: str,
                                        sockets: list[socket.socket]) -> None:
    real = launcher(pods, sockets, POD_A)
    planted = pods / POD_B / POD_SOCKET_DIR / "virtqemud-sock"
    planted.parent.mkdir(parents=True)
    planted.symlink_to(real)  # a launcher must not redirect the agent elsewhere
    (pods / "c" / POD_SOCKET_DIR).mkdir(parents=True)
    (pods / "c" / POD_SOCKET_DIR / "virtqemud-sock").write_text("")
    assert [e.pod_uid for e in discover(str(pods), link_dir)] == [POD_A]


def test_explicit_uris_and_the_default_system_daemon(tmp_path: Path,
                                                     sockets: list[socket.socket]) -> None:
    system_sock = tmp_path / "libvirt-sock"
    missing = [str(tmp_path / "nothing")]
    assert discover_endpoints([], None, system_sockets=missing) == []
    sockets.append(bind_socket(system_sock))
    assert discover_endpoints([], None, system_sockets=[str(system_sock)]) == [
        Endpoint(SYSTEM, "system")]
    explicit = ["test:///default", "qemu:///system", "test:///default"]
    assert [e.uri for e in discover_endpoints(explicit, None)] == explicit[:2]
    assert discover_endpoints([], str(tmp_path / "no-pods"), system_sockets=missing) == []
    assert discover_endpoints([], None, system_sockets=[str(system_sock)],
                              discover_system=False) == []


def test_the_system_daemon_under_another_host_root(tmp_path: Path,
                                                   sockets: list[socket.socket]) -> None:
    """A container sees the host under /host: the URI names the socket found there."""
    (tmp_path / "run/libvirt").mkdir(parents=True)
    sockets.append(bind_socket(tmp_path / "run/libvirt/virtqemud-sock"))
    [ep] = discover_endpoints([], None, host_root=str(tmp_path))
    assert ep == Endpoint(f"{SYSTEM}?socket={tmp_path}/run/libvirt/virtqemud-sock", "system")


def test_an_unusable_link_dir_is_reported_on_the_endpoint(
        pods: Path, tmp_path: Path, sockets: list[socket.socket]) -> None:
    path = launcher(pods, sockets)
    blocker = tmp_path / "file"
    blocker.write_text("")
    [ep] = discover(str(pods), str(blocker / "links"))
    assert socket_of(ep) == str(path)  # libvirt will say "path too long" when used
    assert ep.problem is not None and "cannot create" in ep.problem
