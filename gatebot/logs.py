"""Log output: readable lines on a terminal, or one JSON object per line for a log pipeline.

Many log calls pass context as ``extra={"project": ..., "job": ..., ...}``; both formats show
it. Both also redact on the way out: the configured secrets (webhook secrets, forge tokens,
project environment values), anything shaped like a gatebot API token, and credentials in
URLs, so a secret that slips into a message or an exception never reaches the log.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal, TextIO

from pydantic import SecretStr

from gatebot.settings import Settings
from gatebot.vcs import redact_url

LogFormat = Literal["text", "json"]
CONTEXT_FIELDS = ("project", "job", "deployment", "delivery", "stage")
MASK = "***"
MIN_SECRET_LEN = 6  # shorter values ("1", "true", a port) would mask half the log
_API_TOKEN = re.compile(r"gb_[0-9a-f]{12}_[A-Za-z0-9_-]{8,}")
_HANDLER_MARK = "_gatebot_handler"


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value the configuration holds, longest first."""
    values: list[str] = []
    for section in (settings.github, settings.gitlab):
        for name in type(section).model_fields:
            value = getattr(section, name)
            if isinstance(value, SecretStr):
                values.append(value.get_secret_value())
    for project in settings.projects:
        if project.webhook_secret is not None:
            values.append(project.webhook_secret.get_secret_value())
        values.extend(settings.container_env(project).values())
    unique = {v for v in values if len(v) >= MIN_SECRET_LEN}
    return sorted(unique, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every secret, API token and URL credential replaced by ***."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, MASK)
    if "gb_" in text:  # every API token starts so: skip the search otherwise
        text = _API_TOKEN.sub("gb_" + MASK, text)
    return redact_url(text)


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
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else TextFormatter(secrets))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
