"""Structured logs: our JSON formatter, and kopf's and ours sharing one shape."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from overcommit.observability.logs import (
    JsonFormatter,
    configure_logging,
    context_logger,
    severity,
)


def record(level: int = logging.INFO, msg: str = "cycle %d done", args: tuple[object, ...] = (3,),
           **extra: object) -> logging.LogRecord:
    rec = logging.getLogger("overcommit.test").makeRecord(
        "overcommit.test", level, __file__, 1, msg, args, None, extra=extra)
    return rec


def test_a_record_is_one_json_line_with_the_shared_keys_and_extras() -> None:
    line = JsonFormatter().format(record(node="n1", policy="gold"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "cycle 3 done"
    assert (entry["severity"], entry["logger"]) == ("info", "overcommit.test")
    assert (entry["node"], entry["policy"]) == ("n1", "gold")
    assert entry["timestamp"].endswith("+00:00") and "T" in entry["timestamp"]
    assert not {"args", "msg", "levelno", "pathname"} & set(entry)


def test_tracebacks_and_multiline_messages_stay_on_one_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec = logging.getLogger("overcommit.test").makeRecord(
            "overcommit.test", logging.ERROR, __file__, 1, "two\nlines", (), _exc_info())
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "two\nlines"
    assert "RuntimeError: boom" in entry["exc_info"] and entry["severity"] == "error"


def _exc_info() -> tuple[type[BaseException], BaseException, None]:
    import sys

    info = sys.exc_info()
    assert info[0] is not None and info[1] is not None
    return info[0], info[1], None


def test_kopf_object_references_become_object_and_bookkeeping_is_dropped() -> None:
    ref = {"kind": "Node", "name": "n1"}
    entry = json.loads(JsonFormatter().format(record(k8s_ref=ref, k8s_skip=True,
                                                     settings=object())))
    assert entry["object"] == ref
    assert not {"k8s_ref", "k8s_skip", "settings"} & set(entry)


def test_unserialisable_extras_are_written_as_text() -> None:
    entry = json.loads(JsonFormatter().format(record(labels={"a": "b"}, when=object)))
    assert entry["labels"] == {"a": "b"} and entry["when"] == str(object)


@pytest.mark.parametrize(("level", "word"), [(logging.DEBUG, "debug"), (logging.INFO, "info"),
                                             (logging.WARNING, "warn"),
                                             (logging.ERROR, "error"),
                                             (logging.CRITICAL, "fatal")])
def test_severity_words_are_kopfs(level: int, word: str) -> None:
    assert severity(level) == word


def test_context_logger_keeps_its_fields_and_the_calls_own() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    base = logging.getLogger("overcommit.test.context")
    base.addHandler(handler)
    base.setLevel(logging.INFO)
    try:
        context_logger("overcommit.test.context", node="n9").info(
            "hello", extra={"policy": "p"})
    finally:
        base.removeHandler(handler)
    entry = json.loads(stream.getvalue())
    assert (entry["node"], entry["policy"]) == ("n9", "p")


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root, ours = logging.getLogger(), logging.getLogger("overcommit")
    saved = (list(root.handlers), root.level, list(ours.handlers), ours.propagate,
             {name: (lg.propagate, list(lg.handlers)) for name, lg in (
                 ("asyncio", logging.getLogger("asyncio")),)})
    yield
    root.handlers[:], ours.handlers[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    ours.propagate = saved[3]
    for name, (propagate, handlers) in saved[4].items():
        logging.getLogger(name).propagate = propagate
        logging.getLogger(name).handlers[:] = handlers


def test_json_mode_gives_kopf_lines_and_ours_the_same_keys(restored_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("json", verbose=True, stream=stream)
    logging.getLogger("kopf.activities.startup").info("kopf says %s", "hi")
    context_logger("overcommit.agent", node="n1").info("we say hi", extra={"policy": "p"})
    logging.getLogger("overcommit.agent").debug("not at verbose")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["message"] for e in lines] == ["kopf says hi", "we say hi"]
    shared = {"timestamp", "severity", "logger", "message"}
    assert shared <= set(lines[0]) and shared <= set(lines[1])
    assert [e["logger"] for e in lines] == ["kopf.activities.startup", "overcommit.agent"]
    assert lines[1]["node"] == "n1" and lines[1]["policy"] == "p"


def test_json_mode_without_verbose_logs_warnings_only(restored_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("json", verbose=False, stream=stream)
    logging.getLogger("overcommit.agent").info("quiet")
    logging.getLogger("kopf.x").info("quiet too")
    logging.getLogger("overcommit.agent").warning("loud")
    assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["loud"]


def test_text_mode_writes_readable_lines(restored_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("text", verbose=True, stream=stream)
    logging.getLogger("overcommit.agent").info("plain %s", "text")
    assert stream.getvalue().rstrip().endswith("INFO overcommit.agent: plain text")


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        configure_logging("yaml")
