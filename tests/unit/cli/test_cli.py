"""The local-mode CLI end to end on a host root in a temp dir (no root needed)."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from overcommit.agent.settings import AgentSettings
from overcommit.cli import EXIT_FAILED, EXIT_INVALID, EXIT_OK, build_parser, cmd_run, main
from testkit.cases import policy_document
from testkit.fakes.kernel import FakeKernel

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
    assert "ladder: Plenty (MemAvailable 11.8Gi >= 3.9Gi (800% of M))" in out


def test_plan_and_run_show_the_ladder(host: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    FakeKernel(host).set_memory(512 * 1024)  # 0.5 GiB available
    path = write_policy(tmp_path, policy_document("p", {
        "ksm": {"enabled": True}, "ladder": {"minimumAvailable": "1Gi"}}))
    for command in (["plan"], ["run", "--once"]):
        code, data = run_json(capsys, *command, "-f", path, *host_args(host, tmp_path))
        assert code == EXIT_OK
        ladder = data["ladder"]
        assert (ladder["state"], ladder["relief"], ladder["minimumBytes"]) == (
            "Critical", True, 1 << 30)
        assert [t["state"] for t in ladder["thresholds"]] == ["Clear", "Soft", "Hard",
                                                              "Critical"]
        assert ladder["transitions"][0]["toState"] == "Critical"
        # Local mode: relief is reported, never acted on.
        assert ladder["reliefStatus"].startswith("unable: local mode: relief is reported, not "
                                                 "acted on")
    assert main(["plan", "-f", path, *host_args(host, tmp_path)[:-2]]) == EXIT_OK
    assert "relief: unable: local mode" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# `run` re-reads the policy file every cycle


class Script(threading.Event):
    """The stop event of ``run``: each wait after a cycle records the host's KSM settings, then
    performs the next step (an edit of the policy file); when no step is left, ``run`` stops."""

    def __init__(self, host: Path, *steps: Callable[[], object]) -> None:
        super().__init__()
        self.host = host
        self.steps = list(steps)
        self.seen: list[tuple[str, str]] = []  # (run, sleep_millisecs) after each cycle

    def wait(self, timeout: float | None = None) -> bool:
        self.seen.append(ksm_settings(self.host))
        if not self.steps:
            return True
        self.steps.pop(0)()
        return False


def ksm_settings(host: Path) -> tuple[str, str]:
    return ((host / KSM / "run").read_text().strip(),
            (host / KSM / "sleep_millisecs").read_text().strip())


@pytest.fixture(autouse=True)
def no_settling(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """run's pause before believing a policy file is gone, recorded instead of slept."""
    pauses: list[float] = []
    monkeypatch.setattr("overcommit.cli.policyfile._settle",
                        lambda stop, seconds: pauses.append(seconds))
    return pauses


def run_loop(host: Path, tmp_path: Path, path: str, *steps: Callable[[], object]) -> Script:
    """``overcommit run -f path`` in-process, one cycle per step plus one, then stopped."""
    args = build_parser().parse_args(["run", "-f", path, "--interval", "0.01",
                                      *host_args(host, tmp_path)])
    script = Script(host, *steps)
    assert cmd_run(args, stop=script) == EXIT_OK
    assert script.steps == []
    return script


APPLIED, ORIGINAL = ("1", "50"), ("0", "20")
KSM_POLICY = policy_document("p", {"ksm": {"enabled": True, "sleepMillisecs": 50}})


def originals(tmp_path: Path) -> dict[str, str]:
    data: dict[str, str] = json.loads((tmp_path / "state" / "originals.json").read_text())[
        "originals"]
    return data


@pytest.mark.parametrize("text", ["", "\n", "# policies go here\n---\n---\n"],
                         ids=["empty", "blank", "comments-and-separators"])
def test_run_restores_when_the_file_is_emptied(text: str, host: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(write_policy(tmp_path, KSM_POLICY))
    script = run_loop(host, tmp_path, str(path), lambda: path.write_text(text),
                      lambda: None)
    assert script.seen == [APPLIED, ORIGINAL, ORIGINAL]
    assert originals(tmp_path) == {}
    err = capsys.readouterr().err
    assert err.count("has no policy documents") == 1, err  # said once, not every cycle
    assert str(path) in err and "restored" in err


def test_run_restores_when_the_file_is_deleted(host: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(write_policy(tmp_path, KSM_POLICY))
    script = run_loop(host, tmp_path, str(path), path.unlink, lambda: None)
    assert script.seen == [APPLIED, ORIGINAL, ORIGINAL]
    assert originals(tmp_path) == {}
    err = capsys.readouterr().err
    assert err.count(f"{path} was deleted") == 1, err


def test_run_applies_again_when_a_deleted_file_comes_back(host: Path, tmp_path: Path) -> None:
    path = Path(write_policy(tmp_path, KSM_POLICY))
    script = run_loop(host, tmp_path, str(path), path.unlink,
                      lambda: write_policy(tmp_path, KSM_POLICY))
    assert script.seen == [APPLIED, ORIGINAL, APPLIED]


def test_an_editor_saving_the_file_is_not_a_removal(host: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Truncate, then write (as many editors save): the file is empty for a moment. run looks
    again after a pause; the policy is back by then, so nothing is restored."""
    path = Path(write_policy(tmp_path, KSM_POLICY))
    pauses: list[float] = []

    def editor_finishes(stop: threading.Event, seconds: float) -> None:
        pauses.append(seconds)
        write_policy(tmp_path, KSM_POLICY)

    monkeypatch.setattr("overcommit.cli.policyfile._settle", editor_finishes)
    script = run_loop(host, tmp_path, str(path), lambda: path.write_text(""), path.unlink,
                      lambda: None)
    assert script.seen == [APPLIED, APPLIED, APPLIED, APPLIED]
    assert pauses == [0.5, 0.5]
    assert "restored" not in capsys.readouterr().err


def test_run_keeps_the_last_good_policies_while_the_file_is_invalid(
        host: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(write_policy(tmp_path, KSM_POLICY))
    invalid = policy_document("p", {"ksm": {"enabled": True, "pagesToScan": -1}})
    script = run_loop(host, tmp_path, str(path),
                      lambda: write_policy(tmp_path, invalid),
                      lambda: None,  # still invalid: not reported again
                      lambda: path.write_text("a: [unclosed\n"),  # a new error: reported
                      lambda: write_policy(tmp_path, policy_document(
                          "p", {"ksm": {"enabled": True, "sleepMillisecs": 60}})))
    assert script.seen == [APPLIED, APPLIED, APPLIED, APPLIED, ("1", "60")]
    assert originals(tmp_path) == {f"{KSM}/run": "0", f"{KSM}/sleep_millisecs": "20"}
    err = capsys.readouterr().err
    assert err.count(f"{path} is invalid; keeping the previous policies") == 2, err
    assert err.count("spec.ksm.pagesToScan: Invalid value: -1") == 1, err
    assert err.count("not valid YAML or JSON") == 1, err
    assert f"{path} is valid again (1 policy)" in err


def test_run_reads_standard_input_once(host: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump(KSM_POLICY)))
    script = run_loop(host, tmp_path, "-", lambda: None)
    assert script.seen == [APPLIED, APPLIED]  # an exhausted stdin is not "no policies"


def test_run_refuses_an_empty_standard_input(host: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """An empty pipe (``cat typo.yaml | overcommit run -f -``) is a mistake, not "restore"."""
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code = main(["run", "-f", "-", *host_args(host, tmp_path)])
    assert code == EXIT_INVALID
    assert "no" in capsys.readouterr().err.lower()
    assert not (tmp_path / "state" / "originals.json").exists()


def test_a_stop_while_checking_a_vanished_file_runs_no_more_cycles(
        host: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM arrives during the pause before a removal is believed: run exits without the
    restore cycle (the agent's next start decides, with the file as it is then)."""
    path = Path(write_policy(tmp_path, KSM_POLICY))
    monkeypatch.setattr("overcommit.cli.policyfile._settle",
                        lambda stop, seconds: stop.set())
    args = build_parser().parse_args(["run", "-f", str(path), "--interval", "0.01",
                                      *host_args(host, tmp_path)])
    script = Script(host, path.unlink)
    assert cmd_run(args, stop=script) == EXIT_OK
    assert script.seen == [APPLIED] and ksm_settings(host) == APPLIED


def test_run_once_with_an_empty_file_restores(host: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(write_policy(tmp_path, KSM_POLICY))
    assert main(["run", "--once", "-f", str(path), *host_args(host, tmp_path)]) == EXIT_OK
    assert ksm_settings(host) == APPLIED
    capsys.readouterr()
    path.write_text("")
    code, data = run_json(capsys, "run", "--once", "-f", str(path), *host_args(host, tmp_path))
    assert code == EXIT_OK and data["restored"] is True
    assert ksm_settings(host) == ORIGINAL


def test_run_with_a_missing_file_at_start_up_fails(host: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "typo.yaml")
    assert main(["run", "--once", "-f", missing, *host_args(host, tmp_path)]) == EXIT_FAILED
    assert missing in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# A corrupt originals.json


@pytest.mark.parametrize("content", [b"{not json", b'{"version": 99, "originals": {}}',
                                     b"[]", b"\xff\xfe\x00", b""],
                         ids=["syntax", "future-version", "not-an-object", "binary", "empty"])
@pytest.mark.parametrize("command", ["restore", "run", "status", "plan"])
def test_a_corrupt_state_file_is_reported_without_a_traceback(
        command: str, content: bytes, host: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state" / "originals.json"
    state.parent.mkdir()
    state.write_bytes(content)
    argv = [command, *host_args(host, tmp_path)]
    if command in ("run", "plan"):
        argv += ["-f", write_policy(tmp_path, KSM_POLICY)]
    if command == "run":
        argv.append("--once")
    assert main(argv) == EXIT_FAILED
    out, err = capsys.readouterr()
    assert f"the state file {state} is corrupt or unreadable" in err
    assert "do not just delete it" in err and "Traceback" not in err and out == ""
    assert state.read_bytes() == content  # left for the user to inspect
    assert ksm_settings(host) == ORIGINAL  # nothing was changed without knowing the originals


def test_status_shows_the_supported_ratio_from_the_history_run_kept(
        host: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`overcommit run` (like the agent) keeps an hour of one-minute savings in the state
    directory; `overcommit status` assesses the host from it and from what it sees now."""
    import time

    from overcommit.planning import capacity as cap
    from overcommit.reconcile.capacity import CapacityStore

    path = write_policy(tmp_path, policy_document("p", {"ksm": {"enabled": True}}))
    code, data = run_json(capsys, "run", "--once", "-f", path, *host_args(host, tmp_path))
    assert code == EXIT_OK and data["capacity"]["supportedPercent"] == 100
    now = time.time()
    start = cap.bucket_start(now) - 3600
    hour = tuple(cap.Bucket(start + 60 * i, 1 << 30, 0, 0, 60.0, 0.0) for i in range(61))
    CapacityStore(tmp_path / "state").save(cap.History(hour, now - 1))
    code, status = run_json(capsys, "status", "-f", path, *host_args(host, tmp_path))
    assert code == EXIT_OK
    capacity = status["capacity"]
    assert capacity["evidence"]["settled"] is True
    assert capacity["evidence"]["observedSeconds"] == 3600
    # KSM merges nothing on the fake host now: the bucket of this minute drags p5 to 0 only
    # if it is among the lowest 5 % -- it is one of 62, so the hour's 1 GiB holds.
    assert capacity["sustained"]["mergedBytes"] == 1 << 30
    assert capacity["countedBytes"] == (1 << 30) * 9 // 10
    assert capacity["supportedPercent"] > 100
    main(["status", "-f", path, *host_args(host, tmp_path)[:-2]])  # as text
    text = capsys.readouterr().out
    assert f"capacity: supports {capacity['supportedPercent']}%" in text


@pytest.mark.parametrize(("flag", "dest", "field"), [
    ("--policy-change-rate", "policy_change_rate", "policy_change_writes_per_second"),
    ("--counter-write-rate", "counter_write_rate", "counter_writes_per_second"),
])
def test_the_agent_s_write_rate_flags(flag: str, dest: str, field: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    shipped = getattr(AgentSettings("-"), field)
    assert getattr(parser.parse_args(["agent"]), dest) == shipped
    assert getattr(parser.parse_args(["agent", flag, "0"]), dest) == 0.0
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["agent", flag, "-5"])
    assert exc.value.code == EXIT_INVALID
    assert "-5 is not a number at least 0" in capsys.readouterr().err
