"""The gate watcher: moves `waiting` jobs on once their commit's checks have passed, or fails
them when one fails or the gate's timeout passes.

One task in the server, started by the app factory next to the queue. It asks the forge's REST
API about each waiting job's commit (`ForgeClient.commit_checks`) and lets the pure
`gatebot.gate.judge` decide. It looks when a job starts waiting (it observes the queue), at
start-up (waiting jobs survive a restart: they are rows in the jobs table), every
`[projects.gate] poll` seconds while a job waits, and at once when a check webhook arrives
(`poke`). The webhook's payload is never trusted for the verdict, so a lost, late or replayed
delivery changes nothing but when the API is asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

from gatebot.errors import GatebotError, UnknownProject
from gatebot.feedback.statuses import repo_of
from gatebot.forges.base import CommitRef, ForgeClient, ForgeError
from gatebot.gate import Verdict, gate_record, judge
from gatebot.model import JobKind, JobState
from gatebot.pipeline.journal import JournalEvent
from gatebot.settings import GateSettings, Settings
from gatebot.store import Store
from gatebot.store.db import utcnow
from gatebot.store.deployments import Deployment
from gatebot.store.jobs import Job

log = logging.getLogger("gatebot.gate")

RETRY_AFTER_ERROR_SECONDS = 5.0  # a pass that failed (a locked database) is tried again


class Announcer(Protocol):
    """What the watcher needs of the queue: to wake it, and to tell its observers (commit
    statuses, metrics) about a job's new state."""

    def wake(self) -> None: ...
    async def announce(self, method: str, *args: object) -> None: ...


class GateWatcher:
    def __init__(
        self, settings: Settings, store: Store, clients: Mapping[str, ForgeClient]
    ) -> None:
        self.settings = settings
        self.store = store
        self.clients = clients
        self.queue: Announcer | None = None  # attached by the app factory
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- running --------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gatebot-gates")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def poke(self) -> None:
        """Look at every waiting job now (a check webhook arrived, a job started waiting)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                delay = await self.check_all()
            except Exception:
                log.exception("could not look at waiting jobs; trying again")
                delay = RETRY_AFTER_ERROR_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def check_all(self) -> float | None:
        """Judge every waiting job once; the seconds until the next look is due (None: no job
        waits, so only a poke starts the next look)."""
        due: list[float] = []
        for job in await self.store.jobs.waiting():
            next_look = await self.check(job)
            if next_look is not None:
                due.append(next_look)
        return min(due) if due else None

    # --- one job --------------------------------------------------------------------------

    async def check(self, job: Job) -> float | None:
        """Judge one waiting job and act on the verdict; seconds until it should be judged
        again (None: it no longer waits)."""
        try:
            project = self.settings.project(job.project)
        except UnknownProject:
            await self._fail(job, None, "the project is no longer in gatebot's configuration")
            return None
        gate = project.gate
        if gate is None:  # the gate was removed from the configuration since
            await self._open(job, None, "the project has no gate any more")
            return None
        waited = seconds_since(job.created_at)
        client = self.clients.get(project.forge)
        if job.sha is None or client is None:
            why = "no commit to check" if job.sha is None else f"no {project.forge} API client"
            await self._fail(job, gate, f"cannot check the commit: {why}")
            return None
        commit = CommitRef(repo=repo_of(project, job.origin), sha=job.sha)
        try:
            checks = await client.commit_checks(commit)
        except ForgeError as exc:
            log.warning("job %s: %s", job.id, exc, extra=_extra(job))
            if waited >= gate.timeout:
                await self._fail(
                    job, gate, f"checks not known within {gate.timeout:g}s: the forge's API failed"
                )
                return None
            await self.store.jobs.note_gate(
                job.id,
                {
                    **(job.gate or gate_record(gate.checks, None, None)),
                    "reason": "could not ask the forge; asking again",
                    "checkedAt": utcnow(),
                },
            )
            return next_look(gate, waited)
        verdict = judge(
            gate.checks, checks, waited=waited, settle=gate.settle, timeout=gate.timeout
        )
        if verdict.outcome == "passed":
            await self._open(job, gate, verdict.reason, verdict)
            return None
        if verdict.outcome == "failed":
            await self._fail(job, gate, verdict.reason, verdict)
            return None
        await self.store.jobs.note_gate(job.id, gate_record(gate.checks, verdict, utcnow()))
        return next_look(gate, waited)

    async def _open(
        self, job: Job, gate: GateSettings | None, reason: str, verdict: Verdict | None = None
    ) -> None:
        record = gate_record(gate.checks if gate else [], verdict, utcnow())
        record["reason"] = reason
        opened = await self.store.jobs.open_gate(job.id, record)
        if opened is None:
            return  # superseded or cancelled meanwhile
        log.info("job %s: %s; queued", job.id, reason, extra=_extra(job))
        if self.queue is not None:
            await self.queue.announce("job_queued", opened)
            self.queue.wake()

    async def _fail(
        self, job: Job, gate: GateSettings | None, reason: str, verdict: Verdict | None = None
    ) -> None:
        record = gate_record(gate.checks if gate else [], verdict, utcnow())
        record["reason"] = reason
        failed = await self.store.jobs.fail_gate(job.id, record, reason)
        if failed is None:
            return
        log.warning("job %s: %s; nothing deployed", job.id, reason, extra=_extra(job))
        if self.queue is not None:
            await self.queue.announce("job_finished", failed, None)

    # --- the queue's observer: a job that starts waiting is looked at at once ----------------

    async def job_queued(self, job: Job) -> None:
        if job.state is JobState.WAITING and job.kind is JobKind.DEPLOY:
            self.poke()

    async def job_superseded(self, job: Job, by: Job) -> None:
        return None

    async def job_started(self, job: Job) -> None:
        return None

    def job_event(self, job: Job, event: JournalEvent) -> None:
        return None

    async def job_finished(self, job: Job, deployment: Deployment | None) -> None:
        return None


def next_look(gate: GateSettings, waited: float) -> float:
    """When a still-waiting job is judged again: after `poll`, or sooner when the settle
    time or the timeout ends first."""
    ends = [gate.timeout - waited]
    if gate.checks == "all" and waited < gate.settle:
        ends.append(gate.settle - waited)
    return max(0.0, min(gate.poll, *ends))


def seconds_since(stamp: str) -> float:
    """Seconds from an ISO 8601 time the store wrote (`utcnow`) to now."""
    try:
        then = datetime.fromisoformat(stamp)
    except ValueError as exc:
        raise GatebotError(f"unreadable time {stamp!r} in the jobs table") from exc
    return (datetime.fromisoformat(utcnow()) - then).total_seconds()


def _extra(job: Job) -> dict[str, object]:
    return {"project": job.project, "job": job.id, "delivery": job.delivery_id}
