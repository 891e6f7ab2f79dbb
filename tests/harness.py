"""The real things tests run against: a private nginx, a git repository of the sample app,
free loopback ports, and settings that tie them together. Written once, used by every test."""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatebot import devtools
from gatebot.settings import Settings, parse_settings

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_APP = devtools.SAMPLE_APP
BUSYBOX = devtools.BUSYBOX


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
        try:
            pid = int((self.prefix / "nginx.pid").read_text().strip())
        except (OSError, ValueError):
            return
        devtools.stop_pid(pid, signal.SIGQUIT, 5.0)


SampleRepo = devtools.SampleRepo


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
