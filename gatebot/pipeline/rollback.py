"""Rollback: make an earlier release live again, through the same slot switch as a deploy.

The target's image starts in the idle slot, is health-checked, the route marker flips to it,
and after the same watch window as a deploy's the current release is retired. If anything
fails before the switch, the current release stays live; a bad watch verdict brings it back.
Without an explicit target, rollback walks back: the newest once-live release older than the
live one whose image still exists; so repeated rollbacks go v3 -> v2 -> v1, never back and
forth.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from gatebot.errors import LiveReleaseChanged, NothingToRollBack, StageFailed
from gatebot.model import Status
from gatebot.pipeline.deploy import refuse_live_slot, retire, stage_failure, undo
from gatebot.pipeline.engine import Engine, pick_slot
from gatebot.pipeline.health import wait_healthy
from gatebot.pipeline.journal import Listener
from gatebot.pipeline.reconcile import repair
from gatebot.pipeline.watch import watch_window
from gatebot.store.deployments import Deployment


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
                    runtime,
                    slot.container,
                    slot.port,
                    project.health,
                    on_probe=engine.on_probe,
                )
                stage.message = f"healthy after {result.attempts} attempt(s)"
            async with journal.stage("switch") as stage:
                await engine.ensure_files([project])
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
        await journal.note("live", f"v{target.version} live on {slot.color} (port {slot.port})")
        await watch_window(engine, project, target, active, slot, journal)
        await retire(engine, project, active, journal, prune=False)
        return target


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
    for candidate in await deployments.once_live_before(
        project, active.version if active else None
    ):
        if candidate.image and await runtime.image_exists(candidate.image):
            return candidate
    below = f" before v{active.version}" if active else ""
    raise NothingToRollBack(
        f"{project} has no earlier release{below} with an image to roll back to"
    )
