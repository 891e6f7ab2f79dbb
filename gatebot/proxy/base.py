"""The Proxy interface: what the pipeline needs from the switch in front of the slots.

`NginxProxy` (proxy/nginx.py) is the implementation; the engine holds a `Proxy`, so the
pipeline depends on these two verbs only and another front (or a test's) can stand in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

ReloadListener = Callable[[str], None]  # "ok", "rejected" (test failed) or "failed" (reload)


class Proxy(Protocol):
    async def check(self) -> None:
        """Raise ProxyError unless the proxy is installed and its configuration is valid."""

    async def apply(self, project: str, text: str | None) -> bool:
        """Make `text` the project's configuration (None removes it) and put it in force;
        False when it already was. On refusal the previous configuration stays and ProxyError
        says why."""
