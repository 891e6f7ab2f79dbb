"""The deploy engine's dependencies in one object, and the small pure decisions they share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gatebot.model import Color, Slot
from gatebot.pipeline.journal import Journal, Listener
from gatebot.pipeline.lock import ProjectLocks
from gatebot.proxy.nginx import NginxProxy
from gatebot.runtime.base import (
    LABEL_COLOR,
    LABEL_COMMIT,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED,
    LABEL_PROJECT,
    ContainerSpec,
    Runtime,
)
from gatebot.settings import ProjectSettings, Settings
from gatebot.store import Store
from gatebot.store.deployments import Deployment
from gatebot.vcs import GitSource


@dataclass
class Engine:
    settings: Settings
    store: Store
    runtime: Runtime
    proxy: NginxProxy
    source: GitSource
    locks: ProjectLocks
    logs_dir: Path

    def journal(self, deployment: Deployment, listeners: list[Listener] | None) -> Journal:
        return Journal(
            self.store.deployments,
            deployment.id,
            self.log_path(deployment.id),
            project=deployment.project,
            listeners=listeners,
        )

    def log_path(self, deployment_id: int) -> Path:
        return self.logs_dir / f"{deployment_id}.log"

    def container_spec(
        self, project: ProjectSettings, deployment: Deployment, image: str, slot: Slot
    ) -> ContainerSpec:
        return ContainerSpec(
            name=slot.container,
            image=image,
            labels=deployment_labels(project.name, deployment.id, deployment.commit_sha, slot),
            env=self.settings.container_env(project),
            network=project.network,
            host_port=slot.port,
            container_port=project.container_port,
            init=project.init,
        )

    async def route_to(self, project: ProjectSettings, live: Deployment | None) -> bool:
        """Send the project's traffic to `live`'s slot (None: nothing is live, nginx answers
        503). The project's files are written first if they changed (then, and only then,
        nginx is tested and reloaded); the switch itself is a marker flip. Returns whether
        the route changed."""
        await self.proxy.ensure([project])
        color = live.color if live is not None and live.port is not None else None
        note = f"live: v{live.version} ({live.color}), deployment {live.id}" if live else ""
        return self.proxy.set_route(project.name, color, note=note)


def container_name(project: str, color: Color) -> str:
    return f"gatebot-{project}-{color}"


def image_repository(project: str) -> str:
    return f"gatebot/{project}"


def image_tag(project: str, version: int, sha: str) -> str:
    return f"{image_repository(project)}:{version}-{sha[:12]}"


def pick_slot(project: ProjectSettings, active: Deployment | None) -> Slot:
    """The idle slot: the opposite color of the live one; blue when nothing is live."""
    color = active.color.other if active is not None and active.color else Color.BLUE
    return slot_of(project, color)


def slot_of(project: ProjectSettings, color: Color) -> Slot:
    """A project's slot of `color`: blue on the base port, green on the next one."""
    blue, green = project.ports
    port = green if color is Color.GREEN else blue
    return Slot(container=container_name(project.name, color), color=color, port=port)


def deployment_labels(
    project: str, deployment_id: int, commit: str | None, slot: Slot | None = None
) -> dict[str, str]:
    labels = {
        LABEL_MANAGED: "true",
        LABEL_PROJECT: project,
        LABEL_DEPLOYMENT: str(deployment_id),
        LABEL_COMMIT: commit or "",
    }
    if slot is not None:
        labels[LABEL_COLOR] = str(slot.color)
    return labels
