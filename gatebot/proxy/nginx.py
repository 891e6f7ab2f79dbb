"""nginx as the switch between slots.

`render_project_conf` is pure: a project's settings and its live port in, the file's text out.
`NginxProxy` writes that file atomically into `conf_dir`, runs `test_cmd`, then `reload_cmd`;
if the test fails it puts the previous file back and never reloads. nginx's graceful reload
lets requests already in flight finish on the old workers, which is why no request is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gatebot.errors import ProxyError
from gatebot.proxy.base import ReloadListener
from gatebot.settings import ProjectSettings


def upstream_name(project: str) -> str:
    return f"gatebot_{project.replace('-', '_')}"


def render_project_conf(project: ProjectSettings, port: int, *, note: str = "") -> str:
    """The nginx file for `project`, sending its upstream to 127.0.0.1:`port`."""
    upstream = upstream_name(project.name)
    lines = [
        f"# Managed by gatebot: project {project.name}. Edits here are overwritten.",
        *([f"# {note}"] if note else []),
        f"upstream {upstream} {{",
        f"    server 127.0.0.1:{port} max_fails=0;",
        "    keepalive 16;",
        "}",
    ]
    if project.site is not None:
        lines += [
            "server {",
            f"    listen {project.site.listen};",
            f"    server_name {project.site.server_name};",
            "    location / {",
            f"        proxy_pass http://{upstream};",
            "        proxy_http_version 1.1;",
            '        proxy_set_header Connection "";',
            "        proxy_set_header Host $host;",
            "        proxy_set_header X-Real-IP $remote_addr;",
            "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "        proxy_set_header X-Forwarded-Proto $scheme;",
            "    }",
            "}",
        ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    output: str


async def run_command(argv: Sequence[str], *, timeout: float = 60.0) -> CommandResult:
    """Run an argument list (never a shell) and return its exit code and combined output."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except FileNotFoundError:
        raise ProxyError(f"command not found: {argv[0]} (is nginx installed?)") from None
    except PermissionError:
        raise ProxyError(f"permission denied running {argv[0]}") from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ProxyError(f"{argv[0]} did not finish within {timeout:g}s") from None
    return CommandResult(proc.returncode or 0, out.decode("utf-8", "replace").strip())


class NginxProxy:
    """A `Proxy` (see proxy/base.py); `on_reload` is told how each change ended (metrics)."""

    def __init__(
        self,
        conf_dir: Path,
        test_cmd: Sequence[str],
        reload_cmd: Sequence[str],
        *,
        on_reload: ReloadListener | None = None,
    ) -> None:
        self.conf_dir = conf_dir
        self.test_cmd = list(test_cmd)
        self.reload_cmd = list(reload_cmd)
        self._lock = asyncio.Lock()  # one test+reload at a time within this process
        self.on_reload = on_reload

    @contextlib.asynccontextmanager
    async def _exclusive(self, wait: float = 120.0) -> AsyncIterator[None]:
        """One write+test+reload at a time, in this process (asyncio lock) and across gatebot
        processes sharing conf_dir (an flock), so no one tests or reloads another's half-made
        change."""
        async with self._lock:
            self.conf_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.conf_dir / ".gatebot-nginx.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + wait
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if loop.time() > deadline:
                            raise ProxyError(
                                f"another gatebot process kept {self.conf_dir} locked for {wait:g}s"
                            ) from None
                        await asyncio.sleep(0.05)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _told(self, outcome: str) -> None:
        if self.on_reload is not None:
            with contextlib.suppress(Exception):
                self.on_reload(outcome)

    def path(self, project: str) -> Path:
        return self.conf_dir / f"{project}.conf"

    def current(self, project: str) -> str | None:
        try:
            return self.path(project).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    async def check(self) -> None:
        """Raise ProxyError unless nginx is installed and its configuration tests clean."""
        result = await run_command(self.test_cmd)
        if result.returncode != 0:
            raise ProxyError(f"nginx configuration test failed: {result.output}")

    async def apply(self, project: str, text: str | None) -> bool:
        """Make `text` the project's file (None removes it); test, then reload.

        Returns False when the file already had that content (nothing was reloaded).
        On a failed test the previous file is restored and ProxyError carries nginx's message.
        """
        async with self._exclusive():
            previous = self.current(project)
            if previous == text:
                return False
            self.conf_dir.mkdir(parents=True, exist_ok=True)
            _write(self.path(project), text)
            try:
                result = await run_command(self.test_cmd)
            except ProxyError:  # nginx missing or hung: never leave an untested file behind
                _write(self.path(project), previous)
                raise
            if result.returncode != 0:
                _write(self.path(project), previous)
                self._told("rejected")
                raise ProxyError(f"nginx rejected the new configuration: {result.output}")
            try:
                reload = await run_command(self.reload_cmd)
            except ProxyError:
                _write(self.path(project), previous)
                self._told("failed")
                raise
            if reload.returncode != 0:
                _write(self.path(project), previous)
                self._told("failed")
                raise ProxyError(f"nginx reload failed: {reload.output}")
            self._told("ok")
            return True


def _write(path: Path, text: str | None) -> None:
    """Replace `path` atomically (write a temp file, fsync, rename); None deletes it."""
    if text is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
