"""The durable record of original settings (reconcile/state.py): atomic saves, versions."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from overcommit.reconcile.state import FORMAT_VERSION, STATE_FILE, NodeRecord, StateStore

KSM = "sys/kernel/mm/ksm"


def full_record() -> NodeRecord:
    """A record in which every field differs from its default."""
    return NodeRecord(originals={f"{KSM}/run": "0", f"{KSM}/sleep_millisecs": "20",
                                 "proc/sys/vm/swappiness": "60"},
                      allow_unmerge=True, policy="virt-nodes",
                      guests=["qemu:///system\tweb-1", "qemu:///system\tweb-2"],
                      restore_on_release=False,
                      stats_periods={"qemu:///system\tweb-1": 5, "qemu:///system\tweb-2": 0})


def test_a_round_trip_keeps_every_field(tmp_path: Path) -> None:
    record = full_record()
    for f in dataclasses.fields(NodeRecord):  # a new field must be added to full_record()
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default
        assert getattr(record, f.name) != default, f"full_record() leaves {f.name} at default"
    store = StateStore(tmp_path / "state")
    store.save(record)
    assert StateStore(tmp_path / "state").load() == record
    data = json.loads((tmp_path / "state" / STATE_FILE).read_text())
    assert data["version"] == FORMAT_VERSION


def test_no_file_is_an_empty_record(tmp_path: Path) -> None:
    assert StateStore(tmp_path / "nowhere").load() == NodeRecord()


def test_saving_again_replaces_the_record(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(full_record())
    store.save(NodeRecord(originals={f"{KSM}/run": "1"}))
    assert store.load() == NodeRecord(originals={f"{KSM}/run": "1"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # no temp files left


def _fail(*_: Any, **__: Any) -> None:
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("target", ["replace", "fsync"])
def test_an_interrupted_save_leaves_the_previous_record(target: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store = StateStore(tmp_path)
    before = full_record()
    store.save(before)
    text = store.path.read_text()
    monkeypatch.setattr(os, target, _fail)  # state.py calls os.replace and os.fsync
    with pytest.raises(OSError, match="No space left"):
        store.save(NodeRecord(originals={"x": "y"}))
    monkeypatch.undo()
    assert store.path.read_text() == text
    assert StateStore(tmp_path).load() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # the temp file is gone


def test_an_interrupt_while_writing_leaves_the_previous_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt (any BaseException) half way through the write."""
    store = StateStore(tmp_path)
    store.save(full_record())
    real_fdopen = os.fdopen

    class HalfWritten:
        def __init__(self, fd: int, mode: str) -> None:
            self.handle = real_fdopen(fd, mode)

        def __enter__(self) -> HalfWritten:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, text: str) -> int:
            self.handle.write(text[: len(text) // 2])
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "fdopen", HalfWritten)  # as state.py calls it: os.fdopen
    with pytest.raises(KeyboardInterrupt):
        store.save(NodeRecord(originals={"x": "y"}))
    monkeypatch.undo()
    assert StateStore(tmp_path).load() == full_record()
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]


def test_a_temp_file_left_by_a_crash_is_ignored(tmp_path: Path) -> None:
    """A crash (power loss) before the rename leaves a stray half-written temp file."""
    store = StateStore(tmp_path)
    store.save(full_record())
    (tmp_path / ".originals.abc123.tmp").write_text('{"version": 1, "originals": {"x"')
    assert store.load() == full_record()
    store.save(NodeRecord())
    assert store.load() == NodeRecord()


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0, "1", None])
def test_an_unknown_version_is_rejected(version: Any, tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    data: dict[str, Any] = {"originals": {f"{KSM}/run": "0"}}
    if version is not None:
        data["version"] = version
    store.path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unsupported state format") as exc:
        store.load()
    assert str(store.path) in str(exc.value)
    assert repr(version) in str(exc.value)


def test_a_corrupt_file_is_a_value_error(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.path.write_text('{"version": 1, "originals": {')
    with pytest.raises(ValueError):
        store.load()


@pytest.mark.parametrize("text", ["[]", '"x"', '{"version": 1, "statsPeriods": {"a": "b"}}',
                                  '{"version": 1, "originals": 5}'])
def test_malformed_json_is_a_value_error_naming_the_file(tmp_path: Path, text: str) -> None:
    store = StateStore(tmp_path)
    store.path.write_text(text)
    with pytest.raises(ValueError, match=r"originals\.json"):
        store.load()


def test_a_recorded_original_is_never_overwritten(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    record = NodeRecord(originals={f"{KSM}/run": "0"})
    current = {f"{KSM}/run": "1", f"{KSM}/sleep_millisecs": "20"}
    assert store.record_before_change(record, [f"{KSM}/run", f"{KSM}/sleep_millisecs",
                                               f"{KSM}/absent"], current)
    assert record.originals == {f"{KSM}/run": "0", f"{KSM}/sleep_millisecs": "20"}
    assert not store.record_before_change(record, [f"{KSM}/run"], {f"{KSM}/run": "1"})
