"""All of gatebot's state, in one SQLite database opened through aiosqlite.

`Store` bundles the repositories (deployments, jobs, deliveries, tokens, audit) over one
`Database`, so the wiring code opens one thing and passes one thing around.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gatebot.store.db import Database
from gatebot.store.deployments import Deployment, Deployments, Step
from gatebot.store.jobs import Deliveries, Job, Jobs, NewJob
from gatebot.store.tokens import Audit, Token, Tokens


@dataclass(frozen=True)
class Store:
    db: Database
    deployments: Deployments
    jobs: Jobs
    deliveries: Deliveries
    tokens: Tokens
    audit: Audit

    @classmethod
    async def open(cls, path: Path) -> Store:
        db = await Database.open(path)
        return cls(
            db=db,
            deployments=Deployments(db),
            jobs=Jobs(db),
            deliveries=Deliveries(db),
            tokens=Tokens(db),
            audit=Audit(db),
        )

    async def close(self) -> None:
        await self.db.close()


__all__ = [
    "Audit",
    "Database",
    "Deliveries",
    "Deployment",
    "Deployments",
    "Job",
    "Jobs",
    "NewJob",
    "Step",
    "Store",
    "Token",
    "Tokens",
]
