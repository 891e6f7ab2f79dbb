"""The deploy queue's promises, over a real engine (SQLite, Docker, nginx, git): a project
locked by another process waits and runs once it is free, `max_concurrent` bounds the jobs
running at once, one job at a time per project, a job interrupted by a crash is requeued once
only, and the dispatcher outlives a database error or a job whose end cannot be recorded.

Where a real deploy is not what a test is about, a fake runner (`Gate`) stands in for it."""

from __future__ import annotations

import asyncio
import errno
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from gatebot import queue as queue_module
from gatebot.app import start_work
from gatebot.model import JobKind, JobState, Origin, OriginKind
from gatebot.pipeline.engine import Engine
from gatebot.pipeline.jobs import run_job
from gatebot.pipeline.journal import Listener
from gatebot.queue import JobQueue, JobRunner
from gatebot.settings import QueueSettings
from gatebot.store import Store
from gatebot.store.deployments import Deployment
from gatebot.store.jobs import Job, NewJob
from gatebot.wiring import open_engine
from tests.support.deploys import eventually_live
from tests.support.server import open_engine_without_docker
from tests.support.setup import Setup, Workspace

QueueFactory = Callable[..., JobQueue]


async def wait_until(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = predicate()
        if asyncio.iscoroutine(found):
            found = await found
        if found:
            return found
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


class Gate:
    """A fake runner: every job waits until the gate opens, and the gate records how many
    jobs ran at once, overall and per project, and in which order they started."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.running: dict[int, str] = {}  # job id -> project
        self.started: list[int] = []
        self.most = 0
        self.most_per_project = 0

    async def __call__(self, engine: Engine, job: Job, listeners: list[Listener]) -> Deployment:
        self.running[job.id] = job.project
        self.started.append(job.id)
        self.most = max(self.most, len(self.running))
        self.most_per_project = max(
            self.most_per_project, max(Counter(self.running.values()).values())
        )
        try:
            await self.open.wait()
        finally:
            del self.running[job.id]
        return await engine.store.deployments.create(job.project, job.trigger)


class Started:
    """An observer noting when each job starts (loop time)."""

    def __init__(self) -> None:
        self.at: list[tuple[int, float]] = []

    async def job_started(self, job: Job) -> None:
        self.at.append((job.id, asyncio.get_running_loop().time()))

    async def job_queued(self, job: Job) -> None: ...
    async def job_superseded(self, job: Job, by: Job) -> None: ...
    def job_event(self, job: Job, event: Any) -> None: ...
    async def job_finished(self, job: Job, deployment: Deployment | None) -> None: ...


@pytest.fixture
async def engine(workspace: Workspace) -> AsyncIterator[Engine]:
    """Here, gatebot's engine with Docker unreachable (real SQLite, real project locks): the
    queue is tested with stand-in runners that never reach the pipeline. The tests that deploy
    or reconcile use the real one (`deploying_engine`, `make_deploying_queue`)."""
    async with open_engine_without_docker(workspace.settings()) as opened:
        yield opened


@pytest.fixture
async def deploying_engine(setup: Setup) -> AsyncIterator[Engine]:
    async with open_engine(setup.settings()) as opened:
        yield opened


@asynccontextmanager
async def queues_over(engine: Engine) -> AsyncIterator[QueueFactory]:
    """JobQueues over `engine`; each is stopped (running jobs cut off) at the end."""
    made: list[JobQueue] = []

    def make(runner: JobRunner, *, observers: list[Any] | None = None, **queue: Any) -> JobQueue:
        made.append(JobQueue(engine, QueueSettings(**queue), runner, observers))
        return made[-1]

    yield make
    for q in made:
        await q.stop(timeout=0)


@pytest.fixture
async def make_queue(engine: Engine) -> AsyncIterator[QueueFactory]:
    async with queues_over(engine) as make:
        yield make


@pytest.fixture
async def make_deploying_queue(deploying_engine: Engine) -> AsyncIterator[QueueFactory]:
    async with queues_over(deploying_engine) as make:
        yield make


def deploy_job(project: str, sha: str | None = None) -> NewJob:
    return NewJob(
        project=project,
        kind=JobKind.DEPLOY,
        origin=Origin(kind=OriginKind.PUSH, who="test"),
        sha=sha,
    )


async def states(engine: Engine) -> dict[int, str]:
    return {j.id: j.state for j in await engine.store.jobs.recent(limit=1000)}


# --- a project locked by another process ------------------------------------------------------


def hold_lock(engine: Engine, project: str) -> subprocess.Popen[str]:
    """Another process (as a CLI deploy would) holding the project's lock until killed."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio\n"
            "from pathlib import Path\n"
            "from gatebot.pipeline.lock import ProjectLocks\n"
            "async def main():\n"
            f"    async with ProjectLocks(Path({str(engine.locks.lock_dir)!r})).hold("
            f"{project!r}, 'deploy by cli:someone-else'):\n"
            "        print('locked', flush=True)\n"
            "        await asyncio.sleep(120)\n"
            "asyncio.run(main())\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


async def test_a_project_locked_by_another_process_waits_then_deploys_once_free(
    deploying_engine: Engine, setup: Setup, make_deploying_queue: QueueFactory
) -> None:
    engine, make_queue = deploying_engine, make_deploying_queue
    retry = 0.5
    sha = setup.repo.commit("v1")
    started = Started()
    queue = make_queue(run_job, busy_retry_seconds=retry, observers=[started])
    holder = hold_lock(engine, setup.name)
    try:
        await queue.start()
        [job] = await queue.submit([deploy_job(setup.name, sha)])

        async def waiting_again() -> bool:
            row = await engine.store.jobs.require(job.id)
            return bool(started.at) and row.state == "queued" and row.started_at is None

        # Tried, found the project busy, and put back in the queue (not failed).
        await wait_until(waiting_again)
        await wait_until(lambda: len(started.at) >= 3)
        # Tried again only after busy_retry_seconds each time.
        times = [at for _, at in started.at]
        assert all(b - a >= retry * 0.9 for a, b in zip(times, times[1:], strict=False)), times
        assert await engine.store.deployments.history(setup.name) == []
        assert (await engine.store.jobs.require(job.id)).state in ("queued", "running")
    finally:
        holder.kill()
        holder.wait()

    await asyncio.wait_for(queue.drain(), 120)
    done = await engine.store.jobs.require(job.id)
    assert done.state == "succeeded" and done.error is None
    [deployment] = await engine.store.deployments.history(setup.name)
    assert done.deployment_id == deployment.id and deployment.commit_sha == sha
    assert await eventually_live(setup, "v1") == "v1"


# --- how many run at once ---------------------------------------------------------------------


async def test_max_concurrent_bounds_the_jobs_running_at_once_across_projects(
    engine: Engine, make_queue: QueueFactory
) -> None:
    gate = Gate()
    queue = make_queue(gate, max_concurrent=2)
    await queue.start()
    jobs = await queue.submit([deploy_job(f"proj{n}") for n in range(5)])

    await wait_until(lambda: len(gate.running) == 2)
    await asyncio.sleep(0.3)  # time enough for a third to start, were it allowed
    assert sorted(gate.running) == [jobs[0].id, jobs[1].id]
    assert sorted((await states(engine)).values()) == ["queued"] * 3 + ["running"] * 2
    assert queue.running_job_ids() == [jobs[0].id, jobs[1].id]

    gate.open.set()
    await asyncio.wait_for(queue.drain(), 30)
    assert gate.most == 2
    assert sorted(gate.started) == [j.id for j in jobs]
    assert set((await states(engine)).values()) == {"succeeded"}


async def test_one_job_at_a_time_per_project(engine: Engine, make_queue: QueueFactory) -> None:
    gate = Gate()
    queue = make_queue(gate, max_concurrent=4)
    await queue.start()
    a1, a2, a3, b1 = await queue.submit(
        [deploy_job("alpha"), deploy_job("alpha"), deploy_job("alpha"), deploy_job("beta")]
    )

    # Room for four, yet only one job of alpha runs; beta's runs beside it.
    await wait_until(lambda: len(gate.running) == 2)
    await asyncio.sleep(0.3)
    assert gate.running == {a1.id: "alpha", b1.id: "beta"}
    now = await states(engine)
    assert (now[a2.id], now[a3.id]) == ("queued", "queued")

    gate.open.set()
    await asyncio.wait_for(queue.drain(), 30)
    assert gate.most_per_project == 1
    assert [i for i in gate.started if i != b1.id] == [a1.id, a2.id, a3.id]  # in queue order
    assert set((await states(engine)).values()) == {"succeeded"}


# --- crashes ----------------------------------------------------------------------------------


async def crash(queue: JobQueue) -> None:
    """The process dies while jobs run: they are cut off, their rows stay `running`."""
    await queue.stop(timeout=0)


async def test_an_interrupted_job_is_requeued_and_past_interrupted_retries_not_again(
    deploying_engine: Engine, setup: Setup, make_deploying_queue: QueueFactory
) -> None:
    engine, make_queue = deploying_engine, make_deploying_queue  # start_work reconciles
    gate = Gate()  # closed: a job runs until the crash
    first = make_queue(gate, interrupted_retries=1)
    await first.start()
    [job] = await first.submit([deploy_job(setup.name)])
    await wait_until(lambda: job.id in gate.running)
    await crash(first)
    assert (await engine.store.jobs.require(job.id)).state == "running"

    second = make_queue(gate, interrupted_retries=1)
    assert await start_work(engine, second)  # the next start: recover, then run
    [retry, failed] = await engine.store.jobs.recent()
    assert (failed.id, failed.state) == (job.id, "failed")
    assert "interrupted" in (failed.error or "")
    assert retry.retry_of == job.id and retry.kind == "deploy"
    await wait_until(lambda: retry.id in gate.running)  # the retry runs...
    await crash(second)  # ...and the process dies again

    third = make_queue(gate, interrupted_retries=1)
    gate.open.set()
    assert await start_work(engine, third)
    await asyncio.wait_for(third.drain(), 30)
    jobs = await engine.store.jobs.recent()
    assert [(j.id, j.state, j.retry_of) for j in jobs] == [
        (retry.id, "failed", job.id),
        (job.id, "failed", None),
    ]
    assert (jobs[0].error or "").endswith(
        "not queued again: interrupted 2 times ([queue] interrupted_retries = 1)"
    )
    assert gate.started == [job.id, retry.id]


async def test_an_interrupted_job_is_not_requeued_when_a_newer_job_exists(
    deploying_engine: Engine, setup: Setup, make_deploying_queue: QueueFactory
) -> None:
    engine, make_queue = deploying_engine, make_deploying_queue  # start_work reconciles
    gate = Gate()
    first = make_queue(gate)
    await first.start()
    [job] = await first.submit([deploy_job(setup.name)])
    await wait_until(lambda: job.id in gate.running)
    [newer] = await first.submit([deploy_job(setup.name)])  # queued behind it
    await crash(first)

    second = make_queue(gate)
    gate.open.set()
    assert await start_work(engine, second)
    await asyncio.wait_for(second.drain(), 30)
    jobs = await engine.store.jobs.recent()
    assert [(j.id, j.state, j.retry_of) for j in jobs] == [
        (newer.id, "succeeded", None),
        (job.id, "failed", None),
    ]
    assert gate.started == [job.id, newer.id]


# --- the dispatcher keeps going ---------------------------------------------------------------


async def test_the_dispatcher_outlives_a_database_error(
    engine: Engine, make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_module, "DISPATCH_RETRY_SECONDS", 0.05)
    real_queued = engine.store.jobs.queued
    failures: list[int] = []

    async def locked_once() -> list[Job]:
        if not failures:
            failures.append(1)
            raise sqlite3.OperationalError("database is locked")
        return await real_queued()

    monkeypatch.setattr(engine.store.jobs, "queued", locked_once)
    gate = Gate()
    gate.open.set()
    queue = make_queue(gate)
    await queue.start()
    [job] = await queue.submit([deploy_job("alpha")])

    async def done() -> bool:
        return (await engine.store.jobs.require(job.id)).state == "succeeded"

    await wait_until(done, timeout=10)
    assert failures == [1] and queue.alive
    [later] = await queue.submit([deploy_job("alpha")])  # and it goes on taking work
    await asyncio.wait_for(queue.drain(), 10)
    assert (await engine.store.jobs.require(later.id)).state == "succeeded"


async def test_a_job_whose_end_cannot_be_recorded_at_first_still_ends(
    engine: Engine, make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_module, "RECORD_RETRY_SECONDS", (0.05,))
    real_finish = engine.store.jobs.finish
    failures: list[int] = []

    async def locked_once(job_id: int, state: JobState, **kw: Any) -> Job:
        if not failures:
            failures.append(job_id)
            raise sqlite3.OperationalError("database is locked")
        return await real_finish(job_id, state, **kw)

    monkeypatch.setattr(engine.store.jobs, "finish", locked_once)
    gate = Gate()
    gate.open.set()
    queue = make_queue(gate)
    await queue.start()
    first, second = await queue.submit([deploy_job("alpha"), deploy_job("alpha")])
    await asyncio.wait_for(queue.drain(), 10)
    rows = {j.id: j for j in await engine.store.jobs.recent()}
    assert failures == [first.id]
    assert rows[first.id].state == "succeeded" and rows[first.id].deployment_id is not None
    assert rows[second.id].state == "succeeded"
    assert queue.alive


async def test_a_failing_observer_or_runner_never_stops_the_queue(
    engine: Engine, make_queue: QueueFactory
) -> None:
    class Broken(Started):
        async def job_started(self, job: Job) -> None:
            raise RuntimeError("observer bug")

    async def crashing(engine: Engine, job: Job, listeners: list[Listener]) -> Deployment:
        raise KeyError("runner bug")

    queue = make_queue(crashing, observers=[Broken()])
    await queue.start()
    jobs = await queue.submit([deploy_job("alpha"), deploy_job("alpha")])
    await asyncio.wait_for(queue.drain(), 10)
    for job in jobs:
        row = await engine.store.jobs.require(job.id)
        assert (row.state, row.error) == ("failed", "internal error: KeyError")
    assert queue.alive


@pytest.mark.parametrize(
    ("raised", "error"),
    [
        (
            sqlite3.OperationalError("database or disk is full"),
            "database error: database or disk is full",
        ),
        (
            OSError(errno.EROFS, "Read-only file system", "/srv/conf/.shop.live.tmp"),
            "Read-only file system [EROFS] (/srv/conf/.shop.live.tmp)",
        ),
    ],
)
async def test_a_job_that_fails_outside_a_stage_names_a_known_cause(
    engine: Engine, make_queue: QueueFactory, raised: Exception, error: str
) -> None:
    async def failing(engine: Engine, job: Job, listeners: list[Listener]) -> Deployment:
        raise raised

    queue = make_queue(failing)
    await queue.start()
    [job] = await queue.submit([deploy_job("alpha")])
    await asyncio.wait_for(queue.drain(), 10)
    row = await engine.store.jobs.require(job.id)
    assert (row.state, row.error) == ("failed", error)


# --- jobs another process queued ----------------------------------------------------------------


class Heard:
    """An observer noting the queued and superseded jobs it hears of, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int | None]] = []

    async def job_queued(self, job: Job) -> None:
        self.events.append(("queued", job.id, None))

    async def job_superseded(self, job: Job, by: Job) -> None:
        self.events.append(("superseded", job.id, by.id))

    async def job_started(self, job: Job) -> None:
        self.events.append(("started", job.id, None))

    def job_event(self, job: Job, event: Any) -> None: ...
    async def job_finished(self, job: Job, deployment: Deployment | None) -> None: ...


async def test_a_job_another_process_queued_is_announced_before_it_starts_without_a_nudge(
    engine: Engine, make_queue: QueueFactory, workspace: Workspace
) -> None:
    """The dispatcher, woken by anything, reads what others queued first: a job is never
    started (its "deploying" status posted) before it was announced queued."""
    heard, gate = Heard(), Gate()
    gate.open.set()
    queue = make_queue(gate, observers=[heard])
    await queue.listen_to_others()
    other = await Store.open(engine.store.db.path)
    try:
        [job], _ = await other.jobs.enqueue_superseding([deploy_job(workspace.name, "d" * 40)])
    finally:
        await other.close()
    await queue.start()  # wakes the dispatcher; no nudge
    await wait_until(lambda: ("started", job.id, None) in heard.events)
    assert heard.events[:2] == [("queued", job.id, None), ("started", job.id, None)]


async def test_jobs_another_process_queued_are_announced_once_in_commit_order(
    engine: Engine, make_queue: QueueFactory, workspace: Workspace
) -> None:
    """What an intake process commits (here: another connection to the same database) is
    announced after a nudge, with what each job superseded; the queue's own job is not
    announced twice, and a nudge with nothing new announces nothing."""
    heard = Heard()
    queue = make_queue(Gate(), observers=[heard], paused=True)
    await queue.listen_to_others()
    [own] = await queue.submit([deploy_job(workspace.name, "a" * 40)], supersede=True)
    other = await Store.open(engine.store.db.path)
    try:
        jobs = other.jobs
        [first], _ = await jobs.enqueue_superseding(
            [deploy_job(workspace.name, "b" * 40)], supersede=True
        )
        [second], _ = await jobs.enqueue_superseding(
            [deploy_job(workspace.name, "c" * 40)], supersede=True
        )
    finally:
        await other.close()
    assert heard.events == [("queued", own.id, None)]
    queue.others_queued()
    await wait_until(lambda: len(heard.events) >= 5)
    assert heard.events == [
        ("queued", own.id, None),
        ("queued", first.id, None),
        ("superseded", own.id, first.id),
        ("queued", second.id, None),
        ("superseded", first.id, second.id),
    ]
    queue.others_queued()
    await asyncio.sleep(0.3)
    assert len(heard.events) == 5
