"""The aiohttp application factory: the one place the server's parts are wired together.

`create_app(settings)` builds the app (webhooks, the REST API, deployment pages, metrics, probes);
its cleanup context opens the engine (database, Docker),
runs start-up reconciliation and recovers interrupted jobs before deploys run, starts the queue,
the gate watcher (`gatebot.gatewatch`, jobs waiting for their commit's checks) and the poller
(`gatebot.poll`, branch heads no webhook announced), and on
shutdown lets running deploys finish (bounded by [queue] shutdown_timeout). When that
start fails (Docker unreachable, nginx refusing the reconciled files, a locked database), the
server still serves and tries again every STARTUP_RETRY_SECONDS; /readyz says why it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from gatebot.api import pages, probes, v1, webhooks
from gatebot.api.errors import error_middleware
from gatebot.api.keys import ENGINE, FEEDBACK, GATES, QUEUE, SECRETS, SETTINGS
from gatebot.errors import GatebotError, RuntimeUnavailable
from gatebot.feedback import Feedback
from gatebot.feedback.comments import comment_runner
from gatebot.gatewatch import GateWatcher
from gatebot.logs import secrets_of
from gatebot.metrics import METRICS, Metrics, MetricsObserver, counted, webhook_metrics
from gatebot.metrics import routes as metrics_routes
from gatebot.pipeline.engine import Engine
from gatebot.pipeline.jobs import run_job
from gatebot.pipeline.reconcile import reconcile
from gatebot.poll import Poller
from gatebot.queue import JobObserver, JobQueue
from gatebot.settings import Settings
from gatebot.wiring import open_engine, open_forges

log = logging.getLogger("gatebot.app")

ObserverFactory = Callable[[Settings, Engine], list[JobObserver]]
STARTUP_RETRY_SECONDS = 5.0


def create_app(settings: Settings, *, observers: ObserverFactory | None = None) -> web.Application:
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[webhook_metrics, error_middleware],
    )
    metrics = Metrics()
    app[SETTINGS] = settings
    app[SECRETS] = secrets_of(settings)  # worked out once, not per request
    app[METRICS] = metrics
    app.add_routes(probes.routes)
    app.add_routes(webhooks.routes)
    app.add_routes(v1.routes)
    app.add_routes(pages.routes)
    app.add_routes(metrics_routes)

    async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_engine(settings) as engine, open_forges(settings) as forges:
            engine.proxy.on_reload = metrics.nginx_reload
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
            gates.start()  # waiting jobs are looked at again at once: they survive a restart
            poller = Poller(settings, engine, queue)
            poller.start()  # the branch heads at once, then every poll_interval
            starter: asyncio.Task[None] | None = None
            if not await start_work(engine, queue):
                starter = asyncio.create_task(retry_start(engine, queue))
            yield
            if starter is not None:
                starter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starter
            await poller.stop()
            await gates.stop()
            await queue.stop()
            await feedback.close()

    app.cleanup_ctx.append(engine_ctx)
    return app


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
        queue.start_problem = f"start-up failed: internal error: {type(exc).__name__}"
        log.exception("cannot start deploying yet")
        return False
    queue.start_problem = None
    return True


async def _start_work(engine: Engine, queue: JobQueue) -> None:
    await engine.runtime.ping()
    report = await reconcile(engine)
    log.info("start-up reconciliation: %s", report.summary())
    failed, requeued = await engine.store.jobs.recover_interrupted()
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


async def retry_start(engine: Engine, queue: JobQueue) -> None:
    """Try to start again every STARTUP_RETRY_SECONDS until it works (Docker has no event to
    wait on); start_work never raises, so this ends only by starting the queue or by cancel."""
    while True:
        await asyncio.sleep(STARTUP_RETRY_SECONDS)
        if await start_work(engine, queue):
            log.info("deploying now")
            return
