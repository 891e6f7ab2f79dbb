"""The in-process deploy queue. Its truth is the `jobs` table; this module only runs it.

One job at a time per project, at most `max_concurrent` at once. A project locked by another
process (a CLI deploy) puts its job back in the queue and is tried again after a pause. On
stop, running jobs get `shutdown_timeout` to finish; queued jobs stay queued for the next start.
Observers (forge feedback, metrics) hear about every job's life; they can never break it.
Nothing else can either: the dispatcher logs an error (a locked database), pauses and goes on,
and a job's end that cannot be recorded at once is tried again (`alive` tells /readyz).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Protocol, TypeVar

from gatebot.errors import GatebotError, LockHeld, NotNewer, named_cause
from gatebot.model import JobState
from gatebot.pipeline.engine import Engine
from gatebot.pipeline.journal import JournalEvent, Listener
from gatebot.redact import redact, secrets_of
from gatebot.settings import QueueSettings
from gatebot.store.deployments import Deployment
from gatebot.store.jobs import Job, NewJob

log = logging.getLogger("gatebot.queue")
T = TypeVar("T")

# A failing dispatcher pass is tried again after this pause, doubled at each failure in a row
# up to DISPATCH_RETRY_MAX_SECONDS; a job's end (or its release) that cannot be written is
# written again after each of these pauses before giving up (start-up recovery then marks the
# job interrupted).
DISPATCH_RETRY_SECONDS = 0.5
DISPATCH_RETRY_MAX_SECONDS = 30.0
RECORD_RETRY_SECONDS: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0)
# Jobs other processes queue are read at most this often: nudges that arrive meanwhile are
# read in one batch (one query for many deliveries under load), at most this late; and at
# least every OTHERS_LOOK_SECONDS without a nudge (one lost with a process killed after its
# commit: its 202 never went out, and the forge's redelivery is a duplicate).
OTHERS_BATCH_SECONDS = 0.05
OTHERS_LOOK_SECONDS = 5.0

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
        self.start_problem: str | None = None  # why the server has not started the queue yet
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}  # project -> its running job
        self._running_ids: dict[str, int] = {}  # project -> id of its running job
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._not_before: dict[str, float] = {}  # project -> loop time it may be retried
        self._dispatcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop_requested = asyncio.Event()  # cuts a dispatcher's pause after a failure short
        self._idle = asyncio.Event()
        self._idle.set()
        # Jobs other processes queue (gatebot/intake_process.py): the newest id announced, the
        # ids this process queued itself since (announced by submit), and the nudge to look.
        self._seen_up_to: int | None = None
        self._own: set[int] = set()
        self._others_queued = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._announcing = asyncio.Lock()  # one reader of the others' jobs at a time

    # --- submitting -----------------------------------------------------------------------

    async def submit(
        self,
        jobs: list[NewJob],
        *,
        delivery: tuple[str, str, str, str | None] | None = None,
        supersede: bool = False,
        forward_only: bool = False,
    ) -> list[Job]:
        """Write the jobs durably (raises DuplicateDelivery for a redelivery), then wake up.
        With `forward_only`, a job of a commit not newer than the live one is left out."""
        created, superseded = await self.engine.store.jobs.enqueue_superseding(
            jobs, delivery=delivery, supersede=supersede, forward_only=forward_only
        )
        if self._seen_up_to is not None:
            self._own.update(job.id for job in created)
            # another process's job this one superseded is announced queued before that
            await self._announce_others()
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

    # --- jobs queued by other processes ---------------------------------------------------

    async def listen_to_others(self) -> None:
        """From now on, jobs other processes write to the jobs table are announced to the
        observers (a "queued" commit status, a gate looked at) after `others_queued()`, in the
        order they were committed, and then run like any other."""
        if self._listener is None:
            self._seen_up_to = await self.engine.store.jobs.last_id()
            self._listener = asyncio.create_task(self._hear_others(), name="gatebot-others")

    def others_queued(self) -> None:
        """Another process queued jobs or heard checks change (safe from a signal handler:
        nudges coalesce)."""
        self._others_queued.set()

    async def _hear_others(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._others_queued.wait(), OTHERS_LOOK_SECONDS)
            self._others_queued.clear()
            try:
                await self._announce_others()
            except Exception as exc:  # a locked database: the next nudge reads them all
                log.error("could not read the jobs other processes queued: %s", exc)
                await asyncio.sleep(DISPATCH_RETRY_SECONDS)
                self._others_queued.set()
            self.wake()
            await asyncio.sleep(OTHERS_BATCH_SECONDS)

    async def _announce_others(self) -> None:
        """Announce what other processes queued since the last look, once each, in commit
        order; before a job is run (`_dispatch_once`) or superseded here (`submit`), so its
        "queued" status never comes after its later ones."""
        if self._seen_up_to is None:
            return
        async with self._announcing:
            await self._announce_others_now()

    async def _announce_others_now(self) -> None:
        assert self._seen_up_to is not None
        jobs = self.engine.store.jobs
        new = await jobs.created_after(self._seen_up_to)
        if not new:
            return
        superseded = await jobs.superseded_since(self._seen_up_to)
        superseded += [job for job in new if job.state is JobState.SUPERSEDED]
        replaced: dict[int, list[Job]] = {}
        for old in superseded:
            replaced.setdefault(old.superseded_by or 0, []).append(old)
        for job in new:
            if job.id in self._own:
                self._own.discard(job.id)
                continue
            await self._notify("job_queued", job)
            for old in replaced.get(job.id, []):
                await self._notify("job_superseded", old, job)
        self._seen_up_to = max(self._seen_up_to, new[-1].id)

    async def announce(self, method: str, *args: object) -> None:
        """Tell the observers of a change made outside the queue (a gate opened or failed)."""
        await self._notify(method, *args)

    # --- running --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(self._dispatch(), name="gatebot-queue")
            self.wake()

    @property
    def started(self) -> bool:
        """Whether the dispatcher was started (and not stopped)."""
        return self._dispatcher is not None

    @property
    def alive(self) -> bool:
        """Whether the dispatcher runs: started, and not ended by stop() or by a crash."""
        return self._dispatcher is not None and not self._dispatcher.done()

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
        self._stop_requested.set()
        self.wake()
        listener, self._listener = self._listener, None
        if listener is not None:
            try:  # the last batch, so the next start (which looks only at newer jobs) has it
                await self._announce_others()
            except Exception as exc:
                log.error("could not read the jobs other processes queued: %s", exc)
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            await asyncio.wait([dispatcher])  # it may have died: stopping goes on regardless
            if not dispatcher.cancelled() and dispatcher.exception() is not None:
                log.error("the queue's dispatcher had stopped: %r", dispatcher.exception())
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

    def cut_short(self) -> int:
        """Cancel the running jobs now (a second SIGTERM: a `stop` waiting for them returns);
        their deployments stay in flight for the next start to repair. How many there were."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        return len(tasks)

    async def _dispatch(self) -> None:
        failures = 0
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping or self.paused:
                continue
            try:
                await self._dispatch_once()
            except Exception:
                failures += 1
                pause = min(
                    DISPATCH_RETRY_SECONDS * 2 ** (failures - 1), DISPATCH_RETRY_MAX_SECONDS
                )
                log.exception("the queue could not start jobs; trying again in %.1fs", pause)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), pause)
                self.wake()
            else:
                failures = 0

    async def _dispatch_once(self) -> None:
        """Claim and start every job that may run now (announced first, when another
        process queued it)."""
        loop = asyncio.get_running_loop()
        await self._announce_others()
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
                task.add_done_callback(self._side_task_done)
            for observer in self.observers:
                try:
                    observer.job_event(job, event)
                except Exception:
                    log.exception("observer failed", extra=extra)

        try:
            await self._notify("job_started", job)
            log.info("running %s of %s", job.kind, job.project, extra=extra)
            state, error, by = JobState.SUCCEEDED, None, None
            try:
                deployment = await self.runner(self.engine, job, [on_event])
            except LockHeld as busy:
                log.info("%s; job %s waits", busy, job.id, extra=extra)
                loop = asyncio.get_running_loop()
                self._not_before[job.project] = loop.time() + self.settings.busy_retry_seconds
                loop.call_later(self.settings.busy_retry_seconds, self.wake)
                await self._record(job, "put back in the queue", self.engine.store.jobs.release)
                return
            except NotNewer as old:  # a late delivery: never move backwards
                state, error, by = JobState.SUPERSEDED, str(old), old.by
            except GatebotError as problem:  # StageFailed included
                secrets = secrets_of(self.engine.settings)
                state, error = JobState.FAILED, redact(str(problem), secrets)
            except Exception as exc:
                log.exception("job %s failed unexpectedly", job.id, extra=extra)
                cause = named_cause(exc) or f"internal error: {type(exc).__name__}"
                state, error = JobState.FAILED, redact(cause, secrets_of(self.engine.settings))
            if deployment is not None:
                deployment_id: int | None = deployment.id
            else:
                deployment_id = deployment_ids[0] if deployment_ids else None

            async def finish(job_id: int) -> Job:
                return await self.engine.store.jobs.finish(
                    job_id, state, deployment_id=deployment_id, error=error, superseded_by=by
                )

            finished = await self._record(job, f"marked {state}", finish)
            if finished is None:  # the store is gone: observers still hear how it ended
                finished = replace(
                    job,
                    state=state,
                    error=error,
                    deployment_id=deployment_id if deployment_id is not None else job.deployment_id,
                )
            log.info("job %s %s", job.id, finished.state, extra=extra)
            if finished.deployment_id is not None and deployment is None:
                deployment = await self.engine.store.deployments.get(finished.deployment_id)
            await self._notify("job_finished", finished, deployment)
        except Exception:
            log.exception("job %s: the queue failed to see it through", job.id, extra=extra)
        finally:
            self._running.pop(job.project, None)
            self._running_ids.pop(job.project, None)
            if not self._running:
                self._idle.set()
            self.wake()

    async def _record(self, job: Job, what: str, write: Callable[[int], Awaitable[T]]) -> T | None:
        """`write(job.id)`, tried again after each of RECORD_RETRY_SECONDS while it fails (a
        locked database); None when it never succeeds: the row stays `running`, and the next
        start marks the job interrupted."""
        extra = {"project": job.project, "job": job.id, "delivery": job.delivery_id}
        for pause in (*RECORD_RETRY_SECONDS, None):
            try:
                return await write(job.id)
            except Exception as exc:
                if pause is None:
                    log.exception(
                        "job %s could not be %s; it stays running until the next start",
                        job.id,
                        what,
                        extra=extra,
                    )
                    return None
                log.warning(
                    "job %s could not be %s (%s: %s); trying again in %.1fs",
                    job.id,
                    what,
                    type(exc).__name__,
                    exc,
                    pause,
                    extra=extra,
                )
                await asyncio.sleep(pause)
        return None

    def _side_task_done(self, task: asyncio.Task[None]) -> None:
        self._side_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not note a job's deployment: %r", task.exception())

    async def _notify(self, method: str, *args: object) -> None:
        for observer in self.observers:
            try:
                await getattr(observer, method)(*args)
            except Exception:
                log.exception("observer %s.%s failed", type(observer).__name__, method)
