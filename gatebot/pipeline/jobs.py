"""What a queued job does: a deploy or a rollback, through the same pipeline as the CLI."""

from __future__ import annotations

from gatebot.model import JobKind, OriginKind
from gatebot.pipeline.deploy import deploy
from gatebot.pipeline.engine import Engine
from gatebot.pipeline.forward import ensure_forward
from gatebot.pipeline.journal import Listener
from gatebot.pipeline.rollback import rollback
from gatebot.store.deployments import Deployment
from gatebot.store.jobs import Job


async def run_job(engine: Engine, job: Job, listeners: list[Listener]) -> Deployment:
    if job.kind is JobKind.ROLLBACK:
        if job.origin.kind is OriginKind.COMMENT:  # decided against the release live then
            return await rollback(
                engine,
                job.project,
                to=job.target,
                trigger=job.trigger,
                listeners=listeners,
                expect_active=job.origin.expect_active,
            )
        return await rollback(
            engine, job.project, to=job.target, trigger=job.trigger, listeners=listeners
        )
    await ensure_forward(engine, job)  # a push or poll of an older commit: NotNewer
    return await deploy(engine, job.project, sha=job.sha, trigger=job.trigger, listeners=listeners)
