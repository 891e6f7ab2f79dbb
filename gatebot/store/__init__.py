"""All of gatebot's state, in one SQLite database opened through aiosqlite.

`Store` bundles the repositories (deployments, and later jobs, deliveries, tokens) over one
`Database`, so the wiring code opens one thing and passes one thing around.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gatebot.store.db import Database
from gatebot.store.deployments import Deployment, Deployments, Step
from gatebot.store.jobs import Deliveries, Job, Jobs, NewJob


@dataclass(frozen=True)
class Store:
    db: Database
    deployments: Deployments
    jobs: Jobs
    deliveries: Deliveries

    @classmethod
    async def open(cls, path: Path) -> Store:
        db = await Database.open(path)
        return cls(db=db, deployments=Deployments(db), jobs=Jobs(db), deliveries=Deliveries(db))

    async def close(self) -> None:
        await self.db.close()


__all__ = [
    "Database",
    "Deliveries",
    "Deployment",
    "Deployments",
    "Job",
    "Jobs",
    "NewJob",
    "Step",
    "Store",
]
