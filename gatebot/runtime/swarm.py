"""The Runtime on Docker Swarm: a slot is a replicated service, not a container.

gatebot runs on a manager and talks to its engine. A slot `gatebot-<project>-<color>` is a
service with `replicas` tasks, the slot port published in host mode on every node that runs a
task (endpoint mode dnsrr: this design needs no routing mesh and no VIP), attached to the
[swarm] overlay network (without one, a host-mode port under `--bridge=none` silently binds
nothing). Images are built on the manager with the classic builder, then pushed to the
[swarm] registry, from which every node pulls them.

Retiring a slot scales its service to 0 and keeps its spec, so `start` (a rollback, a
repair) scales it up again with the same image; the intended replica count stays in the
service's `gatebot.replicas` label. Every change of the task template bumps ForceUpdate, so the
tasks of the current spec are told apart from earlier ones (a failed task of an earlier try
must not fail this one).

The decisions (spec from a ContainerSpec, a service's state from its tasks, its endpoints)
are pure functions below; the class is the thin adapter around the blocking docker SDK,
called through asyncio.to_thread (DockerRuntime's `_call`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import docker.errors

from gatebot.errors import NameConflict, RuntimeFailure
from gatebot.runtime.base import (
    LABEL_MANAGED,
    LABEL_PROJECT,
    STATUS_DEGRADED,
    STATUS_RETIRED,
    BuildSpec,
    ContainerSpec,
    ContainerState,
    Endpoint,
    SlotTask,
)
from gatebot.runtime.docker import DockerRuntime
from gatebot.settings import SwarmSettings

LABEL_REPLICAS = "gatebot.replicas"  # a service's replica count while it runs (kept at 0)
_NS = 1_000_000_000
_POLL = 0.25
_FAILED = frozenset({"failed", "rejected", "complete"})  # a task that ended by itself
_RUNNING = "running"


@dataclass(frozen=True)
class Node:
    id: str
    hostname: str
    address: str
    ready: bool


@dataclass(frozen=True)
class Task:
    id: str
    node_id: str
    state: str  # new | pending | assigned | ... | running | complete | failed | rejected ...
    desired: str  # running | shutdown | ...
    image: str
    force_update: int
    created: str
    error: str
    exit_code: int


# --- pure: spec, state, endpoints -----------------------------------------------------------


def service_spec(
    spec: ContainerSpec, network: str, image: str, force_update: int
) -> dict[str, Any]:
    """The create/update_service arguments for `spec`, running `image` (pinned by digest)."""
    env = {"PORT": str(spec.container_port), **spec.env}
    task_template: dict[str, Any] = {
        "ContainerSpec": {
            "Image": image,
            "Env": [f"{key}={value}" for key, value in env.items()],
            "Labels": dict(spec.labels),
            "Init": spec.init,
            "StopGracePeriod": spec.stop_timeout * _NS,
        },
        "RestartPolicy": {"Condition": "any", "Delay": 1 * _NS, "MaxAttempts": 0},
        "Placement": {"Constraints": list(spec.placement)},
        "Networks": [{"Target": network}],
        "LogDriver": {
            "Name": "json-file",
            "Options": {"max-size": spec.log_max_size, "max-file": str(spec.log_max_files)},
        },
        "ForceUpdate": force_update,
    }
    return {
        "name": spec.name,
        "labels": {**spec.labels, LABEL_REPLICAS: str(spec.replicas)},
        "mode": {"Replicated": {"Replicas": spec.replicas}},
        "task_template": task_template,
        # The idle color: replace every task at once, each freeing its node's port first.
        "update_config": {"Parallelism": 0, "Order": "stop-first", "FailureAction": "continue"},
        "endpoint_spec": {
            "Mode": "dnsrr",
            "Ports": [
                {
                    "Protocol": "tcp",
                    "TargetPort": spec.container_port,
                    "PublishedPort": spec.host_port,
                    "PublishMode": "host",
                }
            ],
        },
    }


def parse_node(raw: Mapping[str, Any]) -> Node:
    status = raw.get("Status") or {}
    address = str(status.get("Addr") or "")
    if address in ("", "0.0.0.0"):  # a manager may report this; its raft address is right
        address = str((raw.get("ManagerStatus") or {}).get("Addr", "")).rpartition(":")[0]
    return Node(
        id=str(raw["ID"]),
        hostname=str((raw.get("Description") or {}).get("Hostname", "")),
        address=address,
        ready=status.get("State") == "ready",
    )


def parse_task(raw: Mapping[str, Any]) -> Task:
    spec = raw.get("Spec") or {}
    status = raw.get("Status") or {}
    return Task(
        id=str(raw["ID"]),
        node_id=str(raw.get("NodeID") or ""),
        state=str(status.get("State", "")),
        desired=str(raw.get("DesiredState", "")),
        image=str((spec.get("ContainerSpec") or {}).get("Image", "")),
        force_update=int(spec.get("ForceUpdate") or 0),
        created=str(raw.get("CreatedAt", "")),
        error=str(status.get("Err") or ""),
        exit_code=int((status.get("ContainerStatus") or {}).get("ExitCode") or 0),
    )


def current_tasks(service: Mapping[str, Any], tasks: Iterable[Task]) -> list[Task]:
    """The tasks of the service's current task template (its image and ForceUpdate)."""
    template = service["Spec"]["TaskTemplate"]
    image = template["ContainerSpec"]["Image"]
    force = int(template.get("ForceUpdate") or 0)
    return [t for t in tasks if t.image == image and t.force_update == force]


def replicas(service: Mapping[str, Any]) -> int:
    return int(service["Spec"].get("Mode", {}).get("Replicated", {}).get("Replicas", 0))


def running_tasks(tasks: Iterable[Task], nodes: Mapping[str, Node]) -> list[Task]:
    """Tasks meant to run that do, on a node the manager sees as ready (a dead node's tasks
    still say running until the manager gives up on them)."""
    return [
        t
        for t in tasks
        if t.desired == _RUNNING
        and t.state == _RUNNING
        and t.node_id in nodes
        and nodes[t.node_id].ready
    ]


def summarize(
    service: Mapping[str, Any], tasks: list[Task], nodes: Mapping[str, Node]
) -> ContainerState:
    """The service as one ContainerState: running when converged (as many tasks meant to run
    as replicas, each on the current image and running on a ready node); `restart_count`
    counts the current spec's tasks that ended by themselves (exited, failed or were
    rejected), `exit_code` is the newest one's."""
    spec = service["Spec"]
    want = replicas(service)
    current = current_tasks(service, tasks)
    meant = [t for t in current if t.desired == _RUNNING]
    running = running_tasks(current, nodes)
    ended = sorted((t for t in current if t.state in _FAILED), key=lambda t: t.created)
    converged = want > 0 and len(meant) == want and len(running) == want
    if converged:
        status = "running"
    elif want == 0:
        status = STATUS_RETIRED
    elif running:  # some tasks answer: a dead node's task waits, a crash-looping one restarts
        status = STATUS_DEGRADED
    elif ended:
        status = "failed"
    else:
        status = "starting"
    return ContainerState(
        name=str(spec["Name"]),
        status=status,
        running=converged,
        exit_code=ended[-1].exit_code if ended else 0,
        restart_count=len(ended),
        labels=dict(spec.get("Labels") or {}),
        image=unpinned(str(spec["TaskTemplate"]["ContainerSpec"]["Image"])),
    )


def endpoints_of(tasks: Iterable[Task], nodes: Mapping[str, Node], port: int) -> list[Endpoint]:
    """One endpoint per ready node that runs a task, sorted by address."""
    found = {
        nodes[t.node_id].address: Endpoint(
            nodes[t.node_id].address, port, nodes[t.node_id].hostname
        )
        for t in running_tasks(tasks, nodes)
    }
    return [found[address] for address in sorted(found)]


def slot_tasks(tasks: Iterable[Task], nodes: Mapping[str, Node]) -> list[SlotTask]:
    """Tasks as status views show them, oldest first: node, address, state, error."""
    shown = []
    for t in sorted(tasks, key=lambda t: t.created):
        node = nodes.get(t.node_id)
        shown.append(
            SlotTask(
                node=node.hostname if node else "unassigned",
                address=node.address if node else "",
                state=t.state if node is None or node.ready else f"{t.state} (node down)",
                desired=t.desired,
                error=t.error,
            )
        )
    return shown


def unpinned(image: str) -> str:
    """``repo:tag@sha256:...`` -> ``repo:tag``."""
    return image.partition("@")[0]


def describe_tasks(tasks: Iterable[Task], nodes: Mapping[str, Node]) -> str:
    """Tasks in a line each, for error messages: node, state, error."""
    lines = []
    for t in sorted(tasks, key=lambda t: t.created):
        node = nodes[t.node_id].hostname if t.node_id in nodes else "unassigned"
        error = f": {t.error}" if t.error else ""
        lines.append(f"{node} {t.state} (desired {t.desired}){error}")
    return "\n".join(lines) or "no tasks"


# --- the adapter ----------------------------------------------------------------------------


class SwarmRuntime(DockerRuntime):
    def __init__(self, base_url: str, settings: SwarmSettings, *, timeout: int = 120) -> None:
        super().__init__(base_url, timeout=timeout)
        self.settings = settings
        self._logged_in = False
        self._network_ready = False

    def image_repository(self, project: str) -> str:
        return f"{self.settings.registry}/{project}"

    @property
    def _registry_host(self) -> str:
        return self.settings.registry.partition("/")[0]

    def _login(self) -> None:
        """Hand the registry credentials to the client once: pushes and service updates then
        send them (to the engine only, in X-Registry-Auth; never logged)."""
        if self._logged_in or self.settings.registry_username is None:
            return
        password = self.settings.registry_password
        assert password is not None
        self._docker().login(
            username=self.settings.registry_username,
            password=password.get_secret_value(),
            registry=self._registry_host,
        )
        self._logged_in = True

    # --- images ---------------------------------------------------------------------------

    async def build(self, spec: BuildSpec, on_output: Callable[[str], None]) -> str:
        """Build on the manager, then push to the registry every node pulls from."""
        repository, _, tag = spec.tag.rpartition(":")
        if not repository.startswith(f"{self.settings.registry}/"):
            raise RuntimeFailure(
                f"image {spec.tag} is not in the [swarm] registry {self.settings.registry}"
            )
        image_id = await super().build(spec, on_output)
        loop = asyncio.get_running_loop()

        def push() -> None:
            self._login()
            stream = self._docker().api.push(repository, tag=tag, stream=True, decode=True)
            for chunk in stream:
                if "error" in chunk:
                    detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                    raise RuntimeFailure(f"pushing {spec.tag} failed: {str(detail).strip()}")
                status = chunk.get("status")
                if status and "progress" not in chunk and status not in ("Preparing", "Waiting"):
                    line = f"{chunk['id']}: {status}" if "id" in chunk else str(status)
                    loop.call_soon_threadsafe(on_output, line)

        await self._call(push)
        return image_id

    def _digest(self, tag: str) -> str | None:
        """The registry's digest of `tag`, None when it has no such image."""
        self._login()
        try:
            found = self._docker().api.inspect_distribution(tag)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            if "manifest unknown" in str(exc) or "not found" in str(exc).lower():
                return None
            raise
        return str(found["Descriptor"]["digest"])

    async def image_exists(self, tag: str) -> bool:
        """In the registry, where the nodes pull from (the manager's copy is not enough)."""
        return await self._call(lambda: self._digest(tag) is not None)

    # --- services -------------------------------------------------------------------------

    def _ensure_network(self) -> None:
        if self._network_ready:
            return
        client = self._docker()
        try:
            client.networks.get(self.settings.network)
        except docker.errors.NotFound:
            client.networks.create(self.settings.network, driver="overlay", attachable=True)
        self._network_ready = True

    def _service(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self._docker().api.inspect_service(name))
        except docker.errors.NotFound:
            return None

    def _tasks(self, service: Mapping[str, Any]) -> list[Task]:
        raw = self._docker().api.tasks(filters={"service": service["ID"]})
        return [parse_task(t) for t in raw]

    def _nodes(self) -> dict[str, Node]:
        return {n.id: n for n in (parse_node(raw) for raw in self._docker().api.nodes())}

    def _update(self, service: Mapping[str, Any], args: Mapping[str, Any]) -> None:
        self._docker().api.update_service(service["ID"], service["Version"]["Index"], **args)

    async def run(self, spec: ContainerSpec) -> None:
        def apply() -> None:
            self._login()
            self._ensure_network()
            digest = self._digest(spec.image)
            if digest is None:
                raise RuntimeFailure(
                    f"image {spec.image} is not in the registry {self.settings.registry}"
                )
            image = f"{unpinned(spec.image)}@{digest}"
            existing = self._service(spec.name)
            if existing is None:
                self._docker().api.create_service(
                    **service_spec(spec, self.settings.network, image, 0)
                )
                return
            if (existing["Spec"].get("Labels") or {}).get(LABEL_MANAGED) != "true":
                raise NameConflict(
                    f"a service named {spec.name} exists and was not created by gatebot; "
                    "rename or remove it"
                )
            force = int(existing["Spec"]["TaskTemplate"].get("ForceUpdate") or 0) + 1
            self._update(existing, service_spec(spec, self.settings.network, image, force))

        await self._call(apply)
        await self._wait_started(spec.name)

    async def start(self, name: str) -> None:
        """Scale a kept service back up to its replicas, with the image it kept."""

        def scale_up() -> None:
            service = self._service(name)
            if service is None:
                raise RuntimeFailure(f"service {name} does not exist")
            spec = service["Spec"]
            want = int((spec.get("Labels") or {}).get(LABEL_REPLICAS, "1"))
            template = dict(spec["TaskTemplate"])
            template["ForceUpdate"] = int(template.get("ForceUpdate") or 0) + 1
            self._update(service, _kept(spec, template, want))

        await self._call(scale_up)
        await self._wait_started(name)

    async def _wait_started(self, name: str) -> None:
        """Until every task of the current spec runs, or one ended (the health check reports
        that, with its logs), or [swarm] start_timeout passes."""
        deadline = time.monotonic() + self.settings.start_timeout

        def look() -> tuple[ContainerState | None, str]:
            service = self._service(name)
            if service is None:
                return None, "the service disappeared"
            tasks, nodes = self._tasks(service), self._nodes()
            state = summarize(service, tasks, nodes)
            return state, describe_tasks(current_tasks(service, tasks), nodes)

        while True:
            state, tasks = await self._call(look)
            if state is None or state.running or state.restart_count:
                return
            if time.monotonic() > deadline:
                raise RuntimeFailure(
                    f"the tasks of {name} did not all start within "
                    f"{self.settings.start_timeout:g}s:\n{tasks}"
                )
            await asyncio.sleep(_POLL)

    async def state(self, name: str) -> ContainerState | None:
        def state() -> ContainerState | None:
            service = self._service(name)
            if service is None:
                return None
            return summarize(service, self._tasks(service), self._nodes())

        return await self._call(state)

    async def tasks(self, name: str) -> list[SlotTask]:
        """The tasks of the service's current spec with their nodes (status views)."""

        def listing() -> list[SlotTask]:
            service = self._service(name)
            if service is None:
                return []
            return slot_tasks(current_tasks(service, self._tasks(service)), self._nodes())

        return await self._call(listing)

    async def logs(self, name: str, tail: int = 20) -> str:
        """The last `tail` lines of the service's tasks, each prefixed with its node, then why
        the current spec's tasks that ended did."""

        def logs() -> str:
            service = self._service(name)
            if service is None:
                return ""
            nodes = self._nodes()
            hostnames = {node.id: node.hostname for node in nodes.values()}
            raw = self._docker().api.service_logs(
                service["ID"], details=True, stdout=True, stderr=True, tail=tail, follow=False
            )
            lines = [
                task_log_line(line, hostnames)
                for chunk in raw
                for line in bytes(chunk).decode("utf-8", "replace").splitlines()
                if line.strip()
            ][-tail:]
            ended = [t for t in current_tasks(service, self._tasks(service)) if t.state in _FAILED]
            for task in ended[-3:]:
                node = hostnames.get(task.node_id, "unassigned")
                lines.append(f"[{node}] task {task.state}: {task.error or 'no error given'}")
            return "\n".join(lines)

        return await self._call(logs)

    async def retire(self, name: str, timeout: int) -> None:
        """Scale to 0 and keep the spec (absent is fine); returns once no task runs, each
        given `timeout` s between SIGTERM and SIGKILL. A service already at 0 is left as it
        is (no update, no new version)."""

        def scale_down() -> bool:
            service = self._service(name)
            if service is None:
                return False
            spec = service["Spec"]
            if replicas(service) == 0:
                return True
            template = dict(spec["TaskTemplate"])
            template["ContainerSpec"] = {
                **template["ContainerSpec"],
                "StopGracePeriod": timeout * _NS,
            }
            self._update(service, _kept(spec, template, 0))
            return True

        if not await self._call(scale_down):
            return
        deadline = time.monotonic() + timeout + 30

        def still_running() -> bool:
            service = self._service(name)
            if service is None:
                return False
            nodes = self._nodes()
            return any(
                t.state in ("running", "starting") and t.node_id in nodes and nodes[t.node_id].ready
                for t in self._tasks(service)
            )

        while await self._call(still_running):
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"the tasks of {name} did not stop within {timeout + 30}s")
            await asyncio.sleep(_POLL)

    async def stop_and_remove(self, name: str, timeout: int) -> None:
        """Scale to 0 (so every node's port is free once this returns), then remove the
        service; absent is fine. For what was never live or must not come back: a failed
        release, a stray of an interrupted deploy."""
        await self.retire(name, timeout)

        def remove() -> None:
            service = self._service(name)
            if service is None:
                return
            try:
                self._docker().api.remove_service(service["ID"])
            except docker.errors.NotFound:
                pass

        await self._call(remove)

    async def managed_containers(self, project: str) -> list[ContainerState]:
        """The project's services (scaled-down ones too, with status "scaled-down")."""

        def listing() -> list[ContainerState]:
            services = self._docker().api.services(
                filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_PROJECT}={project}"]}
            )
            nodes = self._nodes()
            return [summarize(s, self._tasks(s), nodes) for s in services]

        return await self._call(listing)

    async def endpoints(self, name: str, port: int) -> list[Endpoint]:
        def listing() -> list[Endpoint]:
            service = self._service(name)
            if service is None:
                return []
            return endpoints_of(current_tasks(service, self._tasks(service)), self._nodes(), port)

        return await self._call(listing)


def _kept(spec: Mapping[str, Any], template: Mapping[str, Any], want: int) -> dict[str, Any]:
    """update_service arguments that keep `spec` but for its task template and replicas
    (the gatebot.replicas label keeps the count to scale back to)."""
    labels = dict(spec.get("Labels") or {})
    if want:
        labels[LABEL_REPLICAS] = str(want)
    return {
        "name": spec["Name"],
        "labels": labels,
        "mode": {"Replicated": {"Replicas": want}},
        "task_template": dict(template),
        "update_config": spec.get("UpdateConfig"),
        "endpoint_spec": spec.get("EndpointSpec"),
    }


def task_log_line(text: str, hostnames: Mapping[str, str]) -> str:
    """``com.docker.swarm.node.id=N,...,com.docker.swarm.task.id=T message`` -> ``[host]
    message`` (service logs with details=True)."""
    details, _, message = text.partition(" ")
    fields = dict(part.partition("=")[::2] for part in details.split(",") if "=" in part)
    node = fields.get("com.docker.swarm.node.id")
    if node is None:
        return text
    return f"[{hostnames.get(node, node[:12])}] {message}"
