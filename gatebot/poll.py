"""Polling: catch the pushes no webhook told gatebot about.

A forge never redelivers a failed delivery by itself, and a repository may be unable to reach
gatebot at all (a host behind NAT). So every project's `poll_interval` seconds, and once at
start-up, gatebot asks the repository for the tracked branch's head with ``git ls-remote`` (no
clone) and queues a deploy (trigger ``poll:<branch>``) when that commit is new: not the live,
running, queued or waiting commit, and not older than the live one (the database says whether
it was live once; git, when the job runs, whether it is an ancestor: `gatebot.pipeline.forward`).
A gated project's polled commit waits for its checks like a pushed one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Protocol

from gatebot.aio import cancel_all
from gatebot.errors import GatebotError
from gatebot.intake import push_job
from gatebot.model import JobKind, JobState, Origin, OriginKind
from gatebot.pipeline.engine import Engine
from gatebot.settings import ProjectSettings, Settings
from gatebot.store.jobs import Job, NewJob

log = logging.getLogger("gatebot.poll")

SEEN_STATES = (JobState.RUNNING, JobState.QUEUED, JobState.WAITING)


class Submitter(Protocol):
    """What the poller needs of the queue."""

    async def submit(self, jobs: list[NewJob], *, supersede: bool = False) -> list[Job]: ...


def plan_poll(
    project: ProjectSettings, head: str | None, seen: Iterable[str], not_newer: bool
) -> NewJob | None:
    """The deploy job a polled branch head asks for, or None when it is nothing new: the branch
    is gone, its head is live or on its way (`seen`), or it is not newer than the live commit."""
    if head is None or not_newer or head in set(seen):
        return None
    origin = Origin(
        kind=OriginKind.POLL, who=project.branch, forge=project.forge, repo=project.forge_repo
    )
    return push_job(project, head, origin)


class Poller:
    """One task per project whose poll interval is not 0 (`Settings.poll_interval`)."""

    def __init__(self, settings: Settings, engine: Engine, queue: Submitter) -> None:
        self.settings = settings
        self.engine = engine
        self.queue = queue
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if self._tasks:
            return
        for project in self.settings.projects:
            interval = self.settings.poll_interval(project)
            if interval > 0:
                self._tasks.append(
                    asyncio.create_task(
                        self._run(project, interval), name=f"gatebot-poll-{project.name}"
                    )
                )

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_all(tasks)

    async def _run(self, project: ProjectSettings, interval: float) -> None:
        while True:  # at start-up first, then every interval
            try:
                await self.poll(project)
            except GatebotError as exc:
                log.warning("polling %s failed: %s", project.name, exc)
            except Exception:
                log.exception("polling %s failed", project.name)
            await asyncio.sleep(interval)

    async def poll(self, project: ProjectSettings) -> Job | None:
        """Look at the branch head once; the job queued for it, if any."""
        head = await self.engine.source.remote_head(project.repo, project.branch)
        store = self.engine.store
        seen = {
            job.sha
            for state in SEEN_STATES
            for job in await store.jobs.recent(project=project.name, state=state, limit=1000)
            if job.kind is JobKind.DEPLOY and job.sha
        }
        active = await store.deployments.active(project.name)
        if active is not None and active.commit_sha:
            seen.add(active.commit_sha)
        not_newer = head is not None and await store.deployments.not_newer(project.name, head)
        new = plan_poll(project, head, seen, not_newer)
        if new is None:
            return None
        [job] = await self.queue.submit([new], supersede=True)
        log.info(
            "%s: new head %s of %s found by polling",
            project.name,
            head[:12] if head else "",
            project.branch,
            extra={"project": project.name, "job": job.id},
        )
        return job
