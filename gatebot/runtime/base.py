"""The Runtime interface: what the pipeline needs from a container engine, nothing more."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

LABEL_MANAGED = "gatebot.managed"
LABEL_PROJECT = "gatebot.project"
LABEL_DEPLOYMENT = "gatebot.deployment"
LABEL_COMMIT = "gatebot.commit"
LABEL_COLOR = "gatebot.color"
LOCAL_REPOSITORY = "gatebot"  # images built for one host: gatebot/<project>:<version>-<sha12>


def local_repository(project: str) -> str:
    return f"{LOCAL_REPOSITORY}/{project}"


@dataclass(frozen=True)
class BuildSpec:
    context: Path
    dockerfile: str
    tag: str
    # Images get no labels from gatebot: the classic builder adds a step (a container created
    # and committed) to apply them, and containers would inherit them. The database records
    # which image each deployment built.
    labels: Mapping[str, str] = field(default_factory=dict)
    build_args: Mapping[str, str] = field(default_factory=dict)
    # .dockerignore patterns added to the context's own (".git": the checkout's git folder)
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    image: str
    labels: Mapping[str, str]
    env: Mapping[str, str]
    network: Literal["bridge", "host"]
    host_port: int
    container_port: int
    init: bool = True
    log_max_size: str = "10m"
    log_max_files: int = 3
    # What only a swarm uses; one host runs one container and stops it with the timeout
    # stop_and_remove is given.
    replicas: int = 1
    placement: tuple[str, ...] = ()
    stop_timeout: int = 10


@dataclass(frozen=True)
class Endpoint:
    """An address and port a slot answers on: 127.0.0.1 on one host; on a swarm, the address
    of each node running one of the slot's tasks (published there in host mode)."""

    address: str
    port: int
    node: str = ""  # the swarm node's hostname; "" on one host

    @property
    def netloc(self) -> str:
        """``address:port`` for a URL or an nginx server (``[v6]:port``); ValueError unless
        the address is an IP address (it goes into nginx's configuration)."""
        ip = ipaddress.ip_address(self.address)
        return f"[{ip}]:{self.port}" if ip.version == 6 else f"{ip}:{self.port}"


@dataclass(frozen=True)
class ContainerState:
    name: str
    status: str  # created | running | restarting | exited | paused | dead
    running: bool
    exit_code: int
    restart_count: int
    labels: Mapping[str, str]
    image: str

    @property
    def managed(self) -> bool:
        return self.labels.get(LABEL_MANAGED) == "true"

    @property
    def retired(self) -> bool:
        """Kept without running anything (a swarm service scaled to 0, its spec kept for a
        rollback); on one host a retired container is gone, so never."""
        return self.status == STATUS_RETIRED

    @property
    def degraded(self) -> bool:
        """Not converged, yet some of it answers (a swarm service whose task on a dead node
        waits for a node to run on): the engine works on it; gatebot leaves it be."""
        return self.status == STATUS_DEGRADED


STATUS_RETIRED = "scaled-down"
STATUS_DEGRADED = "degraded"


@dataclass(frozen=True)
class SlotTask:
    """One task of a slot and where it runs (a swarm node), for status views; a slot on one
    host has none to show."""

    node: str  # the node's hostname ("unassigned" before the scheduler picks one)
    address: str
    state: str  # running | starting | failed | ... as the engine says
    desired: str
    error: str = ""


class Runtime(Protocol):
    async def ping(self) -> None:
        """Raise RuntimeUnavailable when the engine does not answer."""

    def image_repository(self, project: str) -> str:
        """Where the project's images are tagged: ``gatebot/<project>`` on one host,
        ``<registry>/<project>`` on a swarm (the build pushes them there)."""

    async def build(self, spec: BuildSpec, on_output: Callable[[str], None]) -> str:
        """Build and tag an image; `on_output` gets each output line; return the image id."""

    async def image_exists(self, tag: str) -> bool: ...

    async def remove_image(self, tag: str) -> None: ...

    async def images(self, repository: str) -> list[str]:
        """The tags in `repository` (e.g. ``gatebot/shop``), sorted."""

    async def run(self, spec: ContainerSpec) -> None:
        """Create and start a container; a gatebot-labelled leftover of that name is removed
        first; any other container of that name raises NameConflict. (A swarm creates or
        updates the service of that name and returns once its tasks run, or one failed.)"""

    async def state(self, name: str) -> ContainerState | None: ...

    async def start(self, name: str) -> None: ...

    async def logs(self, name: str, tail: int = 20) -> str: ...

    async def stop_and_remove(self, name: str, timeout: int) -> None:
        """Stop (SIGTERM, then SIGKILL after `timeout` s) and remove; absent is fine."""

    async def retire(self, name: str, timeout: int) -> None:
        """Take a slot that was live out of service, keeping what a rollback needs: on one
        host stop and remove the container (its image stays); on a swarm scale the service
        to 0, keeping its spec (`start` scales it up again). Absent is fine."""

    async def managed_containers(self, project: str) -> list[ContainerState]: ...

    async def endpoints(self, name: str, port: int) -> list[Endpoint]:
        """Where the slot `name`, published on `port`, answers now (empty: nowhere)."""

    async def tasks(self, name: str) -> list[SlotTask]:
        """The tasks of the slot's current spec and their nodes (none on one host)."""

@dataclass(frozen=True)
class ContainerEvent:
    """One of the engine's events about a gatebot container (`action`: "die" so far)."""

    action: str
    name: str
    labels: Mapping[str, str]


class ContainerEvents(Protocol):
    async def follow(
        self, on_event: Callable[[ContainerEvent], None], on_open: Callable[[], None]
    ) -> None:
        """Follow the engine's events of gatebot's containers, `on_open` once subscribed,
        `on_event` for each, until the stream breaks (raise RuntimeUnavailable: the engine
        went away) or the caller is cancelled."""
