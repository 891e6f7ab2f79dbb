"""`gatebot token create|list|revoke`: the token is printed once, only its hash is kept, and a
revoked token authenticates nothing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from gatebot.cli import main
from gatebot.store import Store
from gatebot.store.tokens import Token


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gatebot.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    return path


def authenticate(data_dir: Path, secret: str) -> Token | None:
    async def check() -> Token | None:
        store = await Store.open(data_dir / "gatebot.db")
        try:
            return await store.tokens.authenticate(secret)
        finally:
            await store.close()

    return asyncio.run(check())


def run(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str, str]:
    code = main(["-c", str(config), "token", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_create_list_revoke(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = config.parent / "data"
    code, out, err = run(capsys, config, "create", "ci", "--scope", "deploy")
    assert code == 0
    secret = out.strip()
    assert secret.startswith("gb_") and "\n" not in secret and len(secret) > 50
    assert "only time it is shown" in err and secret not in err
    token = authenticate(data_dir, secret)
    assert token is not None and (token.name, token.scope) == ("ci", "deploy")

    code, out, _ = run(capsys, config, "create", "viewer")
    viewer = authenticate(data_dir, out.strip())
    assert code == 0 and viewer is not None and viewer.scope == "read"

    code, out, _ = run(capsys, config, "list")
    assert code == 0 and secret not in out
    lines = out.splitlines()
    assert lines[0].startswith("ci ") and " deploy " in lines[0] and token.lookup in lines[0]
    assert lines[1].startswith("viewer ") and " read " in lines[1]
    code, out, _ = run(capsys, config, "list", "--json")
    listed = json.loads(out)["tokens"]
    assert [(t["name"], t["scope"]) for t in listed] == [("ci", "deploy"), ("viewer", "read")]
    assert "hash" not in listed[0] and secret not in out

    with sqlite3.connect(data_dir / "gatebot.db") as conn:
        stored = conn.execute("SELECT hash FROM tokens WHERE name = 'ci'").fetchone()[0]
        dump = "\n".join(conn.iterdump())
    assert stored == hashlib.sha256(secret.encode()).hexdigest() and secret not in dump

    code, out, _ = run(capsys, config, "revoke", "ci")
    assert code == 0 and "revoked token 'ci'" in out
    assert authenticate(data_dir, secret) is None
    code, out, _ = run(capsys, config, "list")
    assert "ci " not in out
    code, out, _ = run(capsys, config, "list", "--all")
    assert "ci " in out and "revoked 20" in out


def test_refusals_exit_2_with_one_line(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, config, "create", "ci")[0] == 0
    code, out, err = run(capsys, config, "create", "ci")
    assert (code, out) == (2, "") and "a token named 'ci' exists: revoke it first" in err
    code, _, err = run(capsys, config, "create", "no spaces allowed")
    assert code == 2 and "is not a valid token name" in err
    code, _, err = run(capsys, config, "revoke", "nobody")
    assert code == 2 and err.strip() == "gatebot: no live token named 'nobody'"
    with pytest.raises(SystemExit) as usage:
        main(["-c", str(config), "token", "create", "x", "--scope", "admin"])
    assert usage.value.code == 2
