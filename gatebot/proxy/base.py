"""The Proxy interface: what the pipeline needs from the switch in front of the slots.

`NginxProxy` (proxy/nginx.py) is the implementation; the engine holds a `Proxy`, so the
pipeline depends on these verbs only and another front (or a test's) can stand in. The switch
itself (`set_route`) never reloads anything; `ensure` and `remove` change a project's files and
put them in force only when they changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from gatebot.model import Color

if TYPE_CHECKING:
    from gatebot.settings import ProjectSettings

ReloadListener = Callable[[str], None]  # "ok", "rejected" (test failed) or "failed" (reload)


class Proxy(Protocol):
    async def check(self) -> None:
        """Raise ProxyError unless the proxy is installed and its configuration is valid."""

    async def ensure(
        self,
        projects: Sequence[ProjectSettings],
        servers: Mapping[str, Mapping[Color, Sequence[str]]] | None = None,
    ) -> list[str]:
        """Write the files of `projects` and put them in force if any changed; the names of
        the projects whose files changed. On refusal the previous files stay (ProxyError).
        `servers`: per project, each slot's upstream servers ("address:port"), where they
        are not 127.0.0.1 and the slot's port (a swarm slot's nodes); a slot given none
        keeps the servers its file lists."""

    async def remove(self, projects: Sequence[str]) -> list[Path]:
        """Remove the files of projects that left the configuration; the files removed."""

    def configured_elsewhere(self, keep: Iterable[str]) -> list[str]:
        """Projects with files of gatebot's that are not in `keep`."""

    def servers(self, project: str, color: Color) -> list[str]:
        """The upstream servers `project`'s files list for `color` ("address:port")."""

    def route(self, project: str) -> Color | None:
        """The slot `project`'s requests go to (None: nothing is live, 503)."""

    def set_route(self, project: str, color: Color | None, *, note: str = "") -> bool:
        """Send `project`'s requests to `color` (None: 503) without a reload; False when they
        already went there."""

    def set_watch(self, project: str, on: bool) -> None:
        """Start or stop the access log the watch window follows."""

    def access_log(self, project: str) -> Path:
        """Where the watch window's access log of `project` is written."""
