"""The durable job queue's truth: one row per requested deploy or rollback, moving through
the job states of `gatebot.model`.

A webhook's delivery record and the job it queues are written in one transaction, so a
delivery is either acknowledged and queued, or neither.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import aiosqlite
import orjson

from gatebot.errors import GatebotError
from gatebot.model import LIVE_ONCE, JobKind, JobState, Origin, Status
from gatebot.store.db import Database, utcnow
from gatebot.store.deployments import NOT_NEWER_SQL


@dataclass(frozen=True)
class Job:
    id: int
    project: str
    kind: JobKind
    sha: str | None
    target: str | None  # rollback: version or SHA to bring back
    state: JobState
    trigger: str  # origin.trigger, kept as a column for queries and display
    delivery_id: str | None
    origin: Origin  # who asked, through which delivery, where to reply
    deployment_id: int | None
    error: str | None
    superseded_by: int | None
    retry_of: int | None
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    gate: dict[str, Any] | None = None  # a gated push: what it waits for (gatebot.gate)

    @classmethod
    def from_row(
        cls, row: aiosqlite.Row | sqlite3.Row | dict[str, Any], origin: Origin | None = None
    ) -> Job:
        """The job a row holds; `origin`, when the caller knows it already (a job's origin
        never changes once written), spares parsing the row's JSON."""
        data = dict(row)
        context = data.pop("context")
        if origin is None:
            origin = Origin.from_json(orjson.loads(context or "{}"), data["trigger"])
        data["origin"] = origin
        gate = data.get("gate")
        data["gate"] = orjson.loads(gate) if gate else None
        data["kind"] = JobKind(data["kind"])
        data["state"] = JobState(data["state"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = str(self.kind)
        data["state"] = str(self.state)
        data["origin"] = self.origin.to_json()
        return data


@dataclass(frozen=True)
class NewJob:
    project: str
    kind: JobKind
    origin: Origin
    sha: str | None = None
    target: str | None = None
    gate: dict[str, Any] | None = None  # set: the job starts `waiting` for the commit's checks

    @property
    def trigger(self) -> str:
        return self.origin.trigger

    @property
    def delivery_id(self) -> str | None:
        return self.origin.delivery_id

    def queued_as(self, job_id: int, now: str) -> Job:
        """The row this job becomes when inserted as `job_id` at `now`, built from what was
        written rather than read back and parsed (a third of the commit's time)."""
        return Job(
            id=job_id,
            project=self.project,
            kind=self.kind,
            sha=self.sha,
            target=self.target,
            state=JobState.WAITING if self.gate is not None else JobState.QUEUED,
            trigger=self.trigger,
            delivery_id=self.delivery_id,
            origin=self.origin,
            deployment_id=None,
            error=None,
            superseded_by=None,
            retry_of=None,
            created_at=now,
            updated_at=now,
            started_at=None,
            finished_at=None,
            gate=self.gate,
        )


class DuplicateDelivery(GatebotError):
    """The forge sent this delivery before; it was handled then."""


_Outcome = tuple[list[Job], list[tuple[Job, Job]]]


@dataclass
class _Pending:
    """An enqueue waiting for the next group commit."""

    jobs: list[NewJob]
    delivery: tuple[str, str, str, str | None] | None
    supersede: bool
    forward_only: bool  # leave out a job of a commit not newer than the live one
    superseded_jobs: bool  # return the jobs superseded (else the pairs are left empty)
    future: asyncio.Future[_Outcome]


def _apply_all(batch: list[_Pending], conn: sqlite3.Connection) -> list[_Outcome | Exception]:
    now = utcnow()  # one time for the whole batch: they are committed together
    origins: dict[int, Origin] = {}  # of the jobs this batch created, by id
    return [_apply(conn, pending, now, origins) for pending in batch]


def _apply(
    conn: sqlite3.Connection, pending: _Pending, now: str, origins: dict[int, Origin]
) -> _Outcome | Exception:
    """One caller's share of a group commit, under its own savepoint (in write_batch)."""
    conn.execute("SAVEPOINT enqueue")
    try:
        outcome = _enqueue_rows(conn, pending, now, origins)
    except Exception as exc:
        conn.execute("ROLLBACK TO enqueue")
        conn.execute("RELEASE enqueue")
        return exc
    conn.execute("RELEASE enqueue")
    origins.update((job.id, job.origin) for job in outcome[0])
    return outcome


def _enqueue_rows(
    conn: sqlite3.Connection, pending: _Pending, now: str, origins: dict[int, Origin]
) -> _Outcome:
    """`pending`'s rows; a queued deploy it supersedes was usually created earlier in the same
    batch, and then its origin is taken from `origins` instead of parsed again. With
    `forward_only`, a job whose commit is not newer than its project's live one is left out,
    decided in the same transaction (and without a read of its own per delivery)."""
    jobs = pending.jobs
    if pending.forward_only:
        jobs = [
            job
            for job in jobs
            if job.sha is None
            or not conn.execute(NOT_NEWER_SQL, (job.project, job.sha, job.project)).fetchone()[0]
        ]
    if pending.delivery is not None:
        forge, delivery_id, event, digest = pending.delivery
        recorded = conn.execute(
            "INSERT OR IGNORE INTO deliveries (forge, delivery_id, event, outcome, received_at,"
            " body_sha256) VALUES (?, ?, ?, ?, ?, ?) RETURNING delivery_id",
            (forge, delivery_id, event, "queued" if jobs else "ignored", now, digest),
        ).fetchall()
        if not recorded:
            raise DuplicateDelivery(f"delivery {delivery_id} (or its body) was received before")
    created: list[Job] = []
    superseded: list[tuple[Job, Job]] = []
    for job in jobs:
        [(job_id,)] = conn.execute(
            "INSERT INTO jobs (project, kind, sha, target, state, trigger, delivery_id,"
            " context, created_at, updated_at, gate)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                job.project,
                str(job.kind),
                job.sha,
                job.target,
                str(JobState.WAITING if job.gate is not None else JobState.QUEUED),
                job.trigger,
                job.delivery_id,
                orjson.dumps(job.origin.to_json()).decode(),
                now,
                now,
                json.dumps(job.gate) if job.gate is not None else None,
            ),
        ).fetchall()
        new = job.queued_as(job_id, now)
        created.append(new)
        if pending.supersede and job.kind is JobKind.DEPLOY:
            update = (
                "UPDATE jobs SET state = 'superseded', superseded_by = ?, updated_at = ?,"
                " finished_at = ? WHERE project = ? AND state IN ('queued', 'waiting')"
                " AND kind = 'deploy' AND id < ?"
            )
            params = (new.id, now, now, job.project, new.id)
            if not pending.superseded_jobs:
                conn.execute(update, params)
                continue
            older = conn.execute(update + " RETURNING *", params).fetchall()
            superseded += sorted(
                ((Job.from_row(r, origins.get(r["id"])), new) for r in older),
                key=lambda pair: pair[0].id,
            )
    return created, superseded


class Jobs:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: list[_Pending] = []
        self._committer: asyncio.Task[None] | None = None

    async def get(self, job_id: int) -> Job | None:
        row = await self.db.fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(row) if row else None

    async def require(self, job_id: int) -> Job:
        job = await self.get(job_id)
        if job is None:
            raise GatebotError(f"job {job_id} does not exist")
        return job

    async def recent(
        self,
        *,
        project: str | None = None,
        state: JobState | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Job]:
        where, params = [], []
        if project is not None:
            where.append("project = ?")
            params.append(project)
        if state is not None:
            where.append("state = ?")
            params.append(str(state))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self.db.fetchall(
            f"SELECT * FROM jobs {clause} ORDER BY id DESC LIMIT ? OFFSET ?",  # noqa: S608
            (*params, limit, offset),
        )
        return [Job.from_row(r) for r in rows]

    async def queued(self) -> list[Job]:
        """Queued jobs, oldest first: the order they run in."""
        rows = await self.db.fetchall("SELECT * FROM jobs WHERE state = 'queued' ORDER BY id")
        return [Job.from_row(r) for r in rows]

    async def waiting(self) -> list[Job]:
        """Jobs waiting for their commit's checks, oldest first."""
        rows = await self.db.fetchall("SELECT * FROM jobs WHERE state = 'waiting' ORDER BY id")
        return [Job.from_row(r) for r in rows]

    async def note_gate(self, job_id: int, gate: dict[str, Any]) -> bool:
        """Record what a waiting job waits for; False when it no longer waits."""
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "UPDATE jobs SET gate = ?, updated_at = ? WHERE id = ? AND state = 'waiting'",
                (json.dumps(gate), utcnow(), job_id),
            )
            return cursor.rowcount == 1

    async def open_gate(self, job_id: int, gate: dict[str, Any]) -> Job | None:
        """waiting -> queued: the checks passed. None when the job no longer waits."""
        async with self.db.transaction() as conn:
            rows = await conn.execute_fetchall(
                "UPDATE jobs SET state = 'queued', gate = ?, updated_at = ?"
                " WHERE id = ? AND state = 'waiting' RETURNING *",
                (json.dumps(gate), utcnow(), job_id),
            )
        rows = list(rows)
        return Job.from_row(rows[0]) if rows else None

    async def fail_gate(self, job_id: int, gate: dict[str, Any], error: str) -> Job | None:
        """waiting -> failed: a check failed, or the gate timed out. None when it no longer
        waits."""
        now = utcnow()
        async with self.db.transaction() as conn:
            rows = await conn.execute_fetchall(
                "UPDATE jobs SET state = 'failed', gate = ?, error = ?, finished_at = ?,"
                " updated_at = ? WHERE id = ? AND state = 'waiting' RETURNING *",
                (json.dumps(gate), error, now, now, job_id),
            )
        rows = list(rows)
        return Job.from_row(rows[0]) if rows else None

    async def last_id(self) -> int:
        """The newest job's id (0 when there is none)."""
        row = await self.db.fetchone("SELECT COALESCE(MAX(id), 0) FROM jobs")
        return int(row[0]) if row else 0

    async def created_after(self, job_id: int) -> list[Job]:
        """Every job newer than `job_id`, oldest first: ids follow commit order (one writer at
        a time), so what another process queued since is exactly this."""
        rows = await self.db.fetchall("SELECT * FROM jobs WHERE id > ? ORDER BY id", (job_id,))
        return [Job.from_row(r) for r in rows]

    async def superseded_since(self, job_id: int) -> list[Job]:
        """The jobs up to `job_id` that a newer one superseded since, oldest first (the newer
        ones that were superseded come with `created_after`)."""
        rows = await self.db.fetchall(
            "SELECT * FROM jobs INDEXED BY jobs_superseded_by WHERE superseded_by > ?"
            " AND id <= ? ORDER BY id",
            (job_id, job_id),
        )
        return [Job.from_row(r) for r in rows if r["state"] == JobState.SUPERSEDED]

    async def superseded_by(self, job_id: int) -> list[Job]:
        """The jobs `job_id` superseded when it arrived, oldest first."""
        rows = await self.db.fetchall(
            "SELECT * FROM jobs WHERE superseded_by = ? AND state = 'superseded' ORDER BY id",
            (job_id,),
        )
        return [Job.from_row(r) for r in rows]

    async def revive(self, job_id: int) -> Job | None:
        """superseded -> queued (or waiting, when gated: the watcher judges it again): it holds
        a descendant of the commit of the job that superseded it on arrival. None when it is
        not superseded."""
        async with self.db.transaction() as conn:
            rows = await conn.execute_fetchall(
                "UPDATE jobs SET state = CASE WHEN gate IS NULL THEN 'queued' ELSE 'waiting' END,"
                " superseded_by = NULL, finished_at = NULL, updated_at = ?"
                " WHERE id = ? AND state = 'superseded' RETURNING *",
                (utcnow(), job_id),
            )
        rows = list(rows)
        return Job.from_row(rows[0]) if rows else None

    async def counts(self, project: str | None = None) -> dict[str, int]:
        """Jobs per state (of one project, if given)."""
        if project is None:
            rows = await self.db.fetchall("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        else:
            rows = await self.db.fetchall(
                "SELECT state, COUNT(*) FROM jobs WHERE project = ? GROUP BY state", (project,)
            )
        return {str(r[0]): int(r[1]) for r in rows}

    async def enqueue(
        self,
        jobs: list[NewJob],
        *,
        delivery: tuple[str, str, str, str | None] | None = None,
        supersede: bool = False,
        forward_only: bool = False,
    ) -> list[Job]:
        """Insert `jobs` (and the delivery (forge, id, event), if any) in one transaction.

        With `supersede`, a project's queued and waiting deploy jobs are marked superseded by
        the new one. With `forward_only`, a job of a commit not newer than its project's live
        one is left out.
        Raises DuplicateDelivery when the delivery was recorded before; nothing is written then.
        """
        created, _ = await self._enqueue(jobs, delivery, supersede, forward_only, False)
        return created

    async def enqueue_superseding(
        self,
        jobs: list[NewJob],
        *,
        delivery: tuple[str, str, str, str | None] | None = None,
        supersede: bool = False,
        forward_only: bool = False,
    ) -> tuple[list[Job], list[tuple[Job, Job]]]:
        """`enqueue`, also returning the (superseded job, newer job) pairs.

        Group commit: the calls waiting at one moment are written in one transaction, in one
        call (Database.write_batch), each under a savepoint of its own (so each is
        still all or nothing, and a duplicate is refused alone). Every caller hears only after
        that commit, with the rows its own INSERT and UPDATE returned, never from a later read.
        """
        return await self._enqueue(jobs, delivery, supersede, forward_only, True)

    async def _enqueue(
        self,
        jobs: list[NewJob],
        delivery: tuple[str, str, str, str | None] | None,
        supersede: bool,
        forward_only: bool,
        superseded_jobs: bool,
    ) -> _Outcome:
        future: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        pending = _Pending(list(jobs), delivery, supersede, forward_only, superseded_jobs, future)
        self._pending.append(pending)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending())
        return await future

    async def _commit_pending(self) -> None:
        while self._pending:
            batch = [p for p in self._pending if not p.future.done()]
            self._pending = []
            if not batch:
                continue
            try:
                outcomes = await self.db.write_batch(partial(_apply_all, batch))
            except BaseException as exc:  # the commit failed: none of the batch was written
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(GatebotError(f"could not record the job: {exc}"))
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for p, outcome in zip(batch, outcomes, strict=True):
                if p.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    p.future.set_exception(outcome)
                else:
                    p.future.set_result(outcome)

    async def claim(self, job_id: int) -> bool:
        """queued -> running; False when the job is no longer queued."""
        now = utcnow()
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, updated_at = ?"
                " WHERE id = ? AND state = 'queued'",
                (now, now, job_id),
            )
            return cursor.rowcount == 1

    async def release(self, job_id: int) -> None:
        """running -> queued: the project was busy elsewhere; try again later."""
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE jobs SET state = 'queued', started_at = NULL, updated_at = ?"
                " WHERE id = ? AND state = 'running'",
                (utcnow(), job_id),
            )

    async def finish(
        self,
        job_id: int,
        state: JobState,
        *,
        deployment_id: int | None = None,
        error: str | None = None,
        superseded_by: int | None = None,
    ) -> Job:
        """running -> succeeded | failed | superseded (its commit was not newer, NotNewer)."""
        if state not in (JobState.SUCCEEDED, JobState.FAILED, JobState.SUPERSEDED):
            raise ValueError(state)
        now = utcnow()
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE jobs SET state = ?, deployment_id = COALESCE(?, deployment_id),"
                " error = ?, superseded_by = COALESCE(?, superseded_by), finished_at = ?,"
                " updated_at = ? WHERE id = ? AND state = 'running'",
                (str(state), deployment_id, error, superseded_by, now, now, job_id),
            )
        return await self.require(job_id)

    async def set_deployment(self, job_id: int, deployment_id: int) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE jobs SET deployment_id = ?, updated_at = ? WHERE id = ?",
                (deployment_id, utcnow(), job_id),
            )

    async def cancel(self, job_id: int) -> bool:
        """queued or waiting -> cancelled; False when the job is running or finished."""
        now = utcnow()
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?, updated_at = ?"
                " WHERE id = ? AND state IN ('queued', 'waiting')",
                (now, now, job_id),
            )
            return cursor.rowcount == 1

    async def recover_interrupted(self, *, retries: int) -> tuple[list[Job], list[Job]]:
        """After a restart: a running job whose release went live before the crash (only its
        drain was cut short) is succeeded; the others become failed ("interrupted") and each is
        queued again, as a new job (`retry_of` the interrupted one), unless a newer job for its
        project exists or it is already the `retries`-th retry (its error then says so).
        Returns (failed, requeued)."""
        now = utcnow()
        failed: list[int] = []
        requeued: list[int] = []
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "SELECT jobs.*, deployments.status AS deployment_status FROM jobs"
                " LEFT JOIN deployments ON deployments.id = jobs.deployment_id"
                " WHERE jobs.state = 'running' ORDER BY jobs.id"
            )
            for row in await cursor.fetchall():
                data = dict(row)
                went_live = data.pop("deployment_status") in (
                    (Status.ACTIVE,) if data["kind"] == JobKind.ROLLBACK else LIVE_ONCE
                )
                job = Job.from_row(data)
                if went_live:
                    await conn.execute(
                        "UPDATE jobs SET state = 'succeeded', finished_at = ?, updated_at = ?"
                        " WHERE id = ?",
                        (now, now, job.id),
                    )
                    continue
                attempts = await _attempts(conn, job.id)
                error = "interrupted: gatebot stopped while this job ran"
                if attempts > retries:
                    error += f"; not queued again: interrupted {attempts} times"
                    error += f" ([queue] interrupted_retries = {retries})"
                await conn.execute(
                    "UPDATE jobs SET state = 'failed', error = ?, finished_at = ?, updated_at = ?"
                    " WHERE id = ?",
                    (error, now, now, job.id),
                )
                failed.append(job.id)
                newer = await (
                    await conn.execute(
                        "SELECT COUNT(*) FROM jobs WHERE project = ? AND id > ?",
                        (job.project, job.id),
                    )
                ).fetchone()
                if attempts <= retries and newer is not None and newer[0] == 0:
                    cursor2 = await conn.execute(
                        "INSERT INTO jobs (project, kind, sha, target, state, trigger,"
                        " delivery_id, context, retry_of, created_at, updated_at)"
                        " VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                        (
                            job.project,
                            str(job.kind),
                            job.sha,
                            job.target,
                            job.trigger,
                            job.delivery_id,
                            json.dumps(job.origin.to_json()),
                            job.id,
                            now,
                            now,
                        ),
                    )
                    assert cursor2.lastrowid is not None
                    requeued.append(cursor2.lastrowid)
        return (
            [await self.require(i) for i in failed],
            [await self.require(i) for i in requeued],
        )


async def _attempts(conn: aiosqlite.Connection, job_id: int) -> int:
    """How many times this job has run: 1, plus one per job it is a retry of, transitively."""
    cursor = await conn.execute(
        "WITH RECURSIVE chain(id, retry_of) AS ("
        " SELECT id, retry_of FROM jobs WHERE id = ?"
        " UNION ALL SELECT jobs.id, jobs.retry_of FROM jobs JOIN chain ON jobs.id = chain.retry_of"
        ") SELECT COUNT(*) FROM chain",
        (job_id,),
    )
    row = await cursor.fetchone()
    return int(row[0]) if row else 1


class Deliveries:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def count(self) -> int:
        row = await self.db.fetchone("SELECT COUNT(*) FROM deliveries")
        return int(row[0]) if row else 0

    async def prune(self, keep: timedelta, *, now: datetime | None = None) -> int:
        """Forget deliveries received more than `keep` ago; how many were removed. A delivery
        older than that is no longer recognised as a duplicate (or a replayed body)."""
        cutoff = ((now or datetime.now(UTC)) - keep).isoformat(timespec="milliseconds")
        async with self.db.transaction() as conn:
            cursor = await conn.execute("DELETE FROM deliveries WHERE received_at < ?", (cutoff,))
            return cursor.rowcount
