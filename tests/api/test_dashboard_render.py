"""The dashboard's pages rendered from plain values: what they show, what they escape and
redact, and that the buttons (with their CSRF token) appear only for a deploy session."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gatebot.api.dashboard_render import (
    Bar,
    ProjectState,
    Viewer,
    commit_base,
    first_line,
    gate_text,
    page_number,
    queue_state,
    render_job,
    render_overview,
    render_project,
    render_sign_in,
    rollback_choices,
    took,
)
from gatebot.model import Color, JobKind, JobState, Origin, OriginKind, Status
from gatebot.runtime.base import SlotTask
from gatebot.settings import Settings, parse_settings
from gatebot.store.deployments import Deployment
from gatebot.store.jobs import Job

EVIL = '<script>alert("x")</script>'
SECRET = "hunter2-database-password"
SHA = "0123456789abcdef0123456789abcdef01234567"
NONCE = "n0nce"
CSRF = "csrf-token-of-the-session"


def settings(**project: Any) -> Settings:
    raw = {
        "server": {"data_dir": "/tmp/gatebot-render-test"},
        "projects": [
            {
                "name": "shop",
                "repo": "https://user:pass@github.com/acme/shop.git",
                "base_port": 3100,
                **project,
            }
        ],
    }
    return parse_settings(raw, source=Path("/tmp/gatebot.toml"))


def deployment(**fields: Any) -> Deployment:
    base: dict[str, Any] = {
        "id": 3,
        "project": "shop",
        "version": 3,
        "commit_sha": SHA,
        "commit_message": f"fix {EVIL}\n\nmore lines",
        "image": "gatebot/shop:3-0123456789ab",
        "container": "gatebot-shop-blue",
        "color": Color.BLUE,
        "port": 3100,
        "status": Status.ACTIVE,
        "error": None,
        "failed_stage": None,
        "trigger": f"push:{EVIL}",
        "created_at": "2026-01-02T03:04:05.000+00:00",
        "updated_at": "2026-01-02T03:04:09.000+00:00",
        "activated_at": "2026-01-02T03:04:08.500+00:00",
        "finished_at": "2026-01-02T03:04:09.000+00:00",
    }
    return Deployment(**{**base, **fields})


def job(**fields: Any) -> Job:
    base: dict[str, Any] = {
        "id": 9,
        "project": "shop",
        "kind": JobKind.DEPLOY,
        "sha": SHA,
        "target": None,
        "state": JobState.QUEUED,
        "trigger": "token:ci",
        "delivery_id": None,
        "origin": Origin(kind=OriginKind.API, who="ci"),
        "deployment_id": None,
        "error": None,
        "superseded_by": None,
        "retry_of": None,
        "created_at": "2026-01-02T03:05:00.000+00:00",
        "updated_at": "2026-01-02T03:05:00.000+00:00",
        "started_at": None,
        "finished_at": None,
    }
    return Job(**{**base, **fields})


def state(s: Settings, **fields: Any) -> ProjectState:
    base: dict[str, Any] = {
        "project": s.projects[0],
        "active": deployment(),
        "deploying": None,
        "busy_by": None,
        "stage": None,
        "queued": 0,
        "failure": None,
        "commit_base": commit_base(s, s.projects[0]),
    }
    return ProjectState(**{**base, **fields})


def bar(viewer: Viewer | None = None) -> Bar:
    return Bar(
        version="0.1.0", queue="running", queue_class="q-ok", viewer=viewer or Viewer("ci", "read")
    )


DEPLOYER = Viewer(name="ops", scope="deploy", csrf=CSRF)


def test_the_overview_shows_each_project_escaped_and_redacted() -> None:
    s = settings()
    failed = deployment(
        id=4,
        version=4,
        status=Status.FAILED,
        failed_stage="health",
        error=f"app said {SECRET} and {EVIL}",
        activated_at=None,
    )
    running = deployment(id=5, version=5, status=Status.DEPLOYING, activated_at=None)
    shown = state(
        s, failure=failed, deploying=running, busy_by="deploy by token:ci", stage="build", queued=2
    )
    page = render_overview(bar(), [shown], NONCE, (SECRET,))

    assert EVIL not in page and "<script>alert" not in page
    assert "fix &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "more lines" not in page, "only the first line of the message"
    assert f'href="https://github.com/acme/shop/commit/{SHA}"' in page
    assert f'<code title="{SHA}">0123456</code>' in page
    assert "<dt>Color</dt><dd>blue</dd>" in page
    assert "<dt>Since</dt><dd>2026-01-02 03:04:08 UTC</dd>" in page
    assert "push:&lt;script&gt;" in page
    assert 'href="/deployments/5">v5</a> at <strong>build</strong>, deploy by token:ci' in page
    assert "<dt>Waiting</dt><dd>2 jobs</dd>" in page
    assert '<span class="error">health: app said *** and &lt;script&gt;' in page
    assert SECRET not in page
    assert "user:pass" not in page, "credentials in the repository URL are redacted"
    # The only script is the page's own, with its nonce; it follows /events.
    scripts = re.findall(r"<script[^>]*>", page)
    assert scripts == [f'<script nonce="{NONCE}">'], scripts
    assert 'new EventSource("/events")' in page
    # The top bar: version, queue state, metrics and the OpenAPI document.
    assert "0.1.0" in page and 'id="queue" class="q-ok">running<' in page
    assert 'href="/metrics"' in page and 'href="/api/v1/openapi.json"' in page


def test_a_project_with_nothing_live_says_so() -> None:
    s = settings()
    page = render_overview(bar(), [state(s, active=None)], NONCE, ())
    assert "nothing live yet" in page and "<dt>Waiting</dt><dd>0 jobs</dd>" in page


def test_buttons_only_for_a_deploy_session() -> None:
    s = settings()
    history = [
        deployment(),
        deployment(id=2, version=2, status=Status.ROLLED_BACK, commit_message=f"two {SECRET}"),
        deployment(id=1, version=1, status=Status.FAILED, error="boom", failed_stage="build"),
    ]
    jobs = [job(), job(id=8, state=JobState.SUCCEEDED, deployment_id=3)]
    args: dict[str, Any] = {
        "history": history,
        "page": 1,
        "more": False,
        "jobs": jobs,
        "choices": rollback_choices(history, history[0]),
        "nonce": NONCE,
        "secrets": [SECRET],
    }
    deployer = render_project(bar(DEPLOYER), state(s), **args)
    forms = re.findall(r'<form[^>]*action="([^"]+)"', deployer)
    assert forms == [
        "/sign-out",
        "/projects/shop/deploy",
        "/projects/shop/rollback",
        "/jobs/9/cancel",
    ]
    assert deployer.count(f'<input type="hidden" name="csrf" value="{CSRF}">') == 4
    assert '<option value="2">v2 · 0123456 two ***</option>' in deployer
    assert 'value="1"' not in deployer, "a failed release is no rollback target"
    assert 'data-job="8"' in deployer and 'href="/deployments/3">deployment</a>' in deployer
    assert "<script" not in deployer, "the project page needs no script"
    assert SECRET not in deployer

    reader = render_project(bar(Viewer("viewer", "read", csrf=CSRF)), state(s), **args)
    assert re.findall(r'<form[^>]*action="([^"]+)"', reader) == ["/sign-out"]
    assert "Cancel" not in reader and "Deploy</button>" not in reader
    # A deploy token through a Bearer header (no session, so no CSRF token): no buttons either.
    bearer = render_project(bar(Viewer("ops", "deploy")), state(s), **args)
    assert "<form" not in bearer
    public = render_project(bar(Viewer()), state(s), **args)
    assert "<form" not in public and 'href="/sign-in">Sign in<' in public


def test_history_rows_and_pages() -> None:
    s = settings()
    failed = deployment(
        id=1,
        version=1,
        status=Status.FAILED,
        error=f"exit 3 {EVIL}",
        failed_stage="health",
        activated_at=None,
        finished_at="2026-01-02T03:04:07.000+00:00",
    )
    page = render_project(
        bar(),
        state(s),
        history=[failed],
        page=2,
        more=True,
        jobs=[],
        choices=[],
        nonce=NONCE,
        secrets=(),
    )
    row = re.search(r'<tr data-deployment="1">.*?</tr>', page, re.S)
    assert row, page
    assert '<span class="status s-FAILED">FAILED</span>' in row.group(0)
    assert '<td class="num">2.0 s</td>' in row.group(0)
    assert "health: exit 3 &lt;script&gt;" in row.group(0)
    assert 'href="?page=1" rel="prev"' in page and 'href="?page=3" rel="next"' in page
    assert "No jobs yet." in page


def test_a_notice_is_shown_as_an_alert() -> None:
    s = settings()
    page = render_project(
        bar(DEPLOYER),
        state(s),
        history=[],
        page=1,
        more=False,
        jobs=[],
        choices=[],
        nonce=NONCE,
        secrets=(),
        notice=f"project 'shop' is busy: {EVIL}",
        problem=True,
    )
    assert (
        '<p class="notice problem" role="alert" id="notice">project &#x27;shop&#x27; is busy: '
        "&lt;script&gt;" in page
    )


def test_a_waiting_job_page_reloads_itself_and_an_ended_one_does_not() -> None:
    waiting = render_job(bar(), job(), NONCE, ())
    assert '<meta http-equiv="refresh" content="1">' in waiting
    assert "<script" not in waiting
    ended = render_job(bar(), job(state=JobState.CANCELLED, error=f"no {SECRET}"), NONCE, (SECRET,))
    assert "refresh" not in ended and "cancelled" in ended and SECRET not in ended


def test_the_sign_in_form() -> None:
    page = render_sign_in(f"bad {EVIL}", NONCE, next_path='/projects/shop?"x')
    assert '<form method="post" action="/sign-in">' in page
    assert 'name="next" value="/projects/shop?&quot;x"' in page
    assert 'type="password" name="token"' in page and "bad &lt;script&gt;" in page


def test_forge_links() -> None:
    s = settings()
    assert commit_base(s, s.projects[0]) == "https://github.com/acme/shop/commit/"
    ghes = s.model_copy(
        update={"github": s.github.model_copy(update={"api_url": "https://git.example.com/api/v3"})}
    )
    assert commit_base(ghes, s.projects[0]) == "https://git.example.com/acme/shop/commit/"
    lab = settings(forge="gitlab", forge_repo="group/sub/shop")
    assert commit_base(lab, lab.projects[0]) == "https://gitlab.com/group/sub/shop/-/commit/"
    odd = s.projects[0].model_copy(update={"forge_repo": 'a"b/<c>'})
    assert commit_base(s, odd) == "https://github.com/a%22b/%3Cc%3E/commit/"


def test_small_helpers() -> None:
    assert queue_state({"database": "ok", "docker": "ok", "queue": "ok"}) == ("running", "q-ok")
    assert queue_state({"docker": "ok", "queue": "paused"})[0] == "paused"
    assert (
        queue_state(
            {
                "docker": "unavailable: down",
                "queue": "not started: waiting for the Docker engine: down",
            }
        )[0]
        == "waiting for Docker"
    )
    assert queue_state({"docker": "ok", "queue": "stopped: the dispatcher has died"})[1] == "q-bad"
    assert first_line("  \n") == "" and first_line(None) == "" and first_line("a\nb") == "a"
    assert first_line("x" * 200, 10) == "x" * 9 + "…"
    assert took(deployment()) == "4.0 s"
    assert (
        took(deployment(status=Status.DEPLOYING, activated_at=None, finished_at=None)) == "running"
    )
    for raw, expected in ((None, 1), ("2", 2), ("0", 1), ("-3", 1), ("x", 1), ("9" * 40, 1)):
        assert page_number(raw) == expected, raw


def test_a_gated_job_says_what_it_waits_for_and_can_be_cancelled() -> None:
    gate = {"required": ["test", "lint"], "pending": ["lint"], "failed": [], "passed": ["test"]}
    waiting = job(state=JobState.WAITING, gate=gate)
    page = render_job(bar(), waiting, NONCE, ())
    assert '<p id="gate">waits for checks: lint</p>' in page
    assert '<meta http-equiv="refresh" content="1">' in page
    s = settings()
    project = render_project(
        bar(DEPLOYER),
        state(s),
        history=[],
        page=1,
        more=False,
        jobs=[waiting],
        choices=[],
        nonce=NONCE,
        secrets=(),
    )
    row = re.search(r'<tr data-job="9">.*?</tr>', project, re.S)
    assert row, project
    assert "waits for checks: lint" in row.group(0)
    assert 'aria-label="Cancel job 9"' in row.group(0)


def test_gate_text_names_failed_checks_first() -> None:
    assert gate_text({"pending": ["a"], "failed": ["b"]}) == "checks failed: b"
    assert gate_text(None) == "waits for its commit's checks"
    assert gate_text({"pending": [], "failed": [], "reason": "waiting for checks to appear"}) == (
        "waiting for checks to appear"
    )


def test_a_live_swarm_release_shows_where_its_tasks_run_escaped_and_redacted() -> None:
    tasks = [
        SlotTask(node="n1", address="10.0.0.11", state="running", desired="running"),
        SlotTask(node=EVIL, address="10.0.0.12", state="failed", desired="running", error=SECRET),
    ]
    page = render_overview(bar(), [state(settings(), tasks=tasks)], NONCE, (SECRET,))
    assert "<dt>Tasks</dt>" in page
    assert "n1 <code>10.0.0.11</code> running" in page
    assert EVIL not in page and SECRET not in page
    assert "&lt;script&gt;" in page and "failed (***)" in page
    assert "<dt>Tasks</dt>" not in render_overview(bar(), [state(settings())], NONCE, ())
