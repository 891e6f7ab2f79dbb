"""The JSON shapes of gatebot's records, as the REST API, the live stream and the pages show
them: pure functions from store rows to dicts, so every surface says the same thing.

Only what an operator needs leaves the server: a job's forge context stays inside, repository
URLs lose their credentials, and free text (errors, step messages) is redacted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gatebot.redact import redact, redact_url
from gatebot.runtime.base import SlotTask
from gatebot.settings import ProjectSettings
from gatebot.store.deployments import Deployment, Step
from gatebot.store.jobs import Job


def _text(value: str | None, secrets: Sequence[str]) -> str | None:
    return redact(value, secrets) if value is not None else None


def deployment_view(d: Deployment, secrets: Sequence[str] | None = None) -> dict[str, Any]:
    secrets = secrets or []
    return {
        "id": d.id,
        "project": d.project,
        "version": d.version,
        "status": str(d.status),
        "commit": d.commit_sha,
        "commitMessage": _text(d.commit_message, secrets),
        "image": d.image,
        "container": d.container,
        "color": d.color,
        "port": d.port,
        "trigger": d.trigger,
        "error": _text(d.error, secrets),
        "failedStage": d.failed_stage,
        "createdAt": d.created_at,
        "updatedAt": d.updated_at,
        "activatedAt": d.activated_at,
        "finishedAt": d.finished_at,
        "page": f"/deployments/{d.id}",
        "logs": f"/api/v1/deployments/{d.id}/logs",
    }


def step_view(s: Step, secrets: Sequence[str] | None = None) -> dict[str, Any]:
    return {
        "id": s.id,
        "at": s.at,
        "stage": s.stage,
        "message": redact(s.message, secrets or []),
        "duration": s.duration,
    }


def job_view(j: Job, secrets: Sequence[str] | None = None) -> dict[str, Any]:
    return {
        "id": j.id,
        "project": j.project,
        "kind": j.kind,
        "state": j.state,
        "sha": j.sha,
        "target": j.target,
        "trigger": j.trigger,
        "delivery": j.delivery_id,
        "deployment": j.deployment_id,
        "error": _text(j.error, secrets or []),
        "supersededBy": j.superseded_by,
        "retryOf": j.retry_of,
        "createdAt": j.created_at,
        "updatedAt": j.updated_at,
        "startedAt": j.started_at,
        "finishedAt": j.finished_at,
        "gate": j.gate,  # a gated push: the checks it waits (or waited) for
    }


def task_view(t: SlotTask) -> dict[str, Any]:
    """One task of a live release: the node it runs on and its state (a swarm)."""
    return {
        "node": t.node,
        "address": t.address,
        "state": t.state,
        "desired": t.desired,
        "error": t.error or None,
    }


def active_view(d: Deployment | None, tasks: Sequence[SlotTask] = ()) -> dict[str, Any] | None:
    if d is None:
        return None
    return {
        "deployment": d.id,
        "version": d.version,
        "commit": d.commit_sha,
        "color": d.color,
        "port": d.port,
        "since": d.activated_at,
        "trigger": d.trigger,
        "tasks": [task_view(t) for t in tasks],  # empty on one host
    }


def busy_view(
    running: Job | None, holder: str | None, deploying: Deployment | None
) -> dict[str, Any] | None:
    """What is deploying the project now: this server's running job, or another process
    holding the project's lock (a CLI deploy), or nothing (None). `holder` says who."""
    if running is None and holder is None:
        return None
    return {
        "job": running.id if running else None,
        "kind": running.kind if running else None,
        "deployment": (running.deployment_id if running else None)
        or (deploying.id if deploying else None),
        "by": holder,
    }


def project_view(
    project: ProjectSettings,
    active: Deployment | None,
    busy: dict[str, Any] | None,
    queued: int,
    tasks: Sequence[SlotTask] = (),
) -> dict[str, Any]:
    return {
        "name": project.name,
        "repo": redact_url(project.repo),
        "branch": project.branch,
        "forge": project.forge,
        "forgeRepo": project.forge_repo,
        "active": active_view(active, tasks),
        "deploying": busy,
        "queued": queued,
    }


def stream_finished(
    d: Deployment, running: Job | None, holder: str | None, newest_id: int | None
) -> bool:
    """Whether nothing more will be written to `d`'s log.

    The status alone does not say: a deploy keeps logging after going ACTIVE while it drains
    and retires the old slot, and a rollback appends its steps to the ROLLED_BACK release it
    brings back. So `d` is finished when no job of this server works on it (`running` is the
    project's running job, if any) and no other process (a CLI deploy) holds the project's
    lock while `d` is the project's newest deployment. A deployment left PENDING or DEPLOYING
    by a crash is finished too: nobody writes to it any more.
    """
    if running is not None:
        return running.deployment_id is not None and running.deployment_id != d.id
    return holder is None or newest_id != d.id
