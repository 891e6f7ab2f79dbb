"""Log output: readable text or one JSON object per line, with the context fields, and never a
secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatebot.cli import main
from gatebot.logs import configure_logging
from gatebot.redact import secrets_of
from gatebot.settings import Settings, parse_settings

WEBHOOK_SECRET = "hook-secret-123456"
DB_PASSWORD = "postgres://shop:hunter2hunter2@db/shop"
TOKEN = "gb_0123456789ab_" + "Z" * 43


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Leave the root logger as it was found."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def settings_with_secrets(tmp_path: Path) -> Settings:
    raw = {
        "server": {"data_dir": str(tmp_path / "data"), "log_format": "json"},
        "github": {"webhook_secret": WEBHOOK_SECRET},
        "projects": [
            {
                "name": "shop",
                "repo": "https://github.com/acme/shop.git",
                "base_port": 3100,
                "env": {"DATABASE_URL": DB_PASSWORD, "DEBUG": "1"},
            }
        ],
    }
    return parse_settings(raw, source=tmp_path / "gatebot.toml")


def test_json_lines_carry_the_context_fields_and_no_secret(
    tmp_path: Path, root_logging: None
) -> None:
    settings = settings_with_secrets(tmp_path)
    secrets = secrets_of(settings)
    assert WEBHOOK_SECRET in secrets and DB_PASSWORD in secrets and "1" not in secrets
    out = io.StringIO()
    configure_logging("json", logging.INFO, secrets=secrets, stream=out)
    log = logging.getLogger("gatebot.test")
    log.info(
        "deploying with %s and %s",
        DB_PASSWORD,
        TOKEN,
        extra={"project": "shop", "job": 7, "deployment": 3, "delivery": "abc", "stage": "build"},
    )
    log.debug("not shown at INFO")
    try:
        raise RuntimeError(f"bad secret {WEBHOOK_SECRET}")
    except RuntimeError:
        log.exception("failed for https://user:pw@example.com/repo.git", extra={"job": 8})

    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "info" and first["logger"] == "gatebot.test"
    assert first["message"] == "deploying with *** and gb_***"
    assert (first["project"], first["job"], first["deployment"], first["delivery"]) == (
        "shop",
        7,
        3,
        "abc",
    )
    assert first["stage"] == "build" and first["time"].endswith("+00:00")
    assert second["message"] == "failed for https://***@example.com/repo.git"
    assert second["job"] == 8 and "project" not in second
    assert "RuntimeError: bad secret ***" in second["exception"]
    for secret in (WEBHOOK_SECRET, DB_PASSWORD, TOKEN, "user:pw"):
        assert secret not in out.getvalue()


def test_text_lines_are_readable_with_their_context(root_logging: None) -> None:
    out = io.StringIO()
    configure_logging("text", logging.INFO, stream=out)
    logging.getLogger("gatebot.queue").info(
        "queued deploy of shop", extra={"project": "shop", "job": 3}
    )
    logging.getLogger("gatebot.queue").warning("plain")
    first, second = out.getvalue().splitlines()
    assert first.endswith(" INFO gatebot.queue: queued deploy of shop [project=shop job=3]")
    assert second.endswith(" WARNING gatebot.queue: plain")
    # Configuring again replaces gatebot's handler instead of adding a second one.
    configure_logging("json", logging.INFO, stream=out)
    handlers = [h for h in logging.getLogger().handlers if getattr(h, "_gatebot_handler", False)]
    assert len(handlers) == 1


def test_the_cli_logs_json_when_the_configuration_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], root_logging: None
) -> None:
    config = tmp_path / "gatebot.toml"
    config.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\nlog_format = "json"\n'
        f'[github]\nwebhook_secret = "{WEBHOOK_SECRET}"\n'
    )
    assert main(["-c", str(config), "-v", "token", "create", "ops"]) == 0
    logging.getLogger("gatebot.probe").info("secret is %s", WEBHOOK_SECRET, extra={"job": 1})
    err = capsys.readouterr().err
    entries = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert {"message": "secret is ***", "job": 1} == {
        k: v for k, v in entries[-1].items() if k in ("message", "job")
    }
