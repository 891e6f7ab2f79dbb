"""The real things tests run against: a private nginx, a git repository of the sample app,
free loopback ports, and settings that tie them together. Written once, used by every test."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatebot import devtools
from gatebot.settings import Settings, parse_settings

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_APP = ROOT / "scripts" / "sample-app"
BUSYBOX = Path("/bin/busybox")


_used: set[int] = set()


def free_port_pair() -> int:
    """A base port whose next port is free too (blue and green slots), unique in this run."""
    return devtools.free_port_pair(_used)


@dataclass
class Nginx:
    """A real nginx with its own prefix, including gatebot's conf_dir."""

    prefix: Path
    conf_dir: Path = field(init=False)
    conf: Path = field(init=False)

    def __post_init__(self) -> None:
        self.conf_dir = self.prefix / "gatebot.d"
        self.conf = self.prefix / "nginx.conf"
        (self.prefix / "logs").mkdir(parents=True, exist_ok=True)
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.prefix / "tmp").mkdir(exist_ok=True)
        self.conf.write_text(devtools.nginx_conf(self.prefix))

    @property
    def base_cmd(self) -> list[str]:
        return ["nginx", "-p", str(self.prefix), "-c", str(self.conf)]

    @property
    def test_cmd(self) -> list[str]:
        return [*self.base_cmd, "-t", "-q"]

    @property
    def reload_cmd(self) -> list[str]:
        return [*self.base_cmd, "-s", "reload"]

    def start(self) -> None:
        subprocess.run(self.base_cmd, check=True, capture_output=True)

    def stop(self) -> None:
        """Stop by the master's PID (a signal through `nginx -s` would need a valid config)."""
        pid_file = self.prefix / "nginx.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class SampleRepo:
    """A bare repository (the "remote" gatebot clones over file://) and a working copy."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "remote.git"
        self.work = root / "work"
        shutil.copytree(SAMPLE_APP, self.work)
        shutil.copy2(BUSYBOX, self.work / "busybox")
        self._git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)
        self._git("init", "-q", "-b", "main")
        self._git("remote", "add", "origin", str(self.bare))

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def _git(self, *args: str, cwd: Path | None = None) -> str:
        result = subprocess.run(
            ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
            cwd=cwd or self.work,
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout.strip()

    def commit(
        self,
        version: str,
        *,
        healthy: bool = True,
        start_script: str | None = None,
        push: bool = True,
    ) -> str:
        """Commit the sample app serving `version` at /version; return the SHA."""
        www = self.work / "www"
        (www / "version").write_text(version + "\n")
        health = www / "health"
        if healthy:
            health.write_text("ok\n")
        elif health.exists():
            health.unlink()
        if start_script is not None:
            (self.work / "start.sh").write_text(start_script)
        else:
            shutil.copy2(SAMPLE_APP / "start.sh", self.work / "start.sh")
        self._git("add", "-A")
        self._git("commit", "-q", "--allow-empty", "-m", f"sample app {version}")
        if push:
            self._git("push", "-q", "origin", "main")
        return self._git("rev-parse", "HEAD")


def project_config(
    name: str, repo: SampleRepo, base_port: int, site_port: int, **overrides: Any
) -> dict[str, Any]:
    health = {"interval": 0.1, "timeout": 1.0, "retries": 50, "max_latency_ms": 1000}
    health.update(overrides.pop("health", {}))
    return {
        "name": name,
        "repo": repo.url,
        "branch": "main",
        "base_port": base_port,
        "network": "host",
        "drain_seconds": 0.2,
        "stop_timeout": 3,
        "health": health,
        "site": {"listen": f"127.0.0.1:{site_port}", "server_name": "localhost"},
        **overrides,
    }


def make_settings(data_dir: Path, nginx: Nginx, projects: list[dict[str, Any]]) -> Settings:
    raw = {
        "server": {"data_dir": str(data_dir)},
        "nginx": {
            "conf_dir": str(nginx.conf_dir),
            "test_cmd": nginx.test_cmd,
            "reload_cmd": nginx.reload_cmd,
        },
        "projects": projects,
    }
    return parse_settings(raw, source=data_dir / "gatebot.toml")


def write_config(path: Path, data_dir: Path, nginx: Nginx, projects: list[dict[str, Any]]) -> Path:
    """The same settings as a TOML file, for tests that run the CLI."""
    lines = [
        "[server]",
        f'data_dir = "{data_dir}"',
        "[nginx]",
        f'conf_dir = "{nginx.conf_dir}"',
        f"test_cmd = {_toml(nginx.test_cmd)}",
        f"reload_cmd = {_toml(nginx.reload_cmd)}",
    ]
    for project in projects:
        lines.append("[[projects]]")
        nested = {k: v for k, v in project.items() if isinstance(v, dict)}
        for key, value in project.items():
            if key not in nested:
                lines.append(f"{key} = {_toml(value)}")
        for key, table in nested.items():
            lines.append(f"[projects.{key}]")
            lines += [f"{k} = {_toml(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(value)
