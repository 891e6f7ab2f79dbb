"""Start-up reconciliation: make Docker and nginx agree with the database after any crash.

First every configured project gets its nginx files (whether or not a release is live; nginx
is tested and reloaded once, and only if a file changed). Then for each project, under its lock
(a project another process is deploying is left alone; every deploy and rollback runs the
same `repair` of its project first, under the lock it already holds):
1. a deployment caught PENDING or DEPLOYING is marked FAILED;
2. the ACTIVE deployment's container is started (or recreated) if it is not running, and
   health-checked; only if that fails is it marked FAILED ("lost"), and then the newest
   earlier once-live release whose image exists is made live in its place (an automatic
   rollback, pipeline/rollback.py), or nothing is live when none can be;
3. the route marker is set from the database: the ACTIVE deployment's slot, or nothing live
   (503), also after a crash between a flip and the database update; a watch window that was
   running is closed (then `drain_seconds` pass if the route moved, so requests in flight
   finish);
4. gatebot's containers of the project that belong to no ACTIVE deployment are removed,
   the interrupted deployment's among them, and the old slot of a release whose watch window
   a crash cut short (that release stays ACTIVE: it passed its health check and was live);
   a slot of an earlier release is retired (`Runtime.retire`: on a swarm, its service scaled
   to 0 and kept for a rollback; on one host, removed all the same).
Afterwards nginx sends every project to its ACTIVE container, which is running.

`prune` removes the files of projects that left the configuration, only when asked. Nothing
at all is done while the database records no deployment but gatebot's releases exist
(pipeline/adopt.py): reconciling then would tear them down.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from gatebot.errors import GatebotError, LockHeld
from gatebot.model import Slot, Status
from gatebot.pipeline.adopt import refuse_unrecorded
from gatebot.pipeline.engine import Engine
from gatebot.pipeline.health import wait_healthy
from gatebot.pipeline.journal import last_stage
from gatebot.redact import redact, secrets_of
from gatebot.runtime.base import LABEL_DEPLOYMENT
from gatebot.settings import ProjectSettings
from gatebot.store.deployments import Deployment

log = logging.getLogger("gatebot.reconcile")


@dataclass
class ReconcileReport:
    interrupted: list[int] = field(default_factory=list)  # deployments marked FAILED
    restarted: list[int] = field(default_factory=list)  # ACTIVE ones brought back
    lost: list[int] = field(default_factory=list)  # ACTIVE ones that could not be brought back
    rolled_back: list[int] = field(default_factory=list)  # releases made live in place of lost
    removed_containers: list[str] = field(default_factory=list)
    nginx_changed: list[str] = field(default_factory=list)  # projects whose files changed
    routes_changed: list[str] = field(default_factory=list)  # projects whose marker moved
    pruned: list[str] = field(default_factory=list)  # files of projects no longer configured
    skipped: list[str] = field(default_factory=list)  # projects busy in another process

    def summary(self) -> str:
        parts = [
            f"{len(self.interrupted)} interrupted deployment(s) failed",
            f"{len(self.restarted)} live container(s) restarted",
            f"{len(self.lost)} lost",
            f"{len(self.rolled_back)} rolled back automatically",
            f"{len(self.removed_containers)} stray container(s) removed",
            f"{len(self.nginx_changed)} project(s) with new nginx files",
            f"{len(self.routes_changed)} route(s) set",
        ]
        if self.pruned:
            parts.append(f"{len(self.pruned)} file(s) of unconfigured projects removed")
        if self.skipped:
            parts.append(f"busy: {', '.join(self.skipped)}")
        return ", ".join(parts)


async def reconcile(
    engine: Engine, projects: list[str] | None = None, *, prune: bool = False
) -> ReconcileReport:
    await refuse_unrecorded(engine)  # a new database beside live releases: touch nothing
    report = ReconcileReport()
    chosen = [p for p in engine.settings.projects if projects is None or p.name in projects]
    report.nginx_changed = await engine.ensure_files(chosen)
    if prune:
        gone = engine.proxy.configured_elsewhere(p.name for p in engine.settings.projects)
        report.pruned = [str(path) for path in await engine.proxy.remove(gone)]
    for project in chosen:
        try:
            async with engine.locks.hold(project.name, "reconciliation"):
                await reconcile_project(engine, project, report)
        except LockHeld:
            report.skipped.append(project.name)
    return report


async def repair(engine: Engine, project: ProjectSettings) -> ReconcileReport:
    """Reconcile one project whose lock the caller holds: what every deploy and rollback does
    first, so that a process that died half-way (a killed CLI deploy) never leaves the route on
    a container the database does not know is live, or its rows and container behind."""
    await refuse_unrecorded(engine)
    report = ReconcileReport()
    await reconcile_project(engine, project, report, files=False)  # the switch writes them
    if report.interrupted or report.restarted or report.lost or report.removed_containers:
        log.warning(
            "repaired before deploying: %s", report.summary(), extra={"project": project.name}
        )
    return report


async def reconcile_project(
    engine: Engine, project: ProjectSettings, report: ReconcileReport, *, files: bool = True
) -> None:
    deployments = engine.store.deployments
    for stuck in await deployments.with_status(
        Status.PENDING, Status.DEPLOYING, project=project.name
    ):
        await _fail_interrupted(engine, stuck)
        report.interrupted.append(stuck.id)

    active = await deployments.active(project.name)
    if active is not None:
        outcome = await _bring_back(engine, project, active)
        if outcome == "lost":
            report.lost.append(active.id)
            active = await _roll_back(engine, project, active)
            if active is not None:
                report.rolled_back.append(active.id)
        elif outcome == "restarted":
            report.restarted.append(active.id)

    # Route to the live release first, so nothing removed below is still receiving traffic.
    engine.proxy.set_watch(project.name, False)
    if await engine.route_to(project, active, files=files):
        report.routes_changed.append(project.name)
        await asyncio.sleep(project.drain_seconds)

    runtime = engine.runtime_for(project.name)
    once_live: set[str] | None = None  # read only when there is a container to judge
    for container in await runtime.managed_containers(project.name):
        owner = container.labels.get(LABEL_DEPLOYMENT)
        if active is not None and owner == str(active.id):
            continue
        if once_live is None:
            earlier = await deployments.with_status(Status.ROLLED_BACK, project=project.name)
            once_live = {str(d.id) for d in earlier}
        if owner in once_live:  # an earlier release's slot (a retire cut short): retire it
            if not container.retired:
                await runtime.retire(container.name, timeout=project.stop_timeout)
                report.removed_containers.append(container.name)
                log.info("retired %s", container.name, extra={"project": project.name})
            continue
        await runtime.stop_and_remove(container.name, timeout=project.stop_timeout)
        report.removed_containers.append(container.name)
        log.info("removed stray container %s", container.name, extra={"project": project.name})


async def _fail_interrupted(engine: Engine, deployment: Deployment) -> None:
    """Mark FAILED; its container, if any, goes with the strays once nginx is right."""
    stage = last_stage(engine.log_path(deployment.id))
    if stage is None:
        steps = await engine.store.deployments.steps(deployment.id)
        stage = steps[-1].stage if steps else "queued"
    await engine.store.deployments.fail(
        deployment.id, stage=stage, error="interrupted: gatebot stopped during this deployment"
    )
    log.warning(
        "deployment %s was interrupted; marked FAILED",
        deployment.id,
        extra={"project": deployment.project, "deployment": deployment.id},
    )


async def _roll_back(
    engine: Engine, project: ProjectSettings, lost: Deployment
) -> Deployment | None:
    """The release made live in place of `lost` (an automatic rollback), or None: 503."""
    from gatebot.pipeline.rollback import roll_back_lost  # rollback imports this module

    return await roll_back_lost(engine, project, lost)


async def _bring_back(engine: Engine, project: ProjectSettings, active: Deployment) -> str:
    """Make sure the live release's container runs: "running", "restarted", or "lost"
    (then the deployment is marked FAILED)."""
    assert active.container and active.color and active.port and active.image
    runtime = engine.runtime_for(project.name)
    state = await runtime.state(active.container)
    ours = state is not None and state.labels.get(LABEL_DEPLOYMENT) == str(active.id)
    if ours and state is not None and (state.running or state.degraded):
        return "running"  # degraded: part of it answers and the engine converges the rest
    journal = engine.journal(active, None)
    try:
        if ours:
            await runtime.start(active.container)
            what = "started again"
        else:
            slot = Slot(container=active.container, color=active.color, port=active.port)
            await runtime.run(engine.container_spec(project, active, active.image, slot))
            what = "recreated"
        await wait_healthy(
            runtime, active.container, active.port, project.health, on_probe=engine.on_probe
        )
    except GatebotError as exc:
        await journal.note("reconcile", f"live container could not be brought back: {exc}")
        await engine.store.deployments.fail(
            active.id,
            stage="reconcile",
            error=redact(
                f"container could not be brought back: {exc}", secrets_of(engine.settings)
            ),
        )
        return "lost"
    await journal.note("reconcile", f"live container {active.container} {what} and healthy")
    return "restarted"
