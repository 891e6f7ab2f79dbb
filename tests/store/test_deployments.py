"""Deployments in a real SQLite file: versions, the enforced lifecycle, one ACTIVE, migrations."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

from gatebot.errors import GatebotError, IllegalTransition
from gatebot.model import Slot, Status
from gatebot.store import Store
from gatebot.store.deployments import Deployment, Deployments
from gatebot.store.migrations import MIGRATIONS

SHA_A = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
SHA_B = "b1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
SHA_C = "c0ffee00e5f60718293a4b5c6d7e8f9012345678"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "state" / "gatebot.db")
    yield opened
    await opened.close()


def slot(color: str = "blue", port: int = 3100, project: str = "shop") -> Slot:
    return Slot(container=f"gatebot-{project}-{color}", color=color, port=port)


async def deploying(
    deployments: Deployments, project: str = "shop", sha: str = SHA_A, color: str = "blue"
) -> Deployment:
    created = await deployments.create(project, "test")
    return await deployments.mark_deploying(
        created.id,
        commit_sha=sha,
        commit_message="a change",
        image=f"gatebot/{project}:{created.version}-{sha[:12]}",
        slot=slot(color, 3100 if color == "blue" else 3101, project),
    )


async def live(
    deployments: Deployments, project: str = "shop", sha: str = SHA_A, color: str = "blue"
) -> Deployment:
    """A new deployment made ACTIVE, retiring whichever was ACTIVE before."""
    old = await deployments.active(project)
    new = await deploying(deployments, project, sha, color)
    return await deployments.activate(new.id, old_id=old.id if old else None)


# --- versions ------------------------------------------------------------------------------


async def test_versions_increase_per_project_independently(store: Store) -> None:
    made = [
        await store.deployments.create(project, "test")
        for project in ("shop", "shop", "blog", "shop", "blog")
    ]
    assert [(d.project, d.version) for d in made] == [
        ("shop", 1),
        ("shop", 2),
        ("blog", 1),
        ("shop", 3),
        ("blog", 2),
    ]
    assert all(d.status is Status.PENDING for d in made)
    assert [d.version for d in await store.deployments.history("shop")] == [3, 2, 1]


async def test_concurrent_creates_get_distinct_versions(store: Store) -> None:
    made = await asyncio.gather(*(store.deployments.create("shop", "test") for _ in range(10)))
    assert sorted(d.version for d in made) == list(range(1, 11))


async def test_versions_continue_after_failures(store: Store) -> None:
    first = await store.deployments.create("shop", "test")
    await store.deployments.fail(first.id, stage="source", error="no such commit")
    assert (await store.deployments.create("shop", "test")).version == 2


# --- lifecycle ----------------------------------------------------------------------------


async def test_full_lifecycle_records_fields(store: Store) -> None:
    created = await store.deployments.create("shop", "push by alice")
    assert (created.status, created.trigger, created.commit_sha) == (
        Status.PENDING,
        "push by alice",
        None,
    )
    moving = await store.deployments.mark_deploying(
        created.id, commit_sha=SHA_A, commit_message="msg", image="img:1", slot=slot("green", 3101)
    )
    assert (moving.status, moving.commit_sha, moving.image) == (Status.DEPLOYING, SHA_A, "img:1")
    assert (moving.container, moving.color, moving.port) == ("gatebot-shop-green", "green", 3101)
    assert moving.activated_at is None
    active = await store.deployments.activate(created.id, old_id=None)
    assert active.status is Status.ACTIVE
    assert active.activated_at is not None and active.finished_at is not None


async def test_illegal_change_raises_and_leaves_the_row_unchanged(store: Store) -> None:
    pending = await store.deployments.create("shop", "test")
    with pytest.raises(IllegalTransition):
        await store.deployments.activate(pending.id, old_id=None)  # PENDING -> ACTIVE
    assert await store.deployments.require(pending.id) == pending

    failed = await store.deployments.fail(pending.id, stage="build", error="boom")
    assert (failed.status, failed.failed_stage, failed.error) == (Status.FAILED, "build", "boom")
    with pytest.raises(IllegalTransition):
        await store.deployments.fail(pending.id, stage="health", error="again")
    with pytest.raises(IllegalTransition):
        await store.deployments.mark_deploying(
            pending.id, commit_sha=SHA_B, commit_message="m", image="i", slot=slot()
        )
    assert await store.deployments.require(pending.id) == failed


async def test_deploying_twice_is_refused(store: Store) -> None:
    moving = await deploying(store.deployments)
    with pytest.raises(IllegalTransition):
        await store.deployments.mark_deploying(
            moving.id, commit_sha=SHA_B, commit_message="other", image="other", slot=slot("green")
        )
    assert await store.deployments.require(moving.id) == moving


async def test_unknown_deployment(store: Store) -> None:
    assert await store.deployments.get(999) is None
    with pytest.raises(GatebotError, match="deployment 999 does not exist"):
        await store.deployments.require(999)
    with pytest.raises(GatebotError, match="deployment 999 does not exist"):
        await store.deployments.fail(999, stage="build", error="x")


# --- one ACTIVE per project ---------------------------------------------------------------


async def test_activate_retires_the_old_active(store: Store) -> None:
    first = await live(store.deployments, color="blue")
    other_project = await live(store.deployments, project="blog")
    second = await live(store.deployments, sha=SHA_B, color="green")
    assert (await store.deployments.require(first.id)).status is Status.ROLLED_BACK
    assert (await store.deployments.active("shop")) == second
    assert (await store.deployments.active("blog")) == other_project
    assert [d.id for d in await store.deployments.with_status(Status.ACTIVE)] == [
        other_project.id,
        second.id,
    ]


async def test_second_active_without_retiring_the_first_is_refused(store: Store) -> None:
    first = await live(store.deployments)
    second = await deploying(store.deployments, sha=SHA_B, color="green")
    with pytest.raises(sqlite3.IntegrityError):
        await store.deployments.activate(second.id, old_id=None)
    assert await store.deployments.require(second.id) == second
    assert await store.deployments.active("shop") == first


async def test_activate_is_one_transaction(store: Store) -> None:
    """When the new deployment cannot become ACTIVE, the old one is not retired either."""
    first = await live(store.deployments)
    pending = await store.deployments.create("shop", "test")
    with pytest.raises(IllegalTransition):
        await store.deployments.activate(pending.id, old_id=first.id)
    assert await store.deployments.require(first.id) == first
    assert await store.deployments.require(pending.id) == pending


async def test_rollback_reactivates_a_retired_release_in_a_new_slot(store: Store) -> None:
    first = await live(store.deployments, color="blue")
    second = await live(store.deployments, sha=SHA_B, color="green")
    back = await store.deployments.activate(
        first.id, old_id=second.id, slot=Slot("gatebot-shop-green", "green", 3101)
    )
    assert (back.status, back.color, back.port, back.container) == (
        Status.ACTIVE,
        "green",
        3101,
        "gatebot-shop-green",
    )
    assert (await store.deployments.require(second.id)).status is Status.ROLLED_BACK
    assert [d.id for d in await store.deployments.once_live_before("shop", None)] == [second.id]
    assert await store.deployments.once_live_before("shop", second.version) == []


async def test_readers_never_see_a_project_without_its_active_release(store: Store) -> None:
    first = await live(store.deployments)
    second = await deploying(store.deployments, sha=SHA_B, color="green")
    seen: list[int | None] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            active = await store.deployments.active("shop")
            seen.append(active.id if active else None)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)
    await store.deployments.activate(second.id, old_id=first.id)
    done.set()
    await watcher
    assert seen, "the watcher ran"
    assert None not in seen, f"a reader saw no ACTIVE release: {seen}"


# --- the database file ---------------------------------------------------------------------


async def test_migrations_run_once_and_reopening_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "gatebot.db"
    first = await Store.open(path)
    assert await first.db.schema_version() == len(MIGRATIONS)
    made = await live(first.deployments)
    step = await first.deployments.add_step(made.id, "build", "built")
    await first.close()

    again = await Store.open(path)  # a second run of migration 1 would fail: tables exist
    try:
        assert await again.db.schema_version() == len(MIGRATIONS)
        assert await again.deployments.require(made.id) == made
        assert await again.deployments.steps(made.id) == [step]
        assert (await again.deployments.create("shop", "test")).version == 2
    finally:
        await again.close()


def _sqlite_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}


async def _open_refused(path: Path) -> tuple[str, set[threading.Thread]]:
    """Open a database gatebot must refuse; return the error and the threads left running.

    Connections left open are closed here afterwards, so a leak fails only its own test."""
    before = _sqlite_threads()
    with pytest.raises(GatebotError) as caught:
        await Store.open(path)
    leaked = _sqlite_threads() - before
    for thread in leaked:
        thread.join(timeout=0.5)  # a closed connection's thread ends at once
    leaked = {thread for thread in leaked if thread.is_alive()}
    for obj in gc.get_objects():
        if isinstance(obj, aiosqlite.Connection) and obj._thread in leaked:
            await obj.close()
    return str(caught.value), leaked


def _newer_database(path: Path) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    return path


async def test_database_newer_than_gatebot_is_refused(tmp_path: Path) -> None:
    message, _ = await _open_refused(_newer_database(tmp_path / "gatebot.db"))
    assert f"has schema {len(MIGRATIONS) + 1}, newer than this gatebot" in message
    assert "upgrade gatebot" in message


async def test_refused_database_leaves_no_connection_open(tmp_path: Path) -> None:
    _, leaked = await _open_refused(_newer_database(tmp_path / "gatebot.db"))
    assert not leaked, f"{len(leaked)} SQLite connection thread(s) left running"


async def test_wal_mode_is_on(store: Store) -> None:
    row = await store.db.fetchone("PRAGMA journal_mode")
    assert row is not None and str(row[0]).lower() == "wal"
    with sqlite3.connect(store.db.path) as other:  # persistent: a new connection sees it too
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_open_creates_the_parent_folder(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "gatebot.db"
    opened = await Store.open(path)
    await opened.close()
    assert path.is_file()


# --- find -----------------------------------------------------------------------------------


async def test_find_by_version_v_prefix_and_sha_prefix(store: Store) -> None:
    one = await live(store.deployments, sha=SHA_A)
    two = await live(store.deployments, sha=SHA_B, color="green")
    three = await live(store.deployments, sha=SHA_C)
    blog = await live(store.deployments, project="blog", sha=SHA_C)
    def ids(*found: Deployment | None) -> list[int | None]:
        return [d.id if d else None for d in found]

    find = store.deployments.find
    assert ids(await find("shop", "3"), await find("shop", "v3")) == [three.id, three.id]
    assert ids(await find("shop", "1"), await find("shop", "v2")) == [one.id, two.id]
    assert ids(await find("shop", SHA_B[:7]), await find("shop", SHA_A)) == [two.id, one.id]
    assert ids(await find("shop", SHA_C[:10].upper())) == [three.id]
    assert ids(await find("blog", SHA_C[:7])) == [blog.id]
    assert await find("blog", "v2") is None
    assert await find("shop", "v4") is None
    assert await find("shop", SHA_A[:6]) is None, "fewer than 7 characters is not a SHA prefix"
    assert await find("shop", "deadbee") is None
    assert await find("shop", "nothing") is None


async def test_find_by_sha_skips_releases_that_never_went_live(store: Store) -> None:
    one = await live(store.deployments, sha=SHA_A)
    await live(store.deployments, sha=SHA_B, color="green")
    again = await deploying(store.deployments, sha=SHA_A, color="blue")
    await store.deployments.fail(again.id, stage="health", error="HTTP 500")
    found = await store.deployments.find("shop", SHA_A[:7])
    assert found is not None and found.id == one.id


# --- steps --------------------------------------------------------------------------------


async def test_steps_are_recorded_in_order(store: Store) -> None:
    made = await deploying(store.deployments)
    other = await deploying(store.deployments, project="blog")
    stages = ["source", "build", "run", "health", "switch"]
    added = []
    for n, stage in enumerate(stages):
        added.append(
            await store.deployments.add_step(
                made.id, stage, f"{stage} done", output=f"out {n}", duration=n / 10
            )
        )
        await store.deployments.add_step(other.id, stage, "interleaved")
    steps = await store.deployments.steps(made.id)
    assert steps == added
    assert [s.stage for s in steps] == stages
    assert [s.message for s in steps] == [f"{s} done" for s in stages]
    assert [s.output for s in steps] == [f"out {n}" for n in range(5)]
    assert steps[2].duration == pytest.approx(0.2)
    assert [s.at for s in steps] == sorted(s.at for s in steps)
    later = await store.deployments.steps(made.id, after_id=steps[2].id)
    assert [s.stage for s in later] == ["health", "switch"]
