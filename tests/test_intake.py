"""The pure intake: what a verified delivery means, decided from the event, the settings and
what the database says, with no Docker, git, nginx or forge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gatebot.events import CommentCommand, Push
from gatebot.forges.errors import WebhookRejected
from gatebot.forges.github.sansio import verify_signature
from gatebot.intake import (
    Candidate,
    CommentAsk,
    Intake,
    ReleaseFacts,
    candidate_secrets,
    plan_push,
    plan_rollback,
    read_comment,
)
from gatebot.model import JobKind, OriginKind
from gatebot.settings import Settings, parse_settings
from tests.support.deliveries import github_signature


def settings_of(tmp_path: Path, *projects: dict[str, Any], **sections: Any) -> Settings:
    raw: dict[str, Any] = {"projects": list(projects), **sections}
    return parse_settings(raw, source=tmp_path / "gatebot.toml")


def project(name: str, port: int, repo: str = "acme/shop", **extra: Any) -> dict[str, Any]:
    return {"name": name, "repo": f"https://github.com/{repo}.git", "base_port": port, **extra}


def push(**overrides: Any) -> Push:
    fields: dict[str, Any] = {
        "forge": "github",
        "repo": "acme/shop",
        "ref": "refs/heads/main",
        "branch": "main",
        "sha": "6" * 40,
        "before": "5" * 40,
        "deleted": False,
        "pusher": "alice",
        "delivery_id": "d-1",
        "installation_id": 77,
    }
    fields.update(overrides)
    return Push(**fields)


def comment(body: str = "/rollback", sha: str = "3" * 40, author: str = "alice") -> CommentCommand:
    return CommentCommand(
        forge="github",
        repo="acme/shop",
        sha=sha,
        body=body,
        author=author,
        author_id=9,
        comment_id=11,
        delivery_id="d-2",
    )


# --- secrets ----------------------------------------------------------------------------------


def test_a_projects_own_secret_acts_for_that_project_only(tmp_path: Path) -> None:
    settings = settings_of(
        tmp_path,
        project("own", 3100, webhook_secret="own-secret"),
        project("wide", 3102),
        github={"webhook_secret": "forge-wide-secret"},
    )
    candidates = candidate_secrets(settings, "github", "forge-wide-secret")
    assert set(candidates) == {
        Candidate("own-secret", frozenset({"own"})),
        Candidate("forge-wide-secret", frozenset({"wide"})),
    }
    body = b'{"x": 1}'
    signature = github_signature(body, "forge-wide-secret")
    passed = next(c for c in candidates if _verifies(body, signature, c.secret))
    intake = plan_push(settings, push(), passed.projects)
    assert [j.project for j in intake.jobs] == ["wide"], "the forge-wide secret cannot deploy 'own'"


def test_the_repository_hint_only_orders_the_candidates(tmp_path: Path) -> None:
    settings = settings_of(
        tmp_path,
        project("a", 3100, repo="acme/a", webhook_secret="secret-of-a"),
        project("b", 3102, repo="acme/b", webhook_secret="secret-of-b"),
    )
    plain = candidate_secrets(settings, "github", None)
    hinted = candidate_secrets(settings, "github", None, repo_hint="acme/b")
    lying = candidate_secrets(settings, "github", None, repo_hint="evil/repo")
    assert hinted[0].projects == {"b"}
    assert set(plain) == set(hinted) == set(lying), "a hint never adds or removes a secret"


def test_no_secret_configured_gives_no_candidate(tmp_path: Path) -> None:
    settings = settings_of(tmp_path, project("shop", 3100))
    assert candidate_secrets(settings, "github", None) == []
    assert candidate_secrets(settings, "github", "") == []


def _verifies(body: bytes, signature: str, secret: str) -> bool:
    try:
        verify_signature(body, signature, secret)
    except WebhookRejected:
        return False
    return True


# --- pushes -----------------------------------------------------------------------------------


def test_a_push_to_the_tracked_branch_queues_that_exact_commit(tmp_path: Path) -> None:
    settings = settings_of(tmp_path, project("shop", 3100))
    [job] = plan_push(settings, push()).jobs
    assert (job.project, job.kind, job.sha) == ("shop", JobKind.DEPLOY, "6" * 40)
    assert job.origin.kind is OriginKind.PUSH and job.trigger == "push:alice"
    assert (job.origin.delivery_id, job.origin.installation_id) == ("d-1", 77)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"repo": "acme/other"}, "no project tracks acme/other"),
        ({"is_tag": True, "branch": None, "ref": "refs/tags/v1"}, "tag pushes are not deployed"),
        ({"deleted": True, "sha": "0" * 40}, "branch main was deleted"),
        ({"branch": "dev", "ref": "refs/heads/dev"}, "branch dev is not tracked"),
    ],
)
def test_pushes_that_deploy_nothing_say_why(
    tmp_path: Path, overrides: dict[str, Any], reason: str
) -> None:
    settings = settings_of(tmp_path, project("shop", 3100))
    assert plan_push(settings, push(**overrides)) == Intake(ignored=reason)


def test_one_push_queues_every_project_tracking_the_branch(tmp_path: Path) -> None:
    settings = settings_of(
        tmp_path, project("web", 3100), project("worker", 3102), project("docs", 3104, branch="x")
    )
    assert [j.project for j in plan_push(settings, push()).jobs] == ["web", "worker"]


# --- comments ---------------------------------------------------------------------------------


def test_comments_that_are_no_command_or_by_gatebot_are_ignored(tmp_path: Path) -> None:
    settings = settings_of(tmp_path, project("shop", 3100), github={"bot_login": "gatebot[bot]"})
    assert read_comment(settings, comment("looks good")) == Intake(ignored="not a command")
    mine = comment(author="GateBot[bot]")
    assert read_comment(settings, mine) == Intake(ignored="a comment by gatebot itself")


def test_a_malformed_command_is_answered_with_the_usage(tmp_path: Path) -> None:
    settings = settings_of(tmp_path, project("shop", 3100))
    first = read_comment(settings, comment("/rollback to yesterday"))
    assert isinstance(first, Intake) and first.project == "shop"
    assert first.answer is not None and "usage:" in first.answer and not first.jobs


def test_several_projects_need_a_name(tmp_path: Path) -> None:
    settings = settings_of(tmp_path, project("web", 3100), project("worker", 3102))
    first = read_comment(settings, comment("/rollback"))
    assert isinstance(first, Intake) and first.answer is not None
    assert "`/rollback web`" in first.answer
    named = read_comment(settings, comment("/rollback worker"))
    assert isinstance(named, CommentAsk) and named.project == "worker"


def _ask(tmp_path: Path, body: str = "/rollback") -> CommentAsk:
    first = read_comment(settings_of(tmp_path, project("shop", 3100)), comment(body))
    assert isinstance(first, CommentAsk)
    return first


def test_on_the_live_commit_it_rolls_back_from_the_live_release(tmp_path: Path) -> None:
    facts = ReleaseFacts(active_id=7, active_sha="3" * 40, has_earlier=True, commented_version=None)
    [job] = plan_rollback(comment(), _ask(tmp_path), facts).jobs
    assert (job.kind, job.target) == (JobKind.ROLLBACK, None), "the previous one, chosen when run"
    assert job.origin.expect_active == 7, "refused later if another release went live"
    assert job.origin.comment is not None and job.origin.comment.sha == "3" * 40
    assert job.trigger == "comment:alice"


def test_on_the_live_commit_with_nothing_earlier_it_answers(tmp_path: Path) -> None:
    facts = ReleaseFacts(
        active_id=7, active_sha="3" * 40, has_earlier=False, commented_version=None
    )
    intake = plan_rollback(comment(), _ask(tmp_path), facts)
    assert not intake.jobs and intake.answer == "shop has no earlier release to roll back to."


def test_on_an_older_commit_it_brings_that_release_back(tmp_path: Path) -> None:
    facts = ReleaseFacts(active_id=7, active_sha="9" * 40, has_earlier=True, commented_version=2)
    [job] = plan_rollback(comment(), _ask(tmp_path), facts).jobs
    assert (job.target, job.origin.expect_active) == ("2", 7)


def test_on_a_commit_never_live_it_answers(tmp_path: Path) -> None:
    facts = ReleaseFacts(active_id=7, active_sha="9" * 40, has_earlier=True, commented_version=None)
    intake = plan_rollback(comment(), _ask(tmp_path), facts)
    assert not intake.jobs and intake.answer is not None and "was never live" in intake.answer


def test_a_named_release_is_left_to_the_job(tmp_path: Path) -> None:
    facts = ReleaseFacts(active_id=None, active_sha=None, has_earlier=False, commented_version=None)
    [job] = plan_rollback(comment("/rollback to v1"), _ask(tmp_path, "/rollback to v1"), facts).jobs
    assert (job.target, job.origin.expect_active) == ("v1", None)
