"""Structured logs: one JSON object per line, in the shape kopf's own JSON format uses.

kopf formats its loggers (``kopf.configure(log_format=LogFormat.JSON)``) as
``{"message", "timestamp", "severity", "object"?, "exc_info"?, <extra fields>}``. Our loggers
(``overcommit.*``) get :class:`JsonFormatter`, which writes the same keys, so one log pipeline
parses both; both also carry ``logger`` (the logger's name). Context such as ``node`` and
``policy`` travels as ``extra`` fields (see :func:`context_logger`).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OUR_LOGGERS = "overcommit"

# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}
# kopf's per-object bookkeeping: the reference becomes "object", the rest is not for logs.
_KOPF_PRIVATE = frozenset({"k8s_ref", "k8s_skip", "settings"})


def severity(levelno: int) -> str:
    """kopf's severity words, so both formatters agree."""
    if levelno <= logging.DEBUG:
        return "debug"
    if levelno <= logging.INFO:
        return "info"
    if levelno <= logging.WARNING:
        return "warn"
    return "error" if levelno <= logging.ERROR else "fatal"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in record.__dict__.items()
            if key not in _STANDARD and key not in _KOPF_PRIVATE and not key.startswith("_")}


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON: message, timestamp (UTC, ISO 8601), severity, logger,
    the object reference kopf attaches (as ``object``), extra fields, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"message": record.getMessage()}
        entry.update(extra_fields(record))
        ref = getattr(record, "k8s_ref", None)
        if ref is not None:
            entry["object"] = ref
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        entry["timestamp"] = datetime.datetime.fromtimestamp(
            record.created, tz=datetime.UTC).isoformat()
        entry["severity"] = severity(record.levelno)
        entry["logger"] = record.name
        # default=str: an odd extra value must never cost the log line.
        return json.dumps(entry, default=str)


class ContextLogger(logging.LoggerAdapter[logging.Logger]):
    """Adds fixed fields (``node``) to every record and keeps the call's own ``extra``
    (the standard adapter would drop it)."""

    def process(self, msg: Any,
                kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def context_logger(name: str, **fields: Any) -> ContextLogger:
    return ContextLogger(logging.getLogger(name), fields)


def _name_as_field(record: logging.LogRecord) -> bool:
    # kopf's formatter prints every non-standard attribute: this puts the logger's name in too.
    record.logger = record.name
    return True


def configure_logging(log_format: str, verbose: bool = False,
                      stream: Any = None) -> None:
    """Set up the process's logging: ``text`` (one readable line) or ``json``.

    ``json`` lets kopf format its own loggers (and third parties') through the root logger,
    and gives ours their own handler with :class:`JsonFormatter`. ``verbose``: INFO, else
    WARNING.
    """
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    level = logging.INFO if verbose else logging.WARNING
    stream = stream or sys.stderr
    ours = logging.getLogger(OUR_LOGGERS)
    for handler in list(ours.handlers):
        ours.removeHandler(handler)
    if log_format == "text":
        ours.propagate = True
        logging.basicConfig(level=level, format=TEXT_FORMAT, stream=stream, force=True)
        return
    import kopf  # only the cluster components log JSON, and they have kopf

    root = logging.getLogger()
    before = set(root.handlers)
    kopf.configure(log_format=kopf.LogFormat.JSON, quiet=not verbose)
    root.setLevel(level)
    for kopf_handler in set(root.handlers) - before:
        if isinstance(kopf_handler, logging.StreamHandler):
            kopf_handler.setStream(stream)
        kopf_handler.addFilter(_name_as_field)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    ours.addHandler(handler)
    ours.propagate = False

