"""The one redaction: configured secrets, API tokens and URL credentials, with one mask, in
linear time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gatebot.redact import MASK, redact, redact_url, secrets_of
from gatebot.settings import parse_settings

WEBHOOK_SECRET = "hook-secret-123456"
TOKEN = "gb_0123456789ab_" + "Z" * 43


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://user:tok3n@github.com/acme/shop.git", "https://***@github.com/acme/shop.git"),
        ("https://x-access-token:ghs_abc@github.com/a/b", "https://***@github.com/a/b"),
        ("https://oauth2@gitlab.com/a/b.git", "https://***@gitlab.com/a/b.git"),
        (
            "fatal: unable to access 'https://u:p4ss@host/x.git/': refused",
            "fatal: unable to access 'https://***@host/x.git/': refused",
        ),
        ("two: http://a:b@h1/x and ssh://c:d@h2/y", "two: http://***@h1/x and ssh://***@h2/y"),
        ("https://github.com/acme/shop.git", "https://github.com/acme/shop.git"),
        ("git@github.com:acme/shop.git", "git@github.com:acme/shop.git"),
        ("file:///srv/git/shop.git", "file:///srv/git/shop.git"),
        # A raw "@" in the password: nothing of it may stay behind.
        ("https://user:p@ss@w@rd@host/x.git", "https://***@host/x.git"),
        (
            "see https://u:a@b@host and mail bob@example.com",
            "see https://***@host and mail bob@example.com",
        ),
    ],
)
def test_redact_url(text: str, expected: str) -> None:
    assert redact_url(text) == expected


def test_credentials_of_any_length_are_redacted() -> None:
    password = "p" * 5000
    text = f"fatal: https://user:{password}@host/x.git"
    assert redact_url(text) == "fatal: https://***@host/x.git"


def test_redacting_a_very_long_line_takes_linear_time() -> None:
    """Every journal and streamed line goes through redact_url on the event loop: a long run of
    letters once took minutes (quadratic backtracking); now it is milliseconds."""
    line = "a" * 262_144 + " https://user:s3cret@example.com/x.git"
    started = time.process_time()
    redacted = redact_url(line)
    assert "s3cret" not in redacted and redacted.endswith("https://***@example.com/x.git")
    assert time.process_time() - started < 2.0


@pytest.mark.parametrize(
    "line",
    [
        "https://" + "a" * 262_144,  # one long userinfo with no "@"
        "x://a" * 50_000,  # many schemes in a row
        "https://a@" * 50_000,
    ],
)
def test_hostile_lines_take_linear_time(line: str) -> None:
    started = time.process_time()
    redact_url(line)
    assert time.process_time() - started < 2.0


def test_redact_masks_secrets_tokens_and_url_credentials() -> None:
    text = f"a {WEBHOOK_SECRET} b {TOKEN} c https://u:p@host/x"
    assert redact(text, [WEBHOOK_SECRET]) == "a *** b gb_*** c https://***@host/x"


def test_longer_secrets_are_masked_before_the_shorter_ones_they_contain() -> None:
    assert redact("x abcdef-long y", ["abcdef", "abcdef-long", None, ""]) == "x *** y"


def test_secrets_include_the_repository_password_and_build_args(tmp_path: Path) -> None:
    raw = {
        "github": {"webhook_secret": WEBHOOK_SECRET},
        "projects": [
            {
                "name": "shop",
                "repo": "https://deploy:s3cr%40t-pass@git.example.com/acme/shop.git",
                "base_port": 3100,
                "build_args": {"NPM_TOKEN": "npm-token-value"},
                "env": {"DEBUG": "1"},
            },
            {
                "name": "blog",
                "repo": "https://ghp_tokenasuser@github.com/acme/blog.git",
                "base_port": 3200,
            },
        ],
    }
    settings = parse_settings(raw, source=tmp_path / "gatebot.toml")
    secrets = secrets_of(settings)
    for value in (WEBHOOK_SECRET, "npm-token-value", "s3cr%40t-pass", "s3cr@t-pass"):
        assert value in secrets
    assert "ghp_tokenasuser" in secrets
    assert "1" not in secrets and "deploy" not in secrets
    assert secrets_of(settings) is secrets  # worked out once
    shown = redact("npm-token-value and s3cr@t-pass", secrets)
    assert shown == f"{MASK} and {MASK}"
