"""A new database beside running releases (issue 11 defect 4): a lost or deleted database must
never make reconciliation tear down what serves.

`find_unrecorded` notices gatebot's work that the database does not know of: the database
holds no deployment at all, yet configured projects have gatebot's containers (label
`gatebot.managed`) or route markers saying a release is live. (nginx files alone do not count:
`check-config --write-nginx` writes them before the first deploy.) Then reconciliation,
deploys and rollbacks refuse (`refuse_unrecorded`, UnrecordedReleases) and `/readyz` says why,
until the operator restores the database or runs `gatebot reconcile --adopt`: `adopt` records
each of a project's containers as a release, from its labels and image tag, ACTIVE for the one
the route points at (else the newest), ROLLED_BACK for the others.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace

from gatebot.errors import UnrecordedReleases
from gatebot.model import Color, Status
from gatebot.pipeline.engine import Engine, slot_of
from gatebot.runtime.base import (
    LABEL_COLOR,
    LABEL_COMMIT,
    LABEL_DEPLOYMENT,
    ContainerState,
    local_repository,
)
from gatebot.settings import ProjectSettings
from gatebot.store.deployments import AdoptedRelease

log = logging.getLogger("gatebot.adopt")


@dataclass(frozen=True)
class Unrecorded:
    """gatebot's work of configured projects that a database with no deployments ignores."""

    containers: tuple[str, ...]
    live_routes: tuple[str, ...]  # projects whose route marker says a release is live

    def describe(self, database: str) -> str:
        found = []
        if self.containers:
            found.append(f"containers {', '.join(self.containers)}")
        if self.live_routes:
            found.append(f"live nginx routes of {', '.join(self.live_routes)}")
        return (
            f"the database {database} records no deployment, but gatebot's releases exist "
            f"({'; '.join(found)}); not reconciling or deploying, so nothing is removed: "
            "restore the database, or run `gatebot reconcile --adopt` to record what runs"
        )


async def find_unrecorded(engine: Engine) -> Unrecorded | None:
    """What runs unrecorded, or None (one query when the database holds any deployment)."""
    if await engine.store.deployments.any_recorded():
        return None
    containers: list[str] = []
    for project in engine.settings.projects:
        runtime = engine.runtime_for(project.name)
        containers += [c.name for c in await runtime.managed_containers(project.name)]
    routes = [p.name for p in engine.settings.projects if engine.proxy.route(p.name) is not None]
    if not containers and not routes:
        return None  # a new installation
    return Unrecorded(tuple(sorted(containers)), tuple(routes))


async def refuse_unrecorded(engine: Engine) -> None:
    """Raise UnrecordedReleases when a new database sits beside running releases."""
    found = await find_unrecorded(engine)
    if found is not None:
        raise UnrecordedReleases(found.describe(str(engine.store.db.path)))


def release_of(project: ProjectSettings, container: ContainerState) -> AdoptedRelease | str:
    """The release a managed container of `project` carries (as ROLLED_BACK), or why it
    cannot be adopted. Its labels give the deployment id, commit and color; its image tag
    (gatebot/<project>:<version>-<sha12>) the version; the color the port."""
    tag = re.fullmatch(
        rf"{re.escape(local_repository(project.name))}:(\d+)-[0-9a-f]+", container.image
    )
    deployment = container.labels.get(LABEL_DEPLOYMENT, "")
    color = container.labels.get(LABEL_COLOR, "")
    if tag is None:
        return f"{container.name}: image {container.image!r} is not one gatebot built"
    if not deployment.isdigit() or color not in (Color.BLUE, Color.GREEN):
        return f"{container.name}: no deployment or color label"
    return AdoptedRelease(
        id=int(deployment),
        project=project.name,
        version=int(tag.group(1)),
        commit_sha=container.labels.get(LABEL_COMMIT) or None,
        image=container.image,
        slot=slot_of(project, Color(color)),
        status=Status.ROLLED_BACK,
    )


def choose_live(releases: list[AdoptedRelease], route: Color | None) -> list[AdoptedRelease]:
    """The same releases, the one the route points at (else the newest) marked ACTIVE."""
    if not releases:
        return []
    routed = [r for r in releases if r.slot.color is route]
    live = routed[0] if routed else max(releases, key=lambda r: r.version)
    return [
replace(r, status=Status.ACTIVE) if r is live else r for r in releases
    ]


async def adopt(engine: Engine, projects: list[ProjectSettings], *, trigger: str) -> list[str]:
    """Record what runs for each of `projects` that has no deployment recorded; one line per
    project saying what was adopted."""
    lines = []
    for project in projects:
        async with engine.locks.hold(project.name, "adoption"):
            lines.append(await _adopt_project(engine, project, trigger))
    return lines


async def _adopt_project(engine: Engine, project: ProjectSettings, trigger: str) -> str:
    deployments = engine.store.deployments
    if await deployments.history(project.name, limit=1):
        return f"{project.name}: deployments are recorded already; nothing adopted"
    found, refused = [], []
    for container in await engine.runtime_for(project.name).managed_containers(project.name):
        release = release_of(project, container)
        if isinstance(release, str):
            refused.append(release)
        elif await deployments.get(release.id) is not None:
            refused.append(f"{container.name}: deployment id {release.id} is taken")
        else:
            found.append(release)
    recorded = await deployments.adopt(
        choose_live(found, engine.proxy.route(project.name)), trigger=trigger
    )
    for deployment in recorded:
        await engine.journal(deployment, None).note(
            "adopt", f"recorded from the running container {deployment.container} by {trigger}"
        )
    parts = [
        f"v{d.version} ({(d.commit_sha or '')[:12]}) on {d.color}"
        + (" as live" if d.status is Status.ACTIVE else "")
        for d in sorted(recorded, key=lambda d: d.status is not Status.ACTIVE)
    ]
    line = f"{project.name}: adopted {', '.join(parts)}" if parts else f"{project.name}: nothing"
    if not parts:
        line += " running to adopt"
    if refused:
        line += f" (not adopted: {'; '.join(refused)})"
    log.warning("%s", line, extra={"project": project.name})
    return line
