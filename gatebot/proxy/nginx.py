"""nginx as the switch between slots, without a reload.

Each project has two files in `conf_dir`, both rendered (purely) from its settings:

- `<project>.conf`, included at http level: one static upstream per slot
  (`gatebot_<project>_blue`, `gatebot_<project>_green`), the access log format gatebot follows
  during the watch window, and the `[projects.site]` server block when there is one;
- `<project>.proxy`, a snippet for inside a `location`: it picks the upstream per request from
  marker files, answers 503 while nothing is live, and proxies.

The markers, beside them in `conf_dir` (where nginx's worker user can stat them):
`<project>.live` (absent: nothing is live, 503), `<project>.green` (present: green is live, else
blue), `<project>.watch` (present: the snippet writes the project's access log). A switch is one
atomic rename or unlink of `<project>.green`, seen by the very next request; nginx is tested and
reloaded only when a project's files change (`ensure`), with the previous files put back if the
test fails.

Every file gatebot writes starts with `HEADER`; gatebot never rewrites or removes a file in
`conf_dir` that does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gatebot.aio import flock_within
from gatebot.errors import ProxyError, describe
from gatebot.model import Color
from gatebot.proxy.base import ReloadListener
from gatebot.settings import ProjectSettings

HEADER = "# Managed by gatebot"
KINDS = ("conf", "proxy")  # a project's rendered files: <project>.conf, <project>.proxy
MARKERS = ("live", "green", "watch")


def upstream_name(project: str, color: Color) -> str:
    return f"{_ident(project)}_{color}"


def route_variable(project: str) -> str:
    return f"${_ident(project)}"


def log_format_name(project: str) -> str:
    return f"{_ident(project)}_watch"


def _ident(project: str) -> str:
    return f"gatebot_{project.replace('-', '_')}"


@dataclass(frozen=True)
class Layout:
    """Where a project's files, markers and access log are."""

    conf_dir: Path
    log_dir: Path

    def file(self, project: str, kind: str) -> Path:
        return self.conf_dir / f"{project}.{kind}"

    def marker(self, project: str, name: str) -> Path:
        return self.conf_dir / f"{project}.{name}"

    def access_log(self, project: str) -> Path:
        return self.log_dir / f"{project}.access.log"


Servers = Mapping[Color, Sequence[str]]  # a slot's upstream servers, "address:port" each


def render_conf(project: ProjectSettings, layout: Layout, servers: Servers | None = None) -> str:
    """`<project>.conf`: both slots' upstreams, the watch log format, the optional site.

    A slot's upstream lists `servers[color]` (a swarm slot: every node running one of its
    tasks), else 127.0.0.1 and the slot's port."""
    blue, green = project.ports
    lines = [
        f"{HEADER}: project {project.name}. gatebot rewrites this file from its configuration.",
        f"# Routing: include {layout.file(project.name, 'proxy')} inside a location.",
    ]
    listed = {
        color: list((servers or {}).get(color) or [f"127.0.0.1:{port}"])
        for color, port in ((Color.BLUE, blue), (Color.GREEN, green))
    }
    for color in (Color.BLUE, Color.GREEN):
        own = listed[color]
        # One server is never set aside (a 502 for fail_timeout would follow); of several (a
        # swarm's nodes), one that failed is skipped for a while until the refresh drops it.
        health = "max_fails=0" if len(own) == 1 else "max_fails=1 fail_timeout=10s"
        lines.append(f"upstream {upstream_name(project.name, color)} {{")
        lines += [f"    server {server} {health};" for server in own]
        if project.runtime == "swarm":
            # A swarm slot's servers change with its nodes, and nginx applies a reload a
            # moment after its command returns: a worker still on the previous servers (or
            # a node that just died) passes the request to the other color, which runs until
            # it is retired, rather than answering 502.
            lines += [f"    server {server} backup;" for server in listed[color.other]]
        lines += ["    keepalive 16;", "}"]
    lines.append(f"log_format {log_format_name(project.name)} '$msec $status $upstream_addr';")
    if project.site is not None:
        lines += [
            "server {",
            f"    listen {project.site.listen};",
            f"    server_name {project.site.server_name};",
            "    location / {",
            f"        include {layout.file(project.name, 'proxy')};",
            "    }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def render_proxy(project: ProjectSettings, layout: Layout) -> str:
    """`<project>.proxy`: the per-request route from the markers, for inside a `location`."""
    name = project.name
    route = route_variable(name)
    watching = f"{route}_watch"
    return (
        "\n".join(
            [
                f"{HEADER}: project {name}. gatebot rewrites this file from its configuration.",
                "# Include it inside a location; the marker files beside it pick the live slot.",
                "open_file_cache off;  # the marker tests below must see every flip at once",
                "default_type text/plain;  # for the 503 below; proxied answers keep their own",
                f"set {route} {upstream_name(name, Color.BLUE)};",
                f"if (-f {layout.marker(name, 'green')}) {{"
                f" set {route} {upstream_name(name, Color.GREEN)}; }}",
                f"set {watching} 0;",
                f"if (-f {layout.marker(name, 'watch')}) {{ set {watching} 1; }}",
                f"if (!-f {layout.marker(name, 'live')}) {{"
                f' return 503 "no release of {name} is live yet\\n"; }}',
                f"access_log {layout.access_log(name)} {log_format_name(name)} if={watching};",
                f"proxy_pass http://{route};",
                "proxy_http_version 1.1;",
                'proxy_set_header Connection "";',
                "proxy_set_header Host $host;",
                "proxy_set_header X-Real-IP $remote_addr;",
                "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
                "proxy_set_header X-Forwarded-Proto $scheme;",
            ]
        )
        + "\n"
    )


def render_files(
    project: ProjectSettings, layout: Layout, servers: Servers | None = None
) -> dict[str, str]:
    """A project's files by kind ("conf", "proxy")."""
    return {
        "conf": render_conf(project, layout, servers),
        "proxy": render_proxy(project, layout),
    }


def rendered_servers(text: str | None, project: str, color: Color) -> list[str]:
    """The servers a `<project>.conf` of gatebot's lists in `color`'s upstream."""
    if not is_gatebots(text):
        return []
    assert text is not None
    found: list[str] = []
    inside = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped == f"upstream {upstream_name(project, color)} {{":
            inside = True
        elif inside and stripped == "}":
            break
        elif inside and stripped.startswith("server ") and "backup" not in stripped[:-1].split():
            found.append(stripped.split()[1].rstrip(";"))
    return found


def choose_servers(
    project: ProjectSettings, given: Servers | None, existing: str | None
) -> dict[Color, list[str]]:
    """Each slot's upstream servers: the ones `given` (its endpoints now) if any, else those
    the current file lists on the slot's port (a retired swarm slot keeps the nodes it was
    last live on, so deploying it again on the same nodes changes no file and reloads
    nothing), else none (render_conf's 127.0.0.1 default)."""
    chosen: dict[Color, list[str]] = {}
    for color, port in zip((Color.BLUE, Color.GREEN), project.ports, strict=True):
        listed = list((given or {}).get(color) or ())
        if not listed:
            listed = [
                s for s in rendered_servers(existing, project.name, color)
                if s.rpartition(":")[2] == str(port)
            ]  # fmt: skip
        chosen[color] = listed
    return chosen


def is_gatebots(text: str | None) -> bool:
    return text is not None and text.startswith(HEADER)


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
        log_dir: Path,
        on_reload: ReloadListener | None = None,
    ) -> None:
        self.layout = Layout(conf_dir, log_dir)
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
            try:
                self.conf_dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.conf_dir / ".gatebot-nginx.lock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise self._unwritable(exc) from None
            try:
                if not await flock_within(fd, wait):
                    raise ProxyError(
                        f"another gatebot process kept {self.conf_dir} locked for {wait:g}s"
                    )
                try:
                    yield
                except OSError as exc:  # a file that could not be written (read-only, full)
                    raise self._unwritable(exc) from None
            finally:
                os.close(fd)  # releases the flock

    def _unwritable(self, exc: OSError) -> ProxyError:
        return ProxyError(f"cannot write nginx files in {self.conf_dir}: {describe(exc)}")

    def _told(self, outcome: str) -> None:
        if self.on_reload is not None:
            with contextlib.suppress(Exception):
                self.on_reload(outcome)

    def path(self, project: str, kind: str = "conf") -> Path:
        return self.layout.file(project, kind)

    def current(self, project: str, kind: str = "conf") -> str | None:
        return _read(self.path(project, kind))

    async def check(self) -> None:
        """Raise ProxyError unless nginx is installed and its configuration tests clean."""
        result = await run_command(self.test_cmd)
        if result.returncode != 0:
            raise ProxyError(f"nginx configuration test failed: {result.output}")

    # --- files: written when the configuration changes, then tested and reloaded ----------

    def _wanted(
        self, projects: Iterable[ProjectSettings], servers: Mapping[str, Servers] | None
    ) -> dict[Path, str | None]:
        """The files that must change for `projects` (refusing to overwrite a foreign file)."""
        wanted: dict[Path, str | None] = {}
        for project in projects:
            given = (servers or {}).get(project.name)
            slots = choose_servers(project, given, self.current(project.name))
            for kind, text in render_files(project, self.layout, slots).items():
                path = self.path(project.name, kind)
                existing = _read(path)
                if existing == text:
                    continue
                if existing is not None and not is_gatebots(existing):
                    raise ProxyError(
                        f"{path} was not written by gatebot, which leaves it alone: move it "
                        f"away so gatebot can write project {project.name}'s file there"
                    )
                wanted[path] = text
        return wanted

    async def ensure(
        self,
        projects: Sequence[ProjectSettings],
        servers: Mapping[str, Servers] | None = None,
    ) -> list[str]:
        """Give every project in `projects` its files; if any changed, test nginx once and
        reload it once. Returns the projects whose files changed (none: nothing was run).
        `servers` gives a project's slots' upstream servers (see `choose_servers`).

        On a failed test or reload every file is put back as it was and ProxyError carries
        nginx's message."""
        if not self._wanted(projects, servers) and not self._unloaded.exists():
            return []  # the common case, without waiting for another process's reload
        async with self._exclusive():
            wanted = self._wanted(projects, servers)
            if not wanted:
                if self._unloaded.exists():  # a reload that failed: load the files again
                    await self._apply({})
                return []
            self._private_logs(projects)
            changed = sorted(
                {p.name for p in projects for k in KINDS if self.path(p.name, k) in wanted}
            )
            await self._apply(wanted)
            return changed

    def _private_logs(self, projects: Sequence[ProjectSettings]) -> None:
        """The watch logs' folder 0700 and each log 0600, made before nginx opens them (its
        master, root, can; nginx keeps a file's mode): they hold request lines."""
        log_dir = self.layout.log_dir
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if log_dir.stat().st_mode & 0o077:
            log_dir.chmod(0o700)
        for project in projects:
            path = self.layout.access_log(project.name)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))

    async def remove(self, projects: Sequence[str]) -> list[Path]:
        """Remove gatebot's files and markers of `projects` (which left the configuration);
        test and reload. Files gatebot did not write stay. Returns what was removed."""
        async with self._exclusive():
            wanted: dict[Path, str | None] = {}
            for name in projects:
                for kind in (*KINDS, *MARKERS):
                    path = self.layout.file(name, kind)
                    if is_gatebots(_read(path)):
                        wanted[path] = None
            if wanted:
                await self._apply(wanted)
            return sorted(wanted)

    def configured_elsewhere(self, keep: Iterable[str]) -> list[str]:
        """Projects with gatebot's files in conf_dir that are not in `keep`."""
        keep = set(keep)
        found = set()
        for path in self.conf_dir.glob("*.conf"):
            name = path.name.removesuffix(".conf")
            if name not in keep and is_gatebots(_read(path)):
                found.add(name)
        return sorted(found)

    @property
    def _unloaded(self) -> Path:
        """Present from a reload's start until one succeeds: nginx may not run the files on
        disk (a reload that failed or timed out may have loaded the files put back after it,
        or not), so the next `ensure` tests and reloads even when no file changes."""
        return self.conf_dir / ".gatebot-unloaded"

    async def _apply(self, wanted: dict[Path, str | None]) -> None:
        previous = {path: _read(path) for path in wanted}
        self.conf_dir.mkdir(parents=True, exist_ok=True)

        def restore() -> None:
            for path, text in previous.items():
                _write(path, text)

        try:
            for path, text in wanted.items():
                _write(path, text)
        except OSError:  # a full or read-only conf_dir: never leave half a change behind
            with contextlib.suppress(OSError):
                restore()
            raise

        try:
            result = await run_command(self.test_cmd)
        except ProxyError:  # nginx missing or hung: never leave an untested file behind
            restore()
            raise
        if result.returncode != 0:
            restore()
            self._told("rejected")
            raise ProxyError(f"nginx rejected the new configuration: {result.output}")
        _write(self._unloaded, f"{HEADER}: a reload is under way or failed\n")
        try:
            reload = await run_command(self.reload_cmd)
        except ProxyError:
            restore()
            await self._reload_restored()
            self._told("failed")
            raise
        if reload.returncode != 0:
            restore()
            await self._reload_restored()
            self._told("failed")
            raise ProxyError(f"nginx reload failed: {reload.output}")
        _write(self._unloaded, None)
        self._told("ok")

    async def _reload_restored(self) -> None:
        """After a failed reload (which may have loaded the new files all the same), load the
        files put back; if that fails too, the marker stays for the next `ensure`."""
        with contextlib.suppress(ProxyError):
            if (await run_command(self.reload_cmd)).returncode == 0:
                _write(self._unloaded, None)

    def servers(self, project: str, color: Color) -> list[str]:
        return rendered_servers(self.current(project), project, color)

    # --- markers: the switch, no reload ---------------------------------------------------

    def route(self, project: str) -> Color | None:
        """The slot the markers send `project` to (None: nothing is live, 503)."""
        if not self.layout.marker(project, "live").exists():
            return None
        return Color.GREEN if self.layout.marker(project, "green").exists() else Color.BLUE

    def set_route(self, project: str, color: Color | None, *, note: str = "") -> bool:
        """Send `project`'s requests to `color` (None: answer 503), by one rename or unlink
        each; returns False when the markers already said so. Raises ProxyError when a
        marker's name is taken by a file gatebot did not write, or cannot be written."""
        if self.route(project) == color:
            return False
        text = f"{HEADER}: project {project}" + (f", {note}" if note else "") + "\n"
        live, green = self.layout.marker(project, "live"), self.layout.marker(project, "green")
        try:
            if color is None:
                _unlink_ours(live)
                return True
            if color is Color.GREEN:
                _create(green, text)
            else:
                _unlink_ours(green)
            if not live.exists():
                _create(live, text)
        except OSError as exc:
            raise ProxyError(
                f"cannot set the route marker of {project}: {describe(exc)}"
            ) from None
        return True

    def access_log(self, project: str) -> Path:
        return self.layout.access_log(project)

    def set_watch(self, project: str, on: bool) -> None:
        """Start (truncating the project's access log) or stop the snippet's access log."""
        marker = self.layout.marker(project, "watch")
        try:
            if on:
                with contextlib.suppress(FileNotFoundError, PermissionError):
                    os.truncate(self.layout.access_log(project), 0)
                _create(marker, f"{HEADER}: {project} watch window\n")
            else:
                _unlink_ours(marker)
        except OSError as exc:
            raise ProxyError(
                f"cannot set the watch marker of {project}: {describe(exc)}"
            ) from None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _create(path: Path, text: str) -> None:
    """Make `path` exist with `text`, atomically (temp file, rename); refuse a foreign file."""
    existing = _read(path)
    if existing is not None and not is_gatebots(existing):
        raise ProxyError(f"{path} was not written by gatebot, which leaves it alone")
    _write(path, text, sync=False)


def _unlink_ours(path: Path) -> None:
    existing = _read(path)
    if existing is None:
        return
    if not is_gatebots(existing):
        raise ProxyError(f"{path} was not written by gatebot, which leaves it alone")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _write(path: Path, text: str | None, *, sync: bool = True) -> None:
    """Replace `path` atomically (write a temp file, fsync unless `sync` is False, rename);
    None deletes it. An OSError names the file; a temp file left by one is removed."""
    if text is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.filename is None:  # a write or fsync: say which file
            raise OSError(exc.errno, exc.strerror, str(tmp)) from exc
        raise

