"""The release gate's verdict, without I/O: which check states pass, fail or wait."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from gatebot.errors import ConfigError
from gatebot.gate import Check, Verdict, check_run, commit_status, gitlab_status, judge
from gatebot.settings import parse_settings


def verdict(
    required: Sequence[str] | str,
    checks: Sequence[Check],
    waited: float = 0.0,
    settle: float = 30.0,
    timeout: float = 3600.0,
) -> Verdict:
    return judge(required, checks, waited=waited, settle=settle, timeout=timeout)


def test_named_checks_pass_only_when_all_have_passed() -> None:
    test = check_run("test", "completed", "success")
    lint = check_run("lint", "in_progress", None)
    waiting = verdict(["test", "lint"], [test, lint])
    assert waiting.outcome == "pending"
    assert waiting.reason == "waiting for checks: lint"
    done = verdict(["test", "lint"], [test, check_run("lint", "completed", "neutral")])
    assert done.outcome == "passed"


def test_a_named_check_not_reported_yet_is_pending() -> None:
    assert verdict(["test"], []).outcome == "pending"
    assert verdict(["test"], [], waited=10_000, settle=0).pending == ["test"]


def test_failed_conclusions_fail_and_say_which() -> None:
    for conclusion in ("failure", "cancelled", "timed_out", "action_required", "stale"):
        result = verdict(["test", "lint"], [check_run("lint", "completed", conclusion)])
        assert result.outcome == "failed"
        assert result.reason == f"checks failed: lint ({conclusion})"


def test_neutral_and_skipped_pass() -> None:
    for conclusion in ("success", "neutral", "skipped"):
        assert verdict(["t"], [check_run("t", "completed", conclusion)]).outcome == "passed"


def test_statuses_success_passes_failure_and_error_fail_pending_waits() -> None:
    assert verdict(["ci"], [commit_status("ci", "success")]).outcome == "passed"
    assert verdict(["ci"], [commit_status("ci", "pending")]).outcome == "pending"
    assert verdict(["ci"], [commit_status("ci", "error")]).reason == "checks failed: ci (error)"
    assert verdict(["ci"], [commit_status("ci", "failure")]).outcome == "failed"


def test_the_newest_run_of_a_name_wins() -> None:
    old = check_run("test", "completed", "failure", order=1)
    rerun = check_run("test", "completed", "success", order=2)
    assert verdict(["test"], [rerun, old]).outcome == "passed"
    assert verdict(["test"], [old, check_run("test", "queued", None, order=3)]).outcome == (
        "pending"
    )


def test_all_waits_for_the_settle_time_then_passes_with_nothing_seen() -> None:
    assert verdict("all", [], waited=5, settle=30).outcome == "pending"
    assert verdict("all", [], waited=30, settle=30).outcome == "passed"
    seen = [check_run("build", "completed", "success")]
    assert verdict("all", seen, waited=5, settle=30).outcome == "pending"
    assert verdict("all", seen, waited=31, settle=30).outcome == "passed"


def test_all_waits_for_every_check_seen_and_ignores_gatebots_own() -> None:
    checks = [
        check_run("build", "completed", "success"),
        commit_status("deploy/other", "pending"),
        commit_status("gatebot/shop", "pending"),
        commit_status("gatebot/other", "failure"),
    ]
    result = verdict("all", checks, waited=100, settle=1)
    assert result.outcome == "pending" and result.pending == ["deploy/other"]


def test_a_failure_in_all_fails_at_once() -> None:
    checks = [check_run("build", "completed", "timed_out")]
    assert verdict("all", checks, waited=0).reason == "checks failed: build (timed_out)"


def test_timeout_fails_with_what_was_pending() -> None:
    result = verdict(["test", "lint"], [check_run("test", "in_progress", None)], waited=3600)
    assert result.outcome == "failed"
    assert result.reason == (
        "checks not done within 3600s: test (in_progress), lint (not reported)"
    )


def test_a_failure_beats_the_timeout_and_a_pass_at_the_deadline_stands() -> None:
    assert verdict(["t"], [check_run("t", "completed", "success")], waited=9999).outcome == (
        "passed"
    )


def test_a_name_both_a_run_and_a_status_fails_if_either_failed() -> None:
    checks = [check_run("ci", "completed", "success"), commit_status("ci", "failure")]
    assert verdict(["ci"], checks).outcome == "failed"


def test_gitlab_states() -> None:
    assert gitlab_status("t", "success", False).outcome == "passed"
    assert gitlab_status("t", "skipped", False).outcome == "passed"
    assert gitlab_status("t", "failed", False).outcome == "failed"
    assert gitlab_status("t", "failed", True).outcome == "passed"
    assert gitlab_status("t", "canceled", False).outcome == "failed"
    assert gitlab_status("t", "running", False).outcome == "pending"
    assert gitlab_status("t", "manual", False).outcome == "pending"
    assert gitlab_status("t", "manual", True).outcome == "passed"
    assert isinstance(gitlab_status("t", "created", False), Check)


def test_a_gate_without_the_forges_api_credentials_is_refused_naming_the_field() -> None:
    project = {
        "name": "shop",
        "repo": "https://github.com/acme/shop.git",
        "base_port": 3100,
        "gate": {"checks": ["test"]},
    }
    with pytest.raises(ConfigError) as refused:
        parse_settings({"projects": [project]}, source=Path("gatebot.toml"))
    assert "projects[0] (shop).gate" in str(refused.value)
    assert "[github] token" in str(refused.value)
    gitlab = {**project, "forge": "gitlab", "forge_repo": "acme/shop"}
    with pytest.raises(ConfigError, match=r"\[gitlab\] token"):
        parse_settings({"projects": [gitlab]}, source=Path("gatebot.toml"))
    ok = parse_settings(
        {"projects": [project], "github": {"token": "t"}}, source=Path("gatebot.toml")
    )
    assert ok.projects[0].gate is not None and ok.projects[0].gate.timeout == 3600


def test_gate_check_names_must_not_be_empty() -> None:
    project = {
        "name": "shop",
        "repo": "https://github.com/acme/shop.git",
        "base_port": 3100,
        "gate": {"checks": [" "]},
    }
    with pytest.raises(ConfigError, match=r"projects\[0\] \(shop\)\.gate\.checks"):
        parse_settings({"projects": [project], "github": {"token": "t"}}, source=Path("g.toml"))
