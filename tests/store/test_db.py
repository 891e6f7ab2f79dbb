"""The database's files at rest: a private folder, files only gatebot's user can read."""

from __future__ import annotations

from pathlib import Path

from gatebot.store import Store


async def test_the_data_dir_is_private_and_the_database_0600(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    (data_dir / "gatebot.db").touch(mode=0o644)  # as an older gatebot left them
    data_dir.chmod(0o755)
    (data_dir / "gatebot.db").chmod(0o644)
    store = await Store.open(data_dir / "gatebot.db")
    try:
        await store.tokens.create("ci", "read")  # writes: the WAL files appear
        for path in [data_dir, *data_dir.iterdir()]:
            expected = 0o700 if path.is_dir() else 0o600
            assert path.stat().st_mode & 0o777 == expected, path
    finally:
        await store.close()
