"""Never move backwards: a push (or polled) deploy job whose commit is not newer than what is
live ends superseded instead of deploying, and between pending jobs the descendant wins.

Webhook intake already ignores a push of a commit that was live once (database only, in the
transaction that records the delivery: `Jobs.enqueue_superseding(forward_only=True)`). What
needs git is decided here, when the job runs: under the project's lock, after a fetch,
``git merge-base --is-ancestor`` says whether the job's commit is an ancestor of the live one
(a late or replayed delivery: not deployed), and whether a job it superseded on arrival holds
a descendant of its commit (deliveries that arrived out of order: that job is put back in the
queue and this one ends superseded by it). A force push (a commit that is no descendant of
the live one, nor its ancestor) deploys as usual. Operators'
explicit deploys (API, CLI) and rollbacks never come here.
"""

from __future__ import annotations

import logging

from gatebot.errors import NotNewer, SourceError
from gatebot.model import JobKind, OriginKind
from gatebot.pipeline.engine import Engine
from gatebot.store.jobs import Job

log = logging.getLogger("gatebot.pipeline")

FORWARD_ONLY = frozenset({OriginKind.PUSH, OriginKind.POLL})


async def ensure_forward(engine: Engine, job: Job) -> None:
    """Raise NotNewer unless `job` may deploy its commit; nothing for other kinds of jobs."""
    if job.kind is not JobKind.DEPLOY or job.sha is None or job.origin.kind not in FORWARD_ONLY:
        return
    project = engine.settings.project(job.project)
    sha = job.sha
    active = await engine.store.deployments.active(project.name)
    live = active.commit_sha if active is not None else None
    replaced = await engine.store.jobs.superseded_by(job.id)
    if live is None and not replaced:
        return  # nothing to compare with: no fetch needed
    async with engine.locks.hold(project.name, f"checking that {sha[:12]} is new"):
        full = await engine.source.fetch(project.name, project.repo, project.branch, sha)
        active = await engine.store.deployments.active(project.name)
        live = active.commit_sha if active is not None else None
        if live is not None and (full == live or await _ancestor(engine, job, full, live)):
            raise NotNewer(f"{full[:12]} is not newer than the live commit {live[:12]}")
        newer = [
            other
            for other in replaced
            if other.sha
            and other.kind is JobKind.DEPLOY
            and other.sha != full
            and await _ancestor(engine, job, full, other.sha)
        ]
        if not newer:
            return
        tip = newer[-1]
        for other in newer:  # the one every other descends to, else the latest to arrive
            if await _descends_from_all(engine, job, other, newer):
                tip = other
                break
        revived = await engine.store.jobs.revive(tip.id)
        if revived is None:
            return
        raise NotNewer(
            f"superseded by job {tip.id} ({str(tip.sha)[:12]}), which descends from it", by=tip.id
        )


async def _descends_from_all(engine: Engine, job: Job, tip: Job, jobs: list[Job]) -> bool:
    for other in jobs:
        if other is not tip and not await _ancestor(engine, job, str(other.sha), str(tip.sha)):
            return False
    return True


async def _ancestor(engine: Engine, job: Job, ancestor: str, descendant: str) -> bool:
    try:
        return await engine.source.is_ancestor(job.project, ancestor, descendant)
    except SourceError as exc:  # a commit not fetched (force-pushed away): not related
        log.info("job %s: %s", job.id, exc, extra={"project": job.project, "job": job.id})
        return False
