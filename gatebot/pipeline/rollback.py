"""Rollback: make an earlier release live again, through the same slot switch as a deploy.

The target's image starts in the idle slot, is health-checked, the route marker flips to it,
and after the same watch window as a deploy's the current release is retired. If anything
fails before the switch, the current release stays live; a bad watch verdict brings it back.
Without an explicit target, rollback walks back: the newest once-live release older than the
live one whose image still exists; so repeated rollbacks go v3 -> v2 -> v1, never back and
forth. Reconciliation brings a lost live release's predecessor back through the same stages
(`roll_back_lost`, an automatic rollback).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Final

from gatebot.errors import LiveReleaseChanged, NothingToRollBack, StageFailed
from gatebot.model import Color, Slot, Status
from gatebot.pipeline.deploy import refuse_live_slot, retire, stage_failure, undo
from gatebot.pipeline.engine import Engine, pick_slot, slot_of
from gatebot.pipeline.health import still_healthy, wait_healthy
from gatebot.pipeline.journal import Journal, Listener
from gatebot.pipeline.reconcile import repair
from gatebot.pipeline.watch import watch_window
from gatebot.settings import ProjectSettings
from gatebot.store.deployments import Deployment

log = logging.getLogger("gatebot.pipeline")
# Who an automatic rollback (reconciliation's, of a lost live release) is recorded as.
AUTOMATIC = "reconciliation (automatic)"


class _AnyActive:
    """`expect_active` not given: roll back from whatever is live."""


ANY_ACTIVE: Final = _AnyActive()


async def rollback(
    engine: Engine,
    project_name: str,
    *,
    to: str | None = None,
    trigger: str,
    listeners: list[Listener] | None = None,
    expect_active: int | None | _AnyActive = ANY_ACTIVE,
) -> Deployment:
    """Return the deployment made live. Raises LockHeld, NothingToRollBack or StageFailed,
    and LiveReleaseChanged when `expect_active` (the id of the deployment the rollback was
    decided against, None for nothing live) is not the live one once the lock is held."""
    project = engine.settings.project(project_name)
    deployments = engine.store.deployments
    async with engine.locks.hold(project.name, f"rollback by {trigger}"):
        await repair(engine, project)
        active = await deployments.active(project.name)
        if not isinstance(expect_active, _AnyActive) and expect_active != (
            active.id if active else None
        ):
            raise LiveReleaseChanged(project.name, f"v{active.version}" if active else "none")
        target = await choose_target(engine, project.name, active, to)
        journal = engine.journal(target, listeners)
        source = f"v{active.version}" if active else "no live release"
        await journal.note(
            "rollback", f"rollback from {source} to v{target.version} started by {trigger}"
        )
        slot = pick_slot(project, active)
        target = await make_live(engine, project, target, active, slot, journal)
        await journal.note("live", f"v{target.version} live on {slot.color} (port {slot.port})")
        await watch_window(engine, project, target, active, slot, journal)
        await retire(engine, project, active, journal, prune=False)
        return target


async def make_live(
    engine: Engine,
    project: ProjectSettings,
    target: Deployment,
    active: Deployment | None,
    slot: Slot,
    journal: Journal,
) -> Deployment:
    """The stages that bring a once-live release back, for a caller holding the project's
    lock: start its image in `slot`, health-check it, flip the route to it, and record it
    ACTIVE (`active`, if any, ROLLED_BACK). On any failure things are put back as they were
    (the route to `active`, the new container gone) and StageFailed is raised; `target` stays
    what it was, a release that can be tried again."""
    deployments = engine.store.deployments
    runtime = engine.runtime_for(project.name)
    switched = False
    try:
        async with journal.stage("run") as stage:
            assert target.image is not None
            refuse_live_slot(engine, project, slot)
            spec = engine.container_spec(project, target, target.image, slot)
            await runtime.run(spec)
            if await engine.upstream_moved(project, slot):  # as a deploy does
                await engine.ensure_files([project])
            stage.message = f"started {slot.container} ({slot.color}) on port {slot.port}"
        async with journal.stage("health") as stage:
            result = await wait_healthy(
                runtime, slot.container, slot.port, project.health, on_probe=engine.on_probe
            )
            stage.message = f"healthy after {result.attempts} attempt(s)"
        async with journal.stage("switch") as stage:
            await engine.ensure_files([project])
            await still_healthy(
                runtime, slot.container, slot.port, project.health, on_probe=engine.on_probe
            )
            switched = True
            live = replace(target, port=slot.port, color=slot.color)
            await engine.route_to(project, live, files=False)
            stage.message = f"{project.name} now routed to {slot.color} (port {slot.port})"
        async with journal.stage("record") as stage:
            target = await deployments.activate(
                target.id, old_id=active.id if active else None, slot=slot
            )
            stage.message = f"v{target.version} is ACTIVE again"
    except Exception as exc:  # a stage's failure, or a database write between stages
        await undo(engine, project, target, active, slot, switched, journal)
        if isinstance(exc, StageFailed):
            raise
        raise stage_failure(journal, exc) from exc
    return target


async def roll_back_lost(
    engine: Engine, project: ProjectSettings, lost: Deployment
) -> Deployment | None:
    """Reconciliation's automatic rollback, under the project's lock, when the ACTIVE release
    `lost` could not be brought back (and is FAILED now): the newest once-live release older
    than it whose image exists is made live again through `make_live`, the next older one if
    that fails, and so on. Returns the release made live, or None when none could be (then
    nothing is live: 503). No watch window: the release served before, and reconciliation
    must not hold every project's repair for it."""
    async for target in once_live_with_image(engine, project.name, lost.version):
        route = engine.proxy.route(project.name)  # never the slot the route points at
        color = (route or lost.color or Color.GREEN).other
        journal = engine.journal(target, None)
        await journal.note(
            "rollback",
            f"automatic rollback from v{lost.version} (lost: its container could not be "
            f"brought back) to v{target.version} started by {AUTOMATIC}",
        )
        try:
            live = await make_live(
                engine, project, target, None, slot_of(project, color), journal
            )
        except StageFailed as exc:
            log.error(
                "automatic rollback of %s to v%s failed: %s",
                project.name,
                target.version,
                exc,
                extra={"project": project.name, "deployment": target.id},
            )
            continue
        await journal.note("live", f"v{live.version} live again on {live.color} (port {live.port})")
        await engine.journal(lost, None).note(
            "reconcile", f"rolled back automatically to v{live.version}"
        )
        try:  # a record, like the journal's notes: the rollback stands without it
            await engine.store.audit.record(
                AUTOMATIC,
                "rollback",
                project=project.name,
                detail=f"automatic: v{lost.version} lost, v{live.version} live again",
            )
        except Exception as exc:  # noqa: BLE001
            log.warning("could not write the automatic rollback to the audit table: %s", exc)
        log.warning(
            "v%s of %s was lost; rolled back automatically to v%s",
            lost.version,
            project.name,
            live.version,
            extra={"project": project.name, "deployment": live.id},
        )
        return live
    return None


async def once_live_with_image(
    engine: Engine, project: str, before: int | None
) -> AsyncIterator[Deployment]:
    """Once-live releases older than version `before` (None: all) whose image still exists,
    newest first."""
    for candidate in await engine.store.deployments.once_live_before(project, before):
        if candidate.image and await engine.runtime_for(project).image_exists(candidate.image):
            yield candidate


async def choose_target(
    engine: Engine, project: str, active: Deployment | None, to: str | None
) -> Deployment:
    """The release to roll back to, or NothingToRollBack saying why there is none."""
    deployments = engine.store.deployments
    runtime = engine.runtime_for(project)
    if to is not None:
        target = await deployments.find(project, to)
        if target is None:
            shown = to if len(to) <= 80 else to[:79] + "…"
            raise NothingToRollBack(f"{project} has no release {shown!r}")
        if target.status is Status.ACTIVE:
            raise NothingToRollBack(f"{project} v{target.version} is already live")
        if target.status is not Status.ROLLED_BACK:
            raise NothingToRollBack(
                f"{project} v{target.version} was never live ({target.status}); "
                "only a release that was live can be brought back"
            )
        if not target.image or not await runtime.image_exists(target.image):
            raise NothingToRollBack(f"the image of {project} v{target.version} no longer exists")
        return target
    async for candidate in once_live_with_image(
        engine, project, active.version if active else None
    ):
        return candidate
    below = f" before v{active.version}" if active else ""
    raise NothingToRollBack(
        f"{project} has no earlier release{below} with an image to roll back to"
    )
