"""The blue-green deploy, as a straight line of stages:

lock -> repair (reconcile the project, so a process that died half-way leaves nothing behind)
-> source -> pick slot -> record DEPLOYING -> build -> run -> health (`healthy_threshold`
passes in a row) -> switch (a last liveness check, then flip the route marker; no nginx
reload) -> record ACTIVE -> watch window (the old slot still running) -> drain and retire the
old slot -> unlock. The container the live route points at is never
replaced or removed.

Any failure before the switch is recorded removes the new container and records FAILED; the
live release never stops serving. A bad verdict in the watch window flips the route back and
records the new release FAILED at `watch` and the old one ACTIVE again (pipeline/watch.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from gatebot.errors import GatebotError, RuntimeFailure, SourceError, StageFailed, describe
from gatebot.model import IN_FLIGHT, LIVE_ONCE, Slot, Status
from gatebot.pipeline.engine import Engine, image_tag, pick_slot
from gatebot.pipeline.health import still_healthy, wait_healthy
from gatebot.pipeline.journal import Journal, Listener
from gatebot.pipeline.reconcile import repair
from gatebot.pipeline.watch import watch_window
from gatebot.runtime.base import LABEL_DEPLOYMENT, BuildSpec
from gatebot.settings import ProjectSettings
from gatebot.store.deployments import Deployment

log = logging.getLogger("gatebot.pipeline")
# Pauses between attempts to record a deployment FAILED while the database refuses the write.
FAIL_RETRY_SECONDS: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


async def deploy(
    engine: Engine,
    project_name: str,
    *,
    sha: str | None = None,
    trigger: str,
    listeners: list[Listener] | None = None,
) -> Deployment:
    """Deploy `sha` (or the branch head) of a project; return the ACTIVE deployment.

    Raises LockHeld when the project is busy and StageFailed when a stage fails.
    """
    project = engine.settings.project(project_name)
    async with engine.locks.hold(project.name, f"deploy by {trigger}"):
        await repair(engine, project)  # another process may have died half-way (a CLI deploy)
        deployment = await engine.store.deployments.create(project.name, trigger)
        journal = engine.journal(deployment, listeners)
        await journal.note("queued", f"deploy v{deployment.version} started by {trigger}")
        return await _deploy(engine, project, deployment, sha, journal)


async def _deploy(
    engine: Engine,
    project: ProjectSettings,
    deployment: Deployment,
    sha: str | None,
    journal: Journal,
) -> Deployment:
    deployments = engine.store.deployments
    runtime = engine.runtime_for(project.name)
    active: Deployment | None = None
    slot: Slot | None = None
    switched = False
    try:
        async with journal.stage("source") as stage:
            checkout = await engine.source.checkout(project.name, project.repo, project.branch, sha)
            stage.message = f"{checkout.sha[:12]} {checkout.message}".strip()
        active = await deployments.active(project.name)
        slot = pick_slot(project, active)
        image = image_tag(runtime.image_repository(project.name), deployment.version, checkout.sha)
        deployment = await deployments.mark_deploying(
            deployment.id,
            commit_sha=checkout.sha,
            commit_message=checkout.message,
            image=image,
            slot=slot,
        )
        async with journal.stage("build") as stage:
            await runtime.build(build_spec(checkout.path, project, image), stage.output)
            stage.message = f"built {image}"
        async with journal.stage("run") as stage:
            refuse_live_slot(engine, project, slot)
            spec = engine.container_spec(project, deployment, image, slot)
            await runtime.run(spec)
            # A slot on other servers than its upstream lists (a swarm's nodes): rewrite it
            # now, while it takes no traffic, so the reload is applied when the switch flips.
            if await engine.upstream_moved(project, slot):
                await engine.ensure_files([project])
            stage.message = f"started {slot.container} ({slot.color}) on port {slot.port}"
        async with journal.stage("health") as stage:
            result = await wait_healthy(
                runtime, slot.container, slot.port, project.health, on_probe=engine.on_probe
            )
            stage.message = (
                f"healthy after {result.attempts} attempt(s), {result.latency_ms:.0f} ms"
            )
        async with journal.stage("switch") as stage:
            # reloads nginx only if its files changed (a swarm slot's upstream on new nodes)
            await engine.ensure_files([project])
            await still_healthy(  # it may have died since its last passing probe
                runtime, slot.container, slot.port, project.health, on_probe=engine.on_probe
            )
            switched = True  # from here on, undo puts the route back
            await engine.route_to(project, deployment, files=False)  # as mark_deploying said
            stage.message = f"{project.name} now routed to {slot.color} (port {slot.port})"
        async with journal.stage("record") as stage:
            deployment = await deployments.activate(
                deployment.id, old_id=active.id if active else None
            )
            stage.message = f"v{deployment.version} is ACTIVE"
    except Exception as exc:  # a stage's failure, or a database write between stages
        failure = exc if isinstance(exc, StageFailed) else stage_failure(journal, exc)
        await undo(engine, project, deployment, active, slot, switched, journal)
        await record_failure(engine, deployment, failure)
        if failure is exc:
            raise
        raise failure from exc
    await journal.note("live", f"v{deployment.version} live on {slot.color} (port {slot.port})")
    await watch_window(engine, project, deployment, active, slot, journal)
    await retire(engine, project, active, journal)
    return deployment


def stage_failure(journal: Journal, exc: Exception) -> StageFailed:
    """An exception raised outside any stage's own handling, as the running stage's failure
    (between stages: the step that writes the new status, "record")."""
    stage = journal.running or "record"
    log.error("deployment %s failed at %s: %r", journal.deployment_id, stage, exc)
    return StageFailed(stage, journal.redact(describe(exc)))


async def record_failure(engine: Engine, deployment: Deployment, failure: StageFailed) -> None:
    """Record FAILED, trying again while the database refuses (locked, full) for a bounded
    time; after that the row stays in flight for reconciliation to fail."""
    for pause in (*FAIL_RETRY_SECONDS, None):
        try:
            await engine.store.deployments.fail(
                deployment.id, stage=failure.stage, error=failure.reason
            )
            return
        except Exception as exc:
            if pause is None:
                log.error(
                    "could not record deployment %s FAILED (%s); reconciliation will",
                    deployment.id,
                    describe(exc),
                    extra={"project": deployment.project, "deployment": deployment.id},
                )
                return
            await asyncio.sleep(pause)


def refuse_live_slot(engine: Engine, project: ProjectSettings, slot: Slot) -> None:
    """Never replace the container the live route points at: after `repair` the route and
    the database agree, so this only trips when something changed them behind our back."""
    if engine.proxy.route(project.name) is slot.color:
        raise RuntimeFailure(
            f"refusing to replace {slot.container}: {project.name}'s live route points at it"
        )


def build_spec(root: Path, project: ProjectSettings, image: str) -> BuildSpec:
    """What to build for `project` from its checkout at `root`. The settings already refuse
    paths that climb out of the checkout; this also catches a symbolic link in the repository
    that leads out. The checkout's .git stays out of the context unless the project asks."""
    root = root.resolve()
    context = (root / project.context).resolve()
    dockerfile = (context / project.dockerfile).resolve()
    for key, path in (("context", context), ("dockerfile", dockerfile)):
        if not path.is_relative_to(root):
            raise SourceError(
                f"{key} {getattr(project, key)!r} leads outside the checkout "
                "(through a symbolic link in the repository?)"
            )
    return BuildSpec(
        context=context,
        dockerfile=str(dockerfile),
        tag=image,
        build_args=project.build_args,
        exclude=() if project.build_include_git else (".git",),
    )


async def undo(
    engine: Engine,
    project: ProjectSettings,
    deployment: Deployment,
    active: Deployment | None,
    slot: Slot | None,
    switched: bool,
    journal: Journal,
) -> None:
    """Put things back as they were: the route to the live release, the new container gone.

    Only a container labelled with this deployment is removed, never someone else's; and if
    nginx could not be put back, the new container stays (it is taking the traffic) for the
    next reconciliation to sort out.
    """
    if switched:
        try:
            await engine.route_to(project, active)
        except GatebotError as exc:
            await journal.note(
                "cleanup", f"the route could not be put back ({exc}); kept the new slot"
            )
            return
        await asyncio.sleep(project.drain_seconds)
    if slot is None:
        return
    if engine.proxy.route(project.name) is slot.color:  # it is taking the traffic
        await journal.note("cleanup", f"kept {slot.container}: the live route points at it")
        return
    runtime = engine.runtime_for(project.name)
    with contextlib.suppress(GatebotError):
        state = await runtime.state(slot.container)
        if state is None or state.labels.get(LABEL_DEPLOYMENT) != str(deployment.id):
            return
        try:
            await runtime.stop_and_remove(slot.container, timeout=0)
            await journal.note("cleanup", f"removed {slot.container}")
        except GatebotError as exc:
            await journal.note("cleanup", f"could not remove {slot.container}: {exc}")


async def retire(
    engine: Engine,
    project: ProjectSettings,
    old: Deployment | None,
    journal: Journal,
    *,
    prune: bool = True,
) -> None:
    """After the switch: wait for in-flight requests, retire the old slot (one host: stop
    and remove its container; a swarm: scale its service to 0, keeping its spec), prune old
    images
    (unless `prune` is False: a rollback builds no image and leaves the set of releases to
    keep as it was, so it skips listing the images, a sixth of its time in scripts/bench).

    Nothing here can fail the deployment, which is already live; problems are logged.
    """
    if old is not None and old.container:
        try:
            async with journal.stage("drain") as stage:
                await asyncio.sleep(project.drain_seconds)
                await engine.runtime_for(project.name).retire(
                    old.container, timeout=project.stop_timeout
                )
                stage.message = f"waited {project.drain_seconds:g}s, retired {old.container}"
        except StageFailed as exc:
            log.warning("retiring %s failed: %s", old.container, exc.reason)
    try:
        async with journal.stage("prune") as stage:
            if not prune:
                stage.message = "nothing to prune: a rollback builds no image"
                return
            removed = await prune_images(engine, project)
            stage.message = (
                f"removed {len(removed)} old image(s)" if removed else "nothing to prune"
            )
    except StageFailed as exc:
        log.warning("pruning images of %s failed: %s", project.name, exc.reason)


async def prune_images(engine: Engine, project: ProjectSettings) -> list[str]:
    """Remove the project's images beyond the `keep_releases` newest once-live releases."""
    history = await engine.store.deployments.history(project.name, limit=10_000)
    live_once = [d for d in history if d.status in LIVE_ONCE and d.image]
    keep = {d.image for d in live_once[: project.keep_releases]}
    keep |= {d.image for d in history if d.status is Status.ACTIVE or d.status in IN_FLIGHT}
    removed = []
    built = {d.image for d in history if d.image}  # only what gatebot built: others' tags stay
    runtime = engine.runtime_for(project.name)
    for tag in await runtime.images(runtime.image_repository(project.name)):
        if tag in built and tag not in keep:
            try:
                await runtime.remove_image(tag)
                removed.append(tag)
            except GatebotError as exc:
                log.info("kept image %s: %s", tag, exc)
    return removed
