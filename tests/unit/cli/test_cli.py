"""The local-mode CLI end to end on a host root in a temp dir (no root needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from overcommit.cli import EXIT_FAILED, EXIT_INVALID, EXIT_OK, main
from tests.cases import policy_document
from tests.fakes.kernel import FakeKernel

KSM = "sys/kernel/mm/ksm"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    FakeKernel(tmp_path / "host")
    return tmp_path / "host"


def write_policy(tmp_path: Path, *docs: dict[str, Any]) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump_all(list(docs)))
    return str(path)


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip().startswith("{") else out


def host_args(host: Path, tmp_path: Path) -> list[str]:
    return ["--host-root", str(host), "--state-dir", str(tmp_path / "state"), "-o", "json"]


def test_plan_lists_changes_and_touches_nothing(host: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = write_policy(tmp_path, policy_document("p", {"ksm": {"enabled": True,
                                                                 "pagesToScan": 1000}}))
    before = (host / KSM / "pages_to_scan").read_text()
    code, data = run_json(capsys, "plan", "-f", path, *host_args(host, tmp_path))
    assert code == EXIT_OK
    assert {"path": f"{KSM}/pages_to_scan", "from": "100", "to": "1000"} in data["changes"]
    assert {"path": f"{KSM}/run", "from": "0", "to": "1"} in data["changes"]
    assert data["policy"] == "p"
    assert (host / KSM / "pages_to_scan").read_text() == before


def test_node_labels_select_policies(host: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    virt = policy_document("virt", {"priority": 5, "ksm": {"enabled": True},
                                    "nodeSelector": {"matchLabels": {"role": "virt"}}})
    everyone = policy_document("everyone", {"swap": {"swappiness": 10}})
    path = write_policy(tmp_path, virt, everyone)
    _, data = run_json(capsys, "plan", "-f", path, *host_args(host, tmp_path))
    assert data["policy"] == "everyone" and data["overridden"] == []
    _, data = run_json(capsys, "plan", "-f", path, "--node-labels", "role=virt,zone=a",
                       *host_args(host, tmp_path))
    assert data["policy"] == "virt"
    assert data["overridden"][0]["name"] == "everyone"
    assert "priority 0 is lower" in data["overridden"][0]["reason"]


def test_bad_node_labels_are_rejected(host: Path, tmp_path: Path) -> None:
    path = write_policy(tmp_path, policy_document("p", {"ksm": {}}))
    with pytest.raises(SystemExit) as exc:
        main(["plan", "-f", path, "--node-labels", "novalue"])
    assert exc.value.code == EXIT_INVALID


def test_run_once_then_status_then_restore(host: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = write_policy(tmp_path, policy_document("p", {"ksm": {"enabled": True,
                                                                 "sleepMillisecs": 50}}))
    code, data = run_json(capsys, "run", "--once", "-f", path, *host_args(host, tmp_path))
    assert code == EXIT_OK and data["errors"] == []
    assert (host / KSM / "sleep_millisecs").read_text().strip() == "50"
    assert data["originals"] == {f"{KSM}/run": "0", f"{KSM}/sleep_millisecs": "20"}

    code, status = run_json(capsys, "status", *host_args(host, tmp_path))
    assert code == EXIT_OK
    assert status["engines"]["ksm"] is True and status["engines"]["uksm"] is False
    assert status["settings"][f"{KSM}/sleep_millisecs"] == "50"
    assert status["originals"][f"{KSM}/sleep_millisecs"] == "20"
    assert "pages_sharing" in status["counters"]["ksm"]

    code, data = run_json(capsys, "restore", *host_args(host, tmp_path))
    assert code == EXIT_OK and data["restored"] is True
    assert (host / KSM / "sleep_millisecs").read_text().strip() == "20"
    assert (host / KSM / "run").read_text().strip() == "0"


def test_run_once_exits_1_when_a_write_fails(host: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (host / KSM / "sleep_millisecs").unlink()
    # a file that reads fine but refuses writes even for root (EIO), like a broken attribute
    (host / KSM / "sleep_millisecs").symlink_to("/proc/version")
    path = write_policy(tmp_path, policy_document("p", {"ksm": {"enabled": True,
                                                                 "sleepMillisecs": 50}}))
    code, data = run_json(capsys, "run", "--once", "-f", path, *host_args(host, tmp_path))
    assert code == EXIT_FAILED
    assert [e["path"] for e in data["errors"]] == [f"{KSM}/sleep_millisecs"]
    assert (host / KSM / "run").read_text().strip() == "1"  # the rest still applied


def test_run_with_an_invalid_policy_exits_2(host: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = write_policy(tmp_path, policy_document("p", {"ksm": {"pagesToScan": -1}}))
    assert main(["run", "--once", "-f", path, *host_args(host, tmp_path)]) == EXIT_INVALID
    assert "spec.ksm.pagesToScan" in capsys.readouterr().err


def test_text_output_is_readable(host: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = write_policy(tmp_path, policy_document("p", {"ksm": {"enabled": True}}))
    assert main(["plan", "-f", path, "--host-root", str(host), "--state-dir",
                 str(tmp_path / "s")]) == EXIT_OK
    out = capsys.readouterr().out
    assert "policy: p" in out and f"{KSM}/run: 0 -> 1" in out
