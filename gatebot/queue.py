"""The in-process deploy queue. Its truth is the `jobs` table; this module only runs it.

One job at a time per project, at most `max_concurrent` at once. A project locked by another
process (a CLI deploy) puts its job back in the queue and is tried again after a pause. On
stop, running jobs get `shutdown_timeout` to finish; queued jobs stay queued for the next start.
Observers (forge feedback, metrics) hear about every job's life; they can never break it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from gatebot.errors import GatebotError, LockHeld, StageFailed
from gatebot.pipeline.engine import Engine
from gatebot.pipeline.journal import JournalEvent, Listener
from gatebot.settings import QueueSettings
from gatebot.store.deployments import Deployment
from gatebot.store.jobs import FAILED, SUCCEEDED, Job, NewJob

log = logging.getLogger("gatebot.queue")

JobRunner = Callable[[Engine, Job, list[Listener]], Awaitable[Deployment]]


class JobObserver(Protocol):
    async def job_queued(self, job: Job) -> None: ...
    async def job_superseded(self, job: Job, by: Job) -> None: ...
    async def job_started(self, job: Job) -> None: ...
    def job_event(self, job: Job, event: JournalEvent) -> None: ...
    async def job_finished(self, job: Job, deployment: Deployment | None) -> None: ...


class JobQueue:
    def __init__(
        self,
        engine: Engine,
        settings: QueueSettings,
        runner: JobRunner,
        observers: list[JobObserver] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.runner = runner
        self.observers = list(observers or [])
        self.paused = settings.paused
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}  # project -> its running job
        self._running_ids: dict[str, int] = {}  # project -> id of its running job
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._not_before: dict[str, float] = {}  # project -> loop time it may be retried
        self._dispatcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()

    # --- submitting -----------------------------------------------------------------------

    async def submit(
        self,
        jobs: list[NewJob],
        *,
        delivery: tuple[str, str, str] | None = None,
        supersede: bool = False,
    ) -> list[Job]:
        """Write the jobs durably (raises DuplicateDelivery for a redelivery), then wake up."""
        created, superseded = await self.engine.store.jobs.enqueue_superseding(
            jobs, delivery=delivery, supersede=supersede
        )
        for job in created:
            # A webhook's jobs are logged once, by the webhook handler with the delivery's id;
            # a second line per delivery here cost a sixth of intake throughput (scripts/bench).
            log.log(
                logging.DEBUG if job.delivery_id else logging.INFO,
                "queued %s of %s",
                job.kind,
                job.project,
                extra={"project": job.project, "job": job.id, "delivery": job.delivery_id},
            )
            await self._notify("job_queued", job)
            for old, newer in superseded:
                if newer.id == job.id:
                    await self._notify("job_superseded", old, job)
        self.wake()
        return created

    async def cancel(self, job_id: int) -> bool:
        return await self.engine.store.jobs.cancel(job_id)

    def wake(self) -> None:
        self._wake.set()

    # --- running --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(self._dispatch(), name="gatebot-queue")
            self.wake()

    def running_job_ids(self) -> list[int]:
        return sorted(self._running_ids.values())

    async def drain(self) -> None:
        """Wait until no job runs and none is runnable (for tests and benchmarks)."""
        while True:
            await self._idle.wait()
            queued = [] if self.paused else await self.engine.store.jobs.queued()
            if not queued and not self._running:
                return
            await asyncio.sleep(0.05)

    async def stop(self, timeout: float | None = None) -> None:
        """Take no new job; let running ones finish within `timeout`, then cancel them."""
        self._stopping = True
        self.wake()
        if self._dispatcher is not None:
            await self._dispatcher
            self._dispatcher = None
        tasks = list(self._running.values())
        if tasks:
            limit = self.settings.shutdown_timeout if timeout is None else timeout
            log.info("waiting up to %.0fs for %d running job(s)", limit, len(tasks))
            done, pending = await asyncio.wait(tasks, timeout=limit)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping or self.paused:
                continue
            for job in await self.engine.store.jobs.queued():
                if len(self._running) >= self.settings.max_concurrent:
                    break
                if job.project in self._running:
                    continue
                if self._not_before.get(job.project, 0.0) > loop.time():
                    continue
                if not await self.engine.store.jobs.claim(job.id):
                    continue
                self._idle.clear()
                self._running_ids[job.project] = job.id
                self._running[job.project] = asyncio.create_task(
                    self._run(job), name=f"gatebot-job-{job.id}"
                )

    async def _run(self, job: Job) -> None:
        extra = {"project": job.project, "job": job.id, "delivery": job.delivery_id}
        deployment: Deployment | None = None
        deployment_ids: list[int] = []

        def on_event(event: JournalEvent) -> None:
            if not deployment_ids:
                deployment_ids.append(event.deployment_id)
                task = asyncio.get_running_loop().create_task(
                    self.engine.store.jobs.set_deployment(job.id, event.deployment_id)
                )
                self._side_tasks.add(task)  # keep a reference until it is done
                task.add_done_callback(self._side_tasks.discard)
            for observer in self.observers:
                try:
                    observer.job_event(job, event)
                except Exception:
                    log.exception("observer failed", extra=extra)

        try:
            await self._notify("job_started", job)
            log.info("running %s of %s", job.kind, job.project, extra=extra)
            try:
                deployment = await self.runner(self.engine, job, [on_event])
            except LockHeld as busy:
                log.info("%s; job %s waits", busy, job.id, extra=extra)
                await self.engine.store.jobs.release(job.id)
                loop = asyncio.get_running_loop()
                self._not_before[job.project] = loop.time() + self.settings.busy_retry_seconds
                loop.call_later(self.settings.busy_retry_seconds, self.wake)
                return
            except StageFailed as failure:
                finished = await self.engine.store.jobs.finish(
                    job.id, FAILED, deployment_id=_first(deployment_ids), error=str(failure)
                )
            except GatebotError as problem:
                finished = await self.engine.store.jobs.finish(
                    job.id, FAILED, deployment_id=_first(deployment_ids), error=str(problem)
                )
            except Exception as exc:
                log.exception("job %s failed unexpectedly", job.id, extra=extra)
                finished = await self.engine.store.jobs.finish(
                    job.id,
                    FAILED,
                    deployment_id=_first(deployment_ids),
                    error=f"internal error: {type(exc).__name__}",
                )
            else:
                finished = await self.engine.store.jobs.finish(
                    job.id, SUCCEEDED, deployment_id=deployment.id
                )
            log.info("job %s %s", job.id, finished.state, extra=extra)
            if finished.deployment_id is not None and deployment is None:
                deployment = await self.engine.store.deployments.get(finished.deployment_id)
            await self._notify("job_finished", finished, deployment)
        finally:
            self._running.pop(job.project, None)
            self._running_ids.pop(job.project, None)
            if not self._running:
                self._idle.set()
            self.wake()

    async def _notify(self, method: str, *args: object) -> None:
        for observer in self.observers:
            try:
                await getattr(observer, method)(*args)
            except Exception:
                log.exception("observer %s.%s failed", type(observer).__name__, method)


def _first(ids: list[int]) -> int | None:
    return ids[0] if ids else None
