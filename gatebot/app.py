"""The aiohttp application factory: the one place the server's parts are wired together.

`create_app(settings)` builds the app (webhooks, the REST API, deployment pages, metrics, probes);
its cleanup context opens the engine (database, Docker, nginx, git) and the forge clients
through the openers it is given (gatebot/wiring.py's by default),
runs start-up reconciliation and recovers interrupted jobs before deploys run, starts the queue,
the watchdog (`gatebot.watchdog`, live containers that stopped while serving), the gate
watcher (`gatebot.gatewatch`, jobs waiting for their commit's checks), the poller
(`gatebot.poll`, branch heads no webhook announced) and, with a [swarm], the upstreams'
refresh (`gatebot.pipeline.upstreams`, tasks that moved), and on
shutdown lets running deploys finish (bounded by [queue] shutdown_timeout). When that
start fails (Docker unreachable, nginx refusing the reconciled files, a locked database), the
server still serves and tries again every STARTUP_RETRY_SECONDS; /readyz says why it waits.
A new database beside running releases (pipeline/adopt.py) skips the reconciliation with an
ERROR and starts the queue, whose deploys then fail saying why, until the database is restored
or `gatebot reconcile --adopt` has run (seen at the next deploy; no restart needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import TYPE_CHECKING

from aiohttp import web

from gatebot import wiring
from gatebot.api import dashboard, pages, probes, v1, webhooks
from gatebot.api import metrics as metrics_api
from gatebot.api.keys import (
    ENGINE,
    FEEDBACK,
    GATES,
    METRICS,
    QUEUE,
    RECORDER,
    WATCHDOG,
    Recorder,
)
from gatebot.errors import GatebotError, RuntimeUnavailable, UnrecordedReleases, describe
from gatebot.feedback import Feedback
from gatebot.feedback.comments import comment_runner
from gatebot.gatewatch import GateWatcher
from gatebot.intake_process import NUDGE, IntakeProcesses, intake_command
from gatebot.metrics import MetricsObserver, counted
from gatebot.pipeline.engine import Engine, EngineListeners
from gatebot.pipeline.jobs import run_job
from gatebot.pipeline.reconcile import reconcile
from gatebot.pipeline.upstreams import keep_upstreams_fresh
from gatebot.poll import Poller
from gatebot.queue import JobObserver, JobQueue
from gatebot.settings import Settings
from gatebot.watchdog import Watchdog

if TYPE_CHECKING:
    from gatebot.forges.base import ForgeClient

log = logging.getLogger("gatebot.app")

ObserverFactory = Callable[[Settings, Engine], list[JobObserver]]
# What the server runs on, opened for its lifetime: the engine (told who listens to it) and a
# client per forge with API credentials. gatebot/wiring.py has the real ones.
EngineOpener = Callable[[Settings, EngineListeners], AbstractAsyncContextManager[Engine]]
ForgesOpener = Callable[[Settings], AbstractAsyncContextManager["dict[str, ForgeClient]"]]
STARTUP_RETRY_SECONDS = 5.0
PRUNE_EVERY_SECONDS = 3600.0


def create_app(
    settings: Settings,
    *,
    open_engine: EngineOpener = wiring.open_engine,
    open_forges: ForgesOpener = wiring.open_forges,
    observers: ObserverFactory | None = None,
) -> web.Application:
    app = webhooks.webhook_app(settings)
    metrics = app[METRICS]
    app.add_routes(probes.routes)
    app.add_routes(v1.routes)
    app.add_routes(pages.routes)
    dashboard.install(app, settings)
    app.add_routes(metrics_api.routes)

    async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
        async with (
            open_engine(settings, metrics.engine_listeners()) as engine,
            open_forges(settings) as forges,
        ):
            clients = counted(forges, metrics)
            feedback = Feedback.over(settings, clients)
            gates = GateWatcher(settings, engine.store, clients)
            queue = JobQueue(
                engine,
                settings.queue,
                comment_runner(settings, feedback.permissions, feedback.replier, run_job),
                [
                    MetricsObserver(metrics),
                    feedback.statuses,
                    gates,
                    *(observers(settings, engine) if observers else []),
                ],
            )
            gates.queue = queue
            app[ENGINE] = engine
            app[QUEUE] = queue
            app[FEEDBACK] = feedback
            app[GATES] = gates
            app[RECORDER] = Recorder(engine.store.deployments, queue.submit, gates.poke)
            gates.start()  # waiting jobs are looked at again at once: they survive a restart
            # before the poller: what it queues is then never announced twice
            intake = await start_intake_processes(settings, queue, gates)
            poller = Poller(settings, engine, queue)
            poller.start()  # the branch heads at once, then every poll_interval
            watchdog = Watchdog(
                engine, settings.server.reconcile_interval, ready=lambda: queue.started
            )
            app[WATCHDOG] = watchdog
            watchdog.start()  # rounds once the queue runs; Docker's events followed from now
            starter: asyncio.Task[None] | None = None
            if not await start_work(engine, queue):
                starter = asyncio.create_task(retry_start(engine, queue))
            pruner = asyncio.create_task(prune_deliveries(engine, settings))
            swarm = settings.swarm
            refresher = (
                asyncio.create_task(keep_upstreams_fresh(engine, swarm.refresh_interval))
                if swarm is not None and swarm.refresh_interval > 0
                else None
            )
            yield
            if intake is not None:
                await intake.stop()
                asyncio.get_running_loop().remove_signal_handler(NUDGE)
                signal.signal(NUDGE, signal.SIG_IGN)  # a late nudge must not end serve
            for task in (starter, pruner, refresher):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await watchdog.stop()
            await poller.stop()
            await gates.stop()
            await queue.stop()
            await feedback.close()

    app.cleanup_ctx.append(engine_ctx)
    return app


async def start_intake_processes(
    settings: Settings, queue: JobQueue, gates: GateWatcher
) -> IntakeProcesses | None:
    """With [server] intake_listen: hear their nudges (new jobs, or checks that changed), then
    start them (gatebot/intake_process.py)."""
    if settings.server.intake_listen is None:
        return None
    if settings.source is None:  # settings built in code: no file for the processes to read
        log.warning("[server] intake_listen is set but there is no configuration file: no intake")
        return None
    await queue.listen_to_others()

    def nudged() -> None:
        queue.others_queued()
        gates.poke()

    asyncio.get_running_loop().add_signal_handler(NUDGE, nudged)
    processes = IntakeProcesses(intake_command(settings.source), settings.server.intake_processes)
    processes.start()
    log.info(
        "webhooks also on http://%s, answered by %d intake process(es)",
        settings.server.intake_listen,
        settings.server.intake_processes,
    )
    return processes


async def start_work(engine: Engine, queue: JobQueue) -> bool:
    """Reconcile, recover interrupted jobs, start the queue; False (logged, and noted in
    `queue.start_problem`) when any of it fails, so that the caller tries again later."""
    try:
        await _start_work(engine, queue)
    except RuntimeUnavailable as exc:
        queue.start_problem = f"waiting for the Docker engine: {exc}"
        log.error("cannot start deploying yet: %s", exc)
        return False
    except GatebotError as exc:
        queue.start_problem = f"start-up failed: {exc}"
        log.error("cannot start deploying yet: %s", exc)
        return False
    except Exception as exc:
        queue.start_problem = f"start-up failed: {describe(exc)}"
        log.exception("cannot start deploying yet")
        return False
    queue.start_problem = None
    return True


async def _start_work(engine: Engine, queue: JobQueue) -> None:
    await engine.runtime.ping()
    try:
        report = await reconcile(engine)
    except UnrecordedReleases as exc:  # deploys are refused the same way, /readyz says so
        log.error("at start-up: %s", exc)
    else:
        log.info("start-up reconciliation: %s", report.summary())
    failed, requeued = await engine.store.jobs.recover_interrupted(
        retries=queue.settings.interrupted_retries
    )
    for job in failed:
        log.warning("job %s was interrupted", job.id, extra={"project": job.project, "job": job.id})
    for job in requeued:
        log.info(
            "job %s requeued as %s",
            job.retry_of,
            job.id,
            extra={"project": job.project, "job": job.id},
        )
    await queue.start()


async def prune_deliveries(engine: Engine, settings: Settings) -> None:
    """Forget webhook deliveries older than [server] deliveries_keep_days, at start and then
    every PRUNE_EVERY_SECONDS (one DELETE an hour is cheap; one per request is not)."""
    keep = timedelta(days=settings.server.deliveries_keep_days)
    while True:
        try:
            removed = await engine.store.deliveries.prune(keep)
            if removed:
                log.info("forgot %d webhook deliveries older than %s", removed, keep)
        except Exception as exc:  # a locked or full database: try again at the next round
            log.warning("could not prune old webhook deliveries: %s", exc)
        await asyncio.sleep(PRUNE_EVERY_SECONDS)


async def retry_start(engine: Engine, queue: JobQueue) -> None:
    """Try to start again every STARTUP_RETRY_SECONDS until it works (Docker has no event to
    wait on); start_work never raises, so this ends only by starting the queue or by cancel."""
    while True:
        await asyncio.sleep(STARTUP_RETRY_SECONDS)
        if await start_work(engine, queue):
            log.info("deploying now")
            return
