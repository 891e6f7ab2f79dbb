"""Migration 5 rebuilds the jobs table (a new state, a gate column): rows and the references
to them from other tables survive, and the new state is accepted."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gatebot.model import JobKind, JobState, Origin, OriginKind
from gatebot.store import Store
from gatebot.store.jobs import NewJob
from gatebot.store.migrations import MIGRATIONS


async def test_a_schema_4_database_is_upgraded_with_its_jobs_and_audit_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gatebot.db"
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:4]:
        conn.executescript(script)
    conn.execute("PRAGMA user_version = 4")
    conn.execute(
        "INSERT INTO jobs (project, kind, sha, state, trigger, created_at, updated_at)"
        " VALUES ('shop', 'deploy', 'abc1234', 'succeeded', 'push:alice', 't', 't')"
    )
    conn.execute(
        "INSERT INTO audit (at, actor, action, project, job_id)"
        " VALUES ('t', 'x', 'deploy', 'shop', 1)"
    )
    conn.commit()
    conn.close()

    store = await Store.open(path)
    try:
        assert await store.db.schema_version() == len(MIGRATIONS)
        old = await store.jobs.require(1)
        assert (old.state, old.sha, old.gate) == (JobState.SUCCEEDED, "abc1234", None)
        assert [e.job_id for e in await store.audit.recent()] == [1]
        origin = Origin(kind=OriginKind.PUSH, who="bob")
        gate = {"required": ["test"], "pending": ["test"]}
        [new] = await store.jobs.enqueue(
            [NewJob("shop", JobKind.DEPLOY, origin, sha="def5678", gate=gate)]
        )
        assert new.state is JobState.WAITING and new.gate == gate
        assert [j.id for j in await store.jobs.waiting()] == [new.id]
        assert await store.jobs.queued() == []
        opened = await store.jobs.open_gate(new.id, {**gate, "pending": []})
        assert opened is not None and opened.state is JobState.QUEUED
        assert await store.jobs.open_gate(new.id, gate) is None  # no longer waiting
        writer = await (await store.db.conn.execute("PRAGMA foreign_keys")).fetchone()
        assert writer is not None and writer[0] == 1  # back on after the migration
    finally:
        await store.close()
