"""The real things tests run against: a private nginx, a git repository of the sample app,
free loopback ports, and settings that tie them together. Written once, used by every test."""

from __future__ import annotations

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


Nginx = devtools.Nginx
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
        "watch_seconds": 0,  # the watch window's own tests turn it on
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
    tables = {
        "server": {"data_dir": str(data_dir)},
        "nginx": {
            "conf_dir": str(nginx.conf_dir),
            "test_cmd": nginx.test_cmd,
            "reload_cmd": nginx.reload_cmd,
        },
    }
    path.write_text(devtools.config_toml(tables, projects))
    return path
