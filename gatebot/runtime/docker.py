"""The Runtime on a Docker engine: the blocking docker SDK, called through asyncio.to_thread."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import IO, Any, TypeVar

import docker
import docker.errors
import docker.utils
import urllib3.exceptions
from docker.api.build import process_dockerfile
from docker.models.containers import Container

from gatebot.errors import NameConflict, RuntimeFailure, RuntimeUnavailable
from gatebot.runtime.base import (
    LABEL_MANAGED,
    LABEL_PROJECT,
    BuildSpec,
    ContainerEvent,
    ContainerSpec,
    ContainerState,
    Endpoint,
    SlotTask,
    local_repository,
)

T = TypeVar("T")
FOLLOWED_ACTIONS = ("die",)  # a container stopped, however: exit, kill, stop, OOM, dockerd


def build_context(spec: BuildSpec) -> tuple[IO[bytes], str]:
    """The context as a tar stream, made the way the docker SDK makes it (the context's
    .dockerignore applies; a Dockerfile outside the context is added under a new name), plus
    `spec.exclude` among the ignored patterns; and the Dockerfile's name inside it."""
    root = str(spec.context)
    patterns: list[str] = []
    ignore = spec.context / ".dockerignore"
    if ignore.is_file():
        lines = ignore.read_text(encoding="utf-8", errors="replace").splitlines()
        patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    patterns += spec.exclude
    dockerfile = process_dockerfile(spec.dockerfile, root)
    tar = docker.utils.tar(root, exclude=patterns, dockerfile=dockerfile, gzip=False)
    return tar, dockerfile[0] or "Dockerfile"


class DockerRuntime:
    def __init__(self, base_url: str, *, timeout: int = 120) -> None:
        self.base_url = base_url
        self._timeout = timeout
        self._client: docker.DockerClient | None = None

    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.DockerClient(base_url=self.base_url, timeout=self._timeout)
            except docker.errors.DockerException as exc:
                raise RuntimeUnavailable(self._unreachable(exc)) from None
        return self._client

    def _unreachable(self, exc: Exception) -> str:
        return f"Docker engine at {self.base_url} is not reachable ({type(exc).__name__})"

    async def _call(self, fn: Callable[[], T]) -> T:
        def guarded() -> T:
            try:
                return fn()
            except docker.errors.APIError as exc:
                raise RuntimeFailure(_api_message(exc)) from None
            except docker.errors.DockerException as exc:
                raise RuntimeUnavailable(self._unreachable(exc)) from None
            except (ConnectionError, OSError, urllib3.exceptions.HTTPError) as exc:
                # the engine went away mid-answer (dockerd died during a build: ProtocolError)
                raise RuntimeUnavailable(self._unreachable(exc)) from None

        return await asyncio.to_thread(guarded)

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None

    async def ping(self) -> None:
        try:
            await self._call(lambda: self._docker().ping())
        except RuntimeFailure as exc:
            raise RuntimeUnavailable(str(exc)) from None

    def image_repository(self, project: str) -> str:
        return local_repository(project)

    # --- images ---------------------------------------------------------------------------

    async def build(self, spec: BuildSpec, on_output: Callable[[str], None]) -> str:
        loop = asyncio.get_running_loop()

        def emit(line: str) -> None:
            loop.call_soon_threadsafe(on_output, line)

        def build() -> str:
            image_id = ""
            context, dockerfile = build_context(spec)
            stream = self._docker().api.build(
                fileobj=context,
                custom_context=True,
                dockerfile=dockerfile,
                tag=spec.tag,
                labels=dict(spec.labels),
                buildargs=dict(spec.build_args),
                rm=True,
                forcerm=True,
                decode=True,
            )
            for chunk in stream:
                if "stream" in chunk:
                    for line in str(chunk["stream"]).splitlines():
                        if line.strip():
                            emit(line)
                if "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = str(chunk["aux"]["ID"])
                if "error" in chunk:
                    detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                    raise RuntimeFailure(f"image build failed: {str(detail).strip()}")
            if not image_id:
                image_id = str(self._docker().images.get(spec.tag).id)
            return image_id

        return await self._call(build)

    async def image_exists(self, tag: str) -> bool:
        def exists() -> bool:
            try:
                self._docker().images.get(tag)
            except docker.errors.ImageNotFound:
                return False
            return True

        return await self._call(exists)

    async def remove_image(self, tag: str) -> None:
        def remove() -> None:
            try:
                self._docker().images.remove(tag, noprune=False)
            except docker.errors.ImageNotFound:
                pass

        await self._call(remove)

    async def images(self, repository: str) -> list[str]:
        def tags() -> list[str]:
            images = self._docker().images.list(name=repository)
            prefix = f"{repository}:"
            return sorted(t for image in images for t in image.tags if t.startswith(prefix))

        return await self._call(tags)

    # --- containers -----------------------------------------------------------------------

    async def run(self, spec: ContainerSpec) -> None:
        def run() -> None:
            client = self._docker()
            try:
                existing = client.containers.get(spec.name)
            except docker.errors.NotFound:
                existing = None
            if existing is not None:
                if existing.labels.get(LABEL_MANAGED) != "true":
                    raise NameConflict(
                        f"a container named {spec.name} exists and was not created by gatebot; "
                        "rename or remove it"
                    )
                existing.remove(force=True)
            options: dict[str, Any] = {
                "name": spec.name,
                "labels": dict(spec.labels),
                "detach": True,
                "init": spec.init,
                "restart_policy": {"Name": "unless-stopped"},
                "log_config": {
                    "type": "json-file",
                    "config": {"max-size": spec.log_max_size, "max-file": str(spec.log_max_files)},
                },
            }
            env = dict(spec.env)
            if spec.network == "host":
                options["network_mode"] = "host"
                env["PORT"] = str(spec.host_port)
            else:
                options["ports"] = {f"{spec.container_port}/tcp": ("127.0.0.1", spec.host_port)}
                env.setdefault("PORT", str(spec.container_port))
            options["environment"] = env
            client.containers.run(spec.image, **options)

        await self._call(run)

    async def state(self, name: str) -> ContainerState | None:
        def state() -> ContainerState | None:
            try:
                container = self._docker().containers.get(name)
            except docker.errors.NotFound:
                return None
            return _state(container)

        return await self._call(state)

    async def start(self, name: str) -> None:
        await self._call(lambda: self._docker().containers.get(name).start())

    async def logs(self, name: str, tail: int = 20) -> str:
        def logs() -> str:
            try:
                raw = self._docker().containers.get(name).logs(tail=tail)
            except docker.errors.NotFound:
                return ""
            return bytes(raw).decode("utf-8", "replace").rstrip()

        return await self._call(logs)

    async def stop_and_remove(self, name: str, timeout: int) -> None:
        def stop() -> None:
            try:
                container = self._docker().containers.get(name)
            except docker.errors.NotFound:
                return
            try:
                container.stop(timeout=timeout)
            except docker.errors.NotFound:
                return
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # removal already in progress
                    raise

        await self._call(stop)

    async def retire(self, name: str, timeout: int) -> None:
        """One host keeps nothing but the image: the container goes."""
        await self.stop_and_remove(name, timeout)

    async def managed_containers(self, project: str) -> list[ContainerState]:
        def listing() -> list[ContainerState]:
            containers = self._docker().containers.list(
                all=True,
                filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_PROJECT}={project}"]},
            )
            return [_state(c) for c in containers]

        return await self._call(listing)

    async def endpoints(self, name: str, port: int) -> list[Endpoint]:
        """One host: the slot's port on loopback (asks the engine nothing, so the single-host
        path costs nothing more)."""
        return [Endpoint("127.0.0.1", port)]

    async def tasks(self, name: str) -> list[SlotTask]:
        return []


    # --- events ---------------------------------------------------------------------------

    async def follow(
        self, on_event: Callable[[ContainerEvent], None], on_open: Callable[[], None]
    ) -> None:
        """The engine's `die` events of gatebot's containers (see ContainerEvents), read by a
        client of its own (the stream holds a connection for as long as it lasts)."""
        loop = asyncio.get_running_loop()
        filters: dict[str, Any] = {
            "type": "container",
            "event": list(FOLLOWED_ACTIONS),
            "label": [f"{LABEL_MANAGED}=true"],
        }

        def subscribe() -> tuple[docker.APIClient, Any]:
            api = docker.APIClient(base_url=self.base_url, timeout=self._timeout)
            try:
                return api, api.events(decode=True, filters=filters)
            except BaseException:
                api.close()
                raise

        def pump() -> None:
            for raw in stream:
                actor = raw.get("Actor") or {}
                attributes = dict(actor.get("Attributes") or {})
                name = attributes.pop("name", "")
                attributes.pop("image", None)
                event = ContainerEvent(str(raw.get("Action", "")), str(name), attributes)
                loop.call_soon_threadsafe(on_event, event)
            raise RuntimeUnavailable(f"Docker engine at {self.base_url} closed its event stream")

        api, stream = await self._call(subscribe)
        try:
            on_open()
            await self._call(pump)
        finally:
            stream.close()  # also ends a read the thread is blocked in, when cancelled
            api.close()


def _state(container: Container) -> ContainerState:
    attrs = container.attrs
    state = attrs.get("State", {})
    return ContainerState(
        name=container.name or "",
        status=str(state.get("Status", "unknown")),
        running=bool(state.get("Running")) and not bool(state.get("Restarting")),
        exit_code=int(state.get("ExitCode", 0)),
        restart_count=int(attrs.get("RestartCount", 0)),
        labels=dict(attrs.get("Config", {}).get("Labels") or {}),
        image=str(attrs.get("Config", {}).get("Image", "")),
    )


def _api_message(exc: docker.errors.APIError) -> str:
    explanation = exc.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    if isinstance(explanation, str):
        try:
            explanation = json.loads(explanation).get("message", explanation)
        except (ValueError, AttributeError):
            pass
    return f"Docker engine: {explanation or exc}"
