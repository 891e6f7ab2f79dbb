"""The JSON shapes of records (gatebot/api/views.py): pure, so tested without a server."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from gatebot.api.views import active_view, deployment_view, project_view, stream_finished
from gatebot.model import Color, Status
from gatebot.runtime.base import SlotTask
from gatebot.settings import parse_settings
from gatebot.store.deployments import Deployment

SECRET = "s3cr3t-database-password"


BASE = Deployment(
    id=7,
    project="shop",
    version=3,
    commit_sha="a" * 40,
    commit_message="fix checkout",
    image="gatebot/shop:3-aaaaaaaaaaaa",
    container="gatebot-shop-green",
    color=Color.GREEN,
    port=3101,
    status=Status.FAILED,
    error=None,
    failed_stage=None,
    trigger="push:octocat",
    created_at="2026-01-01T00:00:00Z",
    updated_at="2026-01-01T00:00:01Z",
    activated_at=None,
    finished_at="2026-01-01T00:00:01Z",
)


def deployment(**changes: Any) -> Deployment:
    return replace(BASE, **changes)


def test_a_deployment_view_shows_no_secret_from_its_free_text() -> None:
    d = deployment(
        error=f"health: container exited; it printed {SECRET}",
        commit_message=f"set password to {SECRET}",
        failed_stage="health",
    )
    view = deployment_view(d, [SECRET])
    assert SECRET not in str(view)
    assert view["error"] == "health: container exited; it printed ***"
    assert (view["status"], view["color"], view["failedStage"]) == ("FAILED", "green", "health")
    assert (view["page"], view["logs"]) == ("/deployments/7", "/api/v1/deployments/7/logs")


def test_a_project_view_hides_the_credentials_in_its_repository_url(tmp_path: Path) -> None:
    settings = parse_settings(
        {
            "projects": [
                {
                    "name": "shop",
                    "repo": "https://ci:hunter2@git.example.com/acme/shop.git",
                    "base_port": 3100,
                    "forge": "gitlab",
                    "forge_repo": "acme/shop",
                }
            ]
        },
        source=tmp_path / "gatebot.toml",
    )
    view = project_view(settings.projects[0], None, None, queued=2)
    assert "hunter2" not in str(view)
    assert view["repo"] == "https://***@git.example.com/acme/shop.git"
    assert (view["active"], view["deploying"], view["queued"]) == (None, None, 2)


def test_a_stream_ends_when_nobody_writes_to_its_deployment_any_more() -> None:
    d = deployment(id=7, status=Status.ACTIVE)
    # Nobody works on the project: finished, whatever its status.
    assert stream_finished(d, None, None, newest_id=7)
    # Another process (a CLI deploy) holds the lock: its newest deployment goes on...
    assert not stream_finished(d, None, "deploy by cli:alice", newest_id=7)
    # ...but an older one is finished.
    assert stream_finished(d, None, "deploy by cli:alice", newest_id=8)


def test_a_live_releases_view_lists_its_tasks_and_none_on_one_host() -> None:
    live = deployment(status=Status.ACTIVE, activated_at="2026-01-01T00:00:01Z")
    tasks = [
        SlotTask(node="n1", address="10.0.0.11", state="running", desired="running"),
        SlotTask(node="n2", address="10.0.0.12", state="rejected", desired="running", error="x"),
    ]
    shown = active_view(live, tasks)
    assert shown is not None and shown["tasks"] == [
        {"node": "n1", "address": "10.0.0.11", "state": "running", "desired": "running",
         "error": None},
        {"node": "n2", "address": "10.0.0.12", "state": "rejected", "desired": "running",
         "error": "x"},
    ]  # fmt: skip
    one_host = active_view(live)
    assert one_host is not None and one_host["tasks"] == []
