"""Deployments and their step logs. Every status change goes through `check_transition`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import aiosqlite

from gatebot.errors import GatebotError
from gatebot.model import Color, Slot, Status, check_transition
from gatebot.numbers import parse_count
from gatebot.store.db import Database, utcnow

# Whether a commit (project, sha, project) is the live one or that of a release older than
# the live one that was live once: a push of it would move the project backwards.
NOT_NEWER_SQL = (
    "SELECT COUNT(*) FROM deployments WHERE project = ? AND commit_sha = ?"
    " AND (status = 'ACTIVE' OR (status = 'ROLLED_BACK' AND version < (SELECT version"
    " FROM deployments WHERE project = ? AND status = 'ACTIVE')))"
)


@dataclass(frozen=True)
class Deployment:
    id: int
    project: str
    version: int
    commit_sha: str | None
    commit_message: str | None
    image: str | None
    container: str | None
    color: Color | None
    port: int | None
    status: Status
    error: str | None
    failed_stage: str | None
    trigger: str
    created_at: str
    updated_at: str
    activated_at: str | None
    finished_at: str | None

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> Deployment:
        data = dict(row)
        data["status"] = Status(data["status"])
        data["color"] = Color(data["color"]) if data["color"] else None
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "status": str(self.status),
            "color": str(self.color) if self.color else None,
        }


@dataclass(frozen=True)
class Step:
    id: int
    deployment_id: int
    at: str
    stage: str
    message: str
    output: str | None
    duration: float | None

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> Step:
        return cls(**dict(row))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AdoptedRelease:
    """A release found running that the database does not know, as its container says."""

    id: int  # the deployment id on the container's label
    project: str
    version: int
    commit_sha: str | None
    image: str
    slot: Slot
    status: Status  # ACTIVE (the one the route points at) or ROLLED_BACK


class Deployments:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- reads ----------------------------------------------------------------------------

    async def get(self, deployment_id: int) -> Deployment | None:
        row = await self.db.fetchone("SELECT * FROM deployments WHERE id = ?", (deployment_id,))
        return Deployment.from_row(row) if row else None

    async def require(self, deployment_id: int) -> Deployment:
        found = await self.get(deployment_id)
        if found is None:
            raise GatebotError(f"deployment {deployment_id} does not exist")
        return found

    async def active(self, project: str) -> Deployment | None:
        row = await self.db.fetchone(
            "SELECT * FROM deployments WHERE project = ? AND status = 'ACTIVE'", (project,)
        )
        return Deployment.from_row(row) if row else None

    async def with_status(self, *statuses: Status, project: str | None = None) -> list[Deployment]:
        """Deployments in any of `statuses` (of one project, if given), oldest first."""
        marks = ", ".join("?" * len(statuses))
        sql = f"SELECT * FROM deployments WHERE status IN ({marks})"  # noqa: S608 - marks only
        params: list[str] = [str(s) for s in statuses]
        if project is not None:
            sql += " AND project = ?"
            params.append(project)
        rows = await self.db.fetchall(sql + " ORDER BY id", params)
        return [Deployment.from_row(r) for r in rows]

    async def history(self, project: str, *, limit: int = 50, offset: int = 0) -> list[Deployment]:
        rows = await self.db.fetchall(
            "SELECT * FROM deployments WHERE project = ? ORDER BY version DESC LIMIT ? OFFSET ?",
            (project, limit, offset),
        )
        return [Deployment.from_row(r) for r in rows]

    async def find(self, project: str, ref: str) -> Deployment | None:
        """A deployment by version number (``3`` or ``v3``) or by commit SHA prefix (7+ chars)."""
        number = parse_count(ref.removeprefix("v"))
        if number is not None:
            row = await self.db.fetchone(
                "SELECT * FROM deployments WHERE project = ? AND version = ?",
                (project, number),
            )
            if row:
                return Deployment.from_row(row)
        if 7 <= len(ref) <= 64 and all(c in "0123456789abcdef" for c in ref.lower()):
            row = await self.db.fetchone(
                "SELECT * FROM deployments WHERE project = ? AND commit_sha LIKE ? "
                "AND status IN ('ACTIVE', 'ROLLED_BACK') ORDER BY version DESC LIMIT 1",
                (project, ref.lower() + "%"),
            )
            if row:
                return Deployment.from_row(row)
        return None

    async def once_live_before(self, project: str, version: int | None) -> list[Deployment]:
        """Releases that were live once (ROLLED_BACK), newest first, older than `version`."""
        rows = await self.db.fetchall(
            "SELECT * FROM deployments WHERE project = ? AND status = 'ROLLED_BACK' "
            "AND version < ? ORDER BY version DESC",
            (project, version if version is not None else 2**62),
        )
        return [Deployment.from_row(r) for r in rows]

    async def once_live_with_commit(self, project: str, sha: str) -> Deployment | None:
        """The newest release of commit `sha` that was live once and is not live now."""
        row = await self.db.fetchone(
            "SELECT * FROM deployments WHERE project = ? AND commit_sha = ?"
            " AND status = 'ROLLED_BACK' ORDER BY version DESC LIMIT 1",
            (project, sha),
        )
        return Deployment.from_row(row) if row else None

    async def not_newer(self, project: str, sha: str) -> bool:
        """Whether `sha` is the live commit or that of a release older than the live one that
        was live once (a push of it would move the project backwards)."""
        row = await self.db.fetchone(NOT_NEWER_SQL, (project, sha, project))
        return bool(row and row[0])

    async def any_recorded(self) -> bool:
        """Whether the database holds any deployment at all (a new one holds none)."""
        return await self.db.fetchone("SELECT 1 FROM deployments LIMIT 1") is not None

    async def steps(self, deployment_id: int, *, after_id: int = 0) -> list[Step]:
        rows = await self.db.fetchall(
            "SELECT * FROM deployment_steps WHERE deployment_id = ? AND id > ? ORDER BY id",
            (deployment_id, after_id),
        )
        return [Step.from_row(r) for r in rows]

    # --- writes ---------------------------------------------------------------------------

    async def create(self, project: str, trigger: str) -> Deployment:
        """A PENDING deployment with the project's next version number."""
        now = utcnow()
        async with self.db.transaction() as conn:
            cursor = await conn.execute(
                "INSERT INTO deployments"
                " (project, version, status, trigger, created_at, updated_at)"
                " VALUES (?, (SELECT COALESCE(MAX(version), 0) + 1"
                " FROM deployments WHERE project = ?), 'PENDING', ?, ?, ?)",
                (project, project, trigger, now, now),
            )
            new_id = cursor.lastrowid
        assert new_id is not None
        return await self.require(new_id)

    async def mark_deploying(
        self, deployment_id: int, *, commit_sha: str, commit_message: str, image: str, slot: Slot
    ) -> Deployment:
        async with self.db.transaction() as conn:
            await _transition(
                conn,
                deployment_id,
                Status.DEPLOYING,
                commit_sha=commit_sha,
                commit_message=commit_message,
                image=image,
                container=slot.container,
                color=str(slot.color),
                port=slot.port,
            )
        return await self.require(deployment_id)

    async def fail(self, deployment_id: int, *, stage: str, error: str) -> Deployment:
        async with self.db.transaction() as conn:
            await _transition(
                conn,
                deployment_id,
                Status.FAILED,
                failed_stage=stage,
                error=error,
                finished_at=utcnow(),
            )
        return await self.require(deployment_id)

    async def activate(
        self, new_id: int, *, old_id: int | None, slot: Slot | None = None
    ) -> Deployment:
        """In one transaction: old ACTIVE -> ROLLED_BACK, new -> ACTIVE (moved to `slot`)."""
        now = utcnow()
        async with self.db.transaction() as conn:
            if old_id is not None:
                await _transition(conn, old_id, Status.ROLLED_BACK)
            fields: dict[str, Any] = {"activated_at": now, "finished_at": now}
            if slot is not None:
                fields.update(container=slot.container, color=str(slot.color), port=slot.port)
            await _transition(conn, new_id, Status.ACTIVE, **fields)
        return await self.require(new_id)

    async def revert(
        self, new_id: int, *, old_id: int | None, stage: str, error: str
    ) -> Deployment:
        """In one transaction: the new ACTIVE -> FAILED (at `stage`, for `error`), the release
        it replaced ROLLED_BACK -> ACTIVE again. Returns the new (now FAILED) deployment."""
        now = utcnow()
        async with self.db.transaction() as conn:
            await _transition(
                conn, new_id, Status.FAILED, failed_stage=stage, error=error, finished_at=now
            )
            if old_id is not None:
                await _transition(conn, old_id, Status.ACTIVE, activated_at=now)
        return await self.require(new_id)

    async def adopt(self, releases: list[AdoptedRelease], *, trigger: str) -> list[Deployment]:
        """Record releases found running that the database does not know (`gatebot reconcile
        --adopt`), in one transaction, under the ids and versions their containers carry: not
        a status change but a record of what is, so as ACTIVE or ROLLED_BACK directly."""
        now = utcnow()
        async with self.db.transaction() as conn:
            for r in releases:
                assert r.status in (Status.ACTIVE, Status.ROLLED_BACK)
                await conn.execute(
                    "INSERT INTO deployments (id, project, version, commit_sha, image, container,"
                    " color, port, status, trigger, created_at, updated_at, activated_at,"
                    " finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        r.id,
                        r.project,
                        r.version,
                        r.commit_sha,
                        r.image,
                        r.slot.container,
                        str(r.slot.color),
                        r.slot.port,
                        str(r.status),
                        trigger,
                        now,
                        now,
                        now if r.status is Status.ACTIVE else None,
                        now,
                    ),
                )
        return [await self.require(r.id) for r in releases]

    async def add_step(
        self,
        deployment_id: int,
        stage: str,
        message: str,
        *,
        output: str | None = None,
        duration: float | None = None,
    ) -> Step:
        async with self.db.transaction() as conn:
            [row] = await conn.execute_fetchall(
                "INSERT INTO deployment_steps (deployment_id, at, stage, message, output, duration)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
                (deployment_id, utcnow(), stage, message, output, duration),
            )
        return Step.from_row(row)


async def _transition(
    conn: aiosqlite.Connection, deployment_id: int, new: Status, **fields: Any
) -> None:
    """The only code that changes a deployment's status."""
    cursor = await conn.execute("SELECT status FROM deployments WHERE id = ?", (deployment_id,))
    row = await cursor.fetchone()
    if row is None:
        raise GatebotError(f"deployment {deployment_id} does not exist")
    check_transition(deployment_id, Status(row[0]), new)
    fields = {**fields, "status": str(new), "updated_at": utcnow()}
    assignments = ", ".join(f"{name} = ?" for name in fields)
    await conn.execute(
        f"UPDATE deployments SET {assignments} WHERE id = ?",  # noqa: S608 - names are ours
        (*fields.values(), deployment_id),
    )
