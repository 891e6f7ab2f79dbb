"""Log output: readable lines on a terminal, or one JSON object per line for a log pipeline.

Many log calls pass context as ``extra={"project": ..., "job": ..., ...}``; both formats show
it. Both also redact on the way out (`gatebot.redact`): the configured secrets, anything
shaped like a gatebot API token, and credentials in URLs, so a secret that slips into a
message or an exception never reaches the log.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal, TextIO

from gatebot.redact import redact

LogFormat = Literal["text", "json"]
CONTEXT_FIELDS = ("project", "job", "deployment", "delivery", "stage")
_HANDLER_MARK = "_gatebot_handler"


def context_of(record: logging.LogRecord) -> dict[str, object]:
    """The known context fields a log call passed in `extra`, without the empty ones."""
    found: dict[str, object] = {}
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None and value != "":
            found[name] = value
    return found


class TextFormatter(logging.Formatter):
    """``2025-01-01 12:00:00,000 INFO gatebot.queue: queued deploy of shop [project=shop job=3]``"""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.secrets = list(secrets)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = context_of(record)
        if context:
            head, sep, rest = line.partition("\n")
            tags = " ".join(f"{k}={v}" for k, v in context.items())
            line = f"{head} [{tags}]{sep}{rest}"
        return redact(line, self.secrets)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context fields, and the
    exception's traceback when there is one."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage(), self.secrets),
        }
        for name, value in context_of(record).items():
            entry[name] = redact(value, self.secrets) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info), self.secrets)
        return json.dumps(entry, default=str)


def configure_logging(
    fmt: LogFormat = "text",
    level: int = logging.WARNING,
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send the root logger to `stream` (stderr) in `fmt`; replaces gatebot's earlier handler,
    so calling it again (once the configuration is read) switches format in place."""
    # What no format of gatebot's shows, and each record would work out: the caller's file
    # and line (a stack walk), the thread's, process's and multiprocessing's names.
    # The logging HOWTO's "Optimization" section names these switches.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else TextFormatter(secrets))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
