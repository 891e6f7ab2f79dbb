"""The deploy engine's dependencies in one object, and the small pure decisions they share.

Its parts are typed by their interfaces (`Runtime`, `Proxy`, `Source`); gatebot/wiring.py binds
them to Docker, nginx and git. Listeners (the server's metrics) are handed in when the engine is
built, as `EngineListeners`, never set on it afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gatebot.errors import GatebotError
from gatebot.model import Color, Slot, Status
from gatebot.pipeline.health import ProbeListener
from gatebot.pipeline.journal import Journal, Listener
from gatebot.pipeline.lock import ProjectLocks
from gatebot.proxy.base import Proxy, ReloadListener
from gatebot.redact import secrets_of
from gatebot.runtime.base import (
    LABEL_COLOR,
    LABEL_COMMIT,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED,
    LABEL_PROJECT,
    ContainerEvents,
    ContainerSpec,
    Runtime,
    SlotTask,
)
from gatebot.settings import ProjectSettings, Settings
from gatebot.source import Source
from gatebot.store import Store
from gatebot.store.deployments import Deployment


@dataclass(frozen=True)
class EngineListeners:
    """What the engine's parts tell as they work: each nginx change's outcome, each answered
    health probe. None: nobody listens (the CLI)."""

    nginx_reload: ReloadListener | None = None
    health_probe: ProbeListener | None = None


@dataclass
class Engine:
    settings: Settings
    store: Store
    runtime: Runtime
    proxy: Proxy
    source: Source
    locks: ProjectLocks
    logs_dir: Path
    on_probe: ProbeListener | None = None  # hears every health probe of every deploy
    # Projects with runtime = "swarm" -> the runtime that drives them; the others use `runtime`.
    runtimes: Mapping[str, Runtime] = field(default_factory=dict)
    # The engine's container events, which the server's watchdog follows (None: not followed).
    events: ContainerEvents | None = None

    def runtime_for(self, project: str) -> Runtime:
        return self.runtimes.get(project, self.runtime)

    def journal(self, deployment: Deployment, listeners: list[Listener] | None) -> Journal:
        return Journal(
            self.store.deployments,
            deployment.id,
            self.log_path(deployment.id),
            project=deployment.project,
            listeners=listeners,
            secrets=secrets_of(self.settings),
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
            replicas=project.replicas,
            placement=tuple(project.placement),
            stop_timeout=project.stop_timeout,
        )

    async def upstream_servers(self, project: ProjectSettings) -> dict[Color, list[str]]:
        """Each slot's upstream servers, where it answers now: 127.0.0.1 and the slot's port
        on one host (asking the engine nothing); on a swarm, every node running one of its
        tasks (none: the proxy keeps what it had)."""
        runtime = self.runtime_for(project.name)
        servers: dict[Color, list[str]] = {}
        for color in Color:
            slot = slot_of(project, color)
            found = await runtime.endpoints(slot.container, slot.port)
            servers[color] = [e.netloc for e in found]
        return servers

    async def ensure_files(self, projects: Sequence[ProjectSettings]) -> list[str]:
        """The projects' nginx files, their upstreams where the slots answer now; nginx is
        tested and reloaded only if a file changed. Returns the projects whose files did."""
        servers = {p.name: await self.upstream_servers(p) for p in projects}
        return await self.proxy.ensure(projects, servers)

    async def upstream_moved(self, project: ProjectSettings, slot: Slot) -> bool:
        """Whether `slot` answers on servers other than those its upstream lists (a swarm
        slot on other nodes; never on one host, where both are 127.0.0.1 and its port)."""
        found = await self.runtime_for(project.name).endpoints(slot.container, slot.port)
        listed = self.proxy.servers(project.name, slot.color)
        return bool(found) and [e.netloc for e in found] != listed

    async def live_tasks(self, deployment: Deployment | None) -> list[SlotTask]:
        """Where the live release's tasks run (a swarm's nodes), for status views; none on
        one host, for a release that is not live, or while the engine does not answer."""
        if deployment is None or deployment.status is not Status.ACTIVE:
            return []
        if not deployment.container:
            return []
        try:
            return await self.runtime_for(deployment.project).tasks(deployment.container)
        except GatebotError:
            return []

    async def route_to(
        self, project: ProjectSettings, live: Deployment | None, *, files: bool = True
    ) -> bool:
        """Send the project's traffic to `live`'s slot (None: nothing is live, nginx answers
        503). The project's files are written first if they changed (then, and only then,
        nginx is tested and reloaded) unless `files` is False; the switch itself is a marker
        flip. Returns whether the route changed."""
        if files:
            await self.ensure_files([project])
        color = live.color if live is not None and live.port is not None else None
        note = f"live: v{live.version} ({live.color}), deployment {live.id}" if live else ""
        return self.proxy.set_route(project.name, color, note=note)


def container_name(project: str, color: Color) -> str:
    return f"gatebot-{project}-{color}"


def image_tag(repository: str, version: int, sha: str) -> str:
    """``<repository>:<version>-<sha12>``; the repository is the runtime's for the project
    (``gatebot/<project>`` on one host, ``<registry>/<project>`` on a swarm)."""
    return f"{repository}:{version}-{sha[:12]}"


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
