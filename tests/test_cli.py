"""The `gatebot` command, run as a real process against real Docker, nginx and git."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.cli import config_file, gatebot
from tests.support.faults import tmpfs_on
from tests.support.settings import config_toml
from tests.support.setup import Setup, Workspace


def test_check_config_prints_the_resolved_projects(setup: Setup) -> None:
    path = config_file(setup)
    result = gatebot("-c", str(path), "check-config")
    assert result.returncode == 0, result.stderr
    assert f"{setup.name}: {setup.repo.url} @ main" in result.stdout
    assert f"blue :{setup.base_port}, green :{setup.base_port + 1}" in result.stdout


def test_config_from_the_environment_variable(setup: Setup) -> None:
    path = config_file(setup)
    result = gatebot("check-config", env={"GATEBOT_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr


def test_bad_config_names_file_and_key_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[projects]]\nname = "shop"\nrepo = "file:///x"\nbase_port = "high"\n')
    result = gatebot("-c", str(path), "check-config")
    assert result.returncode == 2
    assert f"{path}: projects[0] (shop).base_port:" in result.stderr
    assert "Traceback" not in result.stderr


def test_deploy_status_history_rollback(setup: Setup) -> None:
    path = config_file(setup)
    sha1 = setup.repo.commit("v1")
    first = gatebot("-c", str(path), "deploy", setup.name)
    assert first.returncode == 0, first.stderr
    for stage in ("source", "build", "run", "health", "switch"):
        assert f"  {stage} " in first.stdout
    assert f"v1 ({sha1[:12]}) live on blue" in first.stdout

    sha2 = setup.repo.commit("v2")
    assert gatebot("-c", str(path), "deploy", setup.name, "--sha", sha2).returncode == 0

    status = gatebot("-c", str(path), "status", "--json")
    assert status.returncode == 0, status.stderr
    active = json.loads(status.stdout)["projects"][0]["active"]
    assert {k: active[k] for k in ("version", "commit", "color", "port", "container")} == {
        "version": 2,
        "commit": sha2,
        "color": "green",
        "port": setup.base_port + 1,
        "container": f"gatebot-{setup.name}-green",
    }
    assert active["image"] == f"gatebot/{setup.name}:2-{sha2[:12]}"

    back = gatebot("-c", str(path), "rollback", setup.name)
    assert back.returncode == 0, back.stderr
    assert "v1" in back.stdout and "live on blue" in back.stdout

    history = json.loads(gatebot("-c", str(path), "history", setup.name, "--json").stdout)
    assert [(d["version"], d["status"]) for d in history["deployments"]] == [
        (2, "ROLLED_BACK"),
        (1, "ACTIVE"),
    ]
    text = gatebot("-c", str(path), "status", setup.name).stdout
    assert text.startswith(f"{setup.name}: v1 {sha1[:12]} on blue")


def test_failed_deploy_exits_non_zero_with_the_reason(setup: Setup) -> None:
    path = config_file(setup, health={"retries": 2})
    setup.repo.commit("broken", healthy=False)
    result = gatebot("-c", str(path), "deploy", setup.name)
    assert result.returncode == 1
    assert "health failed" in result.stderr and "HTTP 404" in result.stderr


def test_unknown_project_is_one_line_and_exit_2(setup: Setup) -> None:
    result = gatebot("-c", str(config_file(setup)), "deploy", "nope")
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "gatebot: unknown project 'nope': it is not in the configuration"
    )


def offline_config(workspace: Workspace) -> Path:
    """A configuration for `workspace` whose nginx commands do nothing (no nginx, no Docker)."""
    tables: dict[str, dict[str, Any]] = {
        "server": {"data_dir": str(workspace.data_dir)},
        "nginx": {
            "conf_dir": str(workspace.tmp_path / "conf"),
            "test_cmd": ["true"],
            "reload_cmd": ["true"],
        },
    }
    path = workspace.tmp_path / "gatebot.toml"
    path.write_text(config_toml(tables, [workspace.project(forge_repo="acme/shop")]))
    return path


def test_a_corrupted_database_is_one_line_naming_it(workspace: Workspace) -> None:
    path = offline_config(workspace)
    workspace.data_dir.mkdir()
    database = workspace.data_dir / "gatebot.db"
    database.write_bytes(b"not a database, " * 512)
    result = gatebot("-c", str(path), "status")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"gatebot: cannot open database {database}: file is not a database; "
        "restore it from a backup"
    ]


def test_a_read_only_conf_dir_is_one_line_naming_the_path_and_errno(
    workspace: Workspace,
) -> None:
    path = offline_config(workspace)
    conf_dir = workspace.tmp_path / "conf"
    with tmpfs_on(conf_dir, read_only=True):
        result = gatebot("-c", str(path), "check-config", "--write-nginx")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"gatebot: cannot write nginx files in {conf_dir}: Read-only file system [EROFS] "
        f"({conf_dir}/.gatebot-nginx.lock)"
    ]


def test_unreachable_docker_engine_is_one_clear_line(setup: Setup) -> None:
    path = config_file(setup)
    result = gatebot(
        "-c",
        str(path),
        "deploy",
        setup.name,
        env={"DOCKER_HOST": f"unix://{setup.tmp_path}/no-such.sock"},
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "Docker engine at unix://" in lines[0] and "not reachable" in lines[0]
    )


def test_missing_nginx_is_one_clear_line(setup: Setup) -> None:
    raw = config_file(setup).read_text()
    path = setup.tmp_path / "nonginx.toml"
    path.write_text(raw.replace('test_cmd = ["nginx"', 'test_cmd = ["/nonexistent/nginx"'))
    result = gatebot("-c", str(path), "deploy", setup.name)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "gatebot: command not found: /nonexistent/nginx (is nginx installed?)"
    )


def test_deploy_while_the_project_is_locked_exits_3(setup: Setup) -> None:
    path = config_file(setup)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys\n"
            "from pathlib import Path\n"
            "from gatebot.pipeline.lock import ProjectLocks\n"
            "async def main():\n"
            f"    async with ProjectLocks(Path({str(setup.data_dir / 'locks')!r})).hold("
            f"{setup.name!r}, 'deploy by someone-else'):\n"
            "        print('locked', flush=True)\n"
            "        await asyncio.sleep(60)\n"
            "asyncio.run(main())\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result = gatebot("-c", str(path), "deploy", setup.name)
        assert result.returncode == 3
        assert "busy: deploy by someone-else" in result.stderr
    finally:
        holder.kill()
        holder.wait()


# --- nothing the CLI prints carries a secret --------------------------------------------------

REPO_PASSWORD = "s3cret-repo-pass"
DB_SECRET = "hunter2-database-password"


def secret_config(tmp_path: Path) -> Path:
    path = tmp_path / "gatebot.toml"
    path.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\n\n'
        "[[projects]]\n"
        'name = "shop"\n'
        f'repo = "https://deploy:{REPO_PASSWORD}@git.example.com/acme/shop.git"\n'
        "base_port = 3100\n"
        f'env = {{ DB_PASSWORD = "{DB_SECRET}" }}\n'
    )
    return path


def test_check_config_hides_repository_credentials(tmp_path: Path) -> None:
    result = gatebot("-c", str(secret_config(tmp_path)), "check-config")
    assert result.returncode == 0, result.stderr
    assert "shop: https://***@git.example.com/acme/shop.git @ main" in result.stdout
    assert REPO_PASSWORD not in result.stdout + result.stderr


def test_history_hides_secrets_stored_by_an_older_version(tmp_path: Path) -> None:
    """Rows written before gatebot redacted on write may hold secrets: the CLI still hides them."""
    import asyncio

    from gatebot.store import Store

    path = secret_config(tmp_path)

    async def old_row() -> None:
        store = await Store.open(tmp_path / "data" / "gatebot.db")
        try:
            d = await store.deployments.create("shop", "cli:alice")
            await store.deployments.fail(
                d.id, stage="health", error=f"exited; DB_PASSWORD={DB_SECRET} {REPO_PASSWORD}"
            )
        finally:
            await store.close()

    asyncio.run(old_row())
    for args in (("history", "shop"), ("history", "shop", "--json")):
        result = gatebot("-c", str(path), *args)
        assert result.returncode == 0, result.stderr
        assert "DB_PASSWORD=***" in result.stdout
        assert DB_SECRET not in result.stdout and REPO_PASSWORD not in result.stdout


def test_a_failed_deploy_shows_the_apps_log_lines_redacted(setup: Setup) -> None:
    leaky = '#!/bin/sh\necho "connecting with DB_PASSWORD=$DB_PASSWORD" >&2\nexit 3\n'
    path = config_file(setup, env={"DB_PASSWORD": DB_SECRET}, health={"retries": 600})
    setup.repo.commit("leaky", start_script=leaky)
    result = gatebot("-c", str(path), "deploy", setup.name)
    assert result.returncode == 1
    assert "health failed: container" in result.stderr
    assert "DB_PASSWORD=***" in result.stderr  # the container's last lines, for the operator
    assert DB_SECRET not in result.stdout + result.stderr
