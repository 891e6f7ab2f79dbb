"""gatebot settings for tests and benchmarks, built one way: plain tables in, then either parsed
(`build_settings`, for code under test) or written as TOML (`write_config`, for a CLI or a
`gatebot serve` subprocess). Both go through the same `config_tables`, so the two never drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gatebot.settings import Settings, parse_settings
from tests.support.real import Nginx

Tables = dict[str, dict[str, Any]]


def project_config(
    name: str, repo_url: str, base_port: int, site_port: int | None = None, **overrides: Any
) -> dict[str, Any]:
    """A project on the sample app with host networking and quick health checks; `site_port`
    adds a [projects.site] server block on 127.0.0.1. Keys in `overrides` replace the defaults
    (`health` is merged)."""
    health = {"interval": 0.1, "timeout": 1.0, "retries": 50, "max_latency_ms": 1000}
    health.update(overrides.pop("health", {}))
    project: dict[str, Any] = {
        "name": name,
        "repo": repo_url,
        "branch": "main",
        "base_port": base_port,
        "network": "host",
        "drain_seconds": 0.2,
        "watch_seconds": 0,  # the watch window's own tests turn it on
        "stop_timeout": 3,
        "health": health,
    }
    if site_port is not None:
        project["site"] = {"listen": f"127.0.0.1:{site_port}", "server_name": "localhost"}
    return {**project, **overrides}


def config_tables(
    data_dir: Path, *, nginx: Nginx | None = None, **tables: dict[str, Any]
) -> Tables:
    """The top-level tables: [server] data_dir, [nginx] for `nginx` (if given), then each of
    `tables` merged over them (``server={"listen": ...}`` keeps data_dir). A value of None
    drops that key."""
    merged: Tables = {"server": {"data_dir": str(data_dir)}}
    if nginx is not None:
        merged["nginx"] = {
            "conf_dir": str(nginx.conf_dir),
            "test_cmd": nginx.test_cmd,
            "reload_cmd": nginx.reload_cmd,
        }
    for name, values in tables.items():
        table = {**merged.get(name, {}), **values}
        merged[name] = {k: v for k, v in table.items() if v is not None}
    return merged


def build_settings(
    data_dir: Path,
    projects: list[dict[str, Any]],
    *,
    nginx: Nginx | None = None,
    **tables: dict[str, Any],
) -> Settings:
    raw: dict[str, Any] = {**config_tables(data_dir, nginx=nginx, **tables), "projects": projects}
    return parse_settings(raw, source=data_dir / "gatebot.toml")


def write_config(
    path: Path,
    data_dir: Path,
    projects: list[dict[str, Any]],
    *,
    nginx: Nginx | None = None,
    **tables: dict[str, Any],
) -> Path:
    """The same settings as a TOML file at `path`."""
    path.write_text(config_toml(config_tables(data_dir, nginx=nginx, **tables), projects))
    return path


def config_toml(tables: dict[str, dict[str, Any]], projects: list[dict[str, Any]]) -> str:
    """A gatebot configuration file: top-level tables, then one [[projects]] table each (a
    nested dict becomes a [projects.KEY] table). Values: bool, int, float, str, list; a None
    value leaves its key out (TOML has no null)."""
    lines: list[str] = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
    for project in projects:
        project = {k: v for k, v in project.items() if v is not None}
        lines.append("[[projects]]")
        nested = {k: v for k, v in project.items() if isinstance(v, dict)}
        lines += [f"{k} = {_toml(v)}" for k, v in project.items() if k not in nested]
        for key, values in nested.items():
            lines.append(f"[projects.{key}]")
            lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


