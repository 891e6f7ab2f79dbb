"""Typed keys for what the app factory puts on the aiohttp Application, and what a handler
records on its request for the middlewares."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from gatebot.api.session import Sessions, SignInThrottle
from gatebot.feedback import Feedback
from gatebot.gatewatch import GateWatcher
from gatebot.metrics import Metrics
from gatebot.pipeline.engine import Engine
from gatebot.queue import JobQueue
from gatebot.settings import Settings
from gatebot.store.deployments import Deployments
from gatebot.store.jobs import Job, NewJob
from gatebot.watchdog import Watchdog


class Submit(Protocol):
    """Write a delivery's jobs durably (JobQueue.submit's shape)."""

    def __call__(
        self,
        jobs: list[NewJob],
        *,
        delivery: tuple[str, str, str, str | None] | None = None,
        supersede: bool = False,
        forward_only: bool = False,
    ) -> Awaitable[list[Job]]: ...


@dataclass(frozen=True)
class Recorder:
    """What the webhook handlers read and write: the deployments' record, where a delivery's
    jobs go, and who hears that a commit's checks changed. In `serve`, the queue and the gate
    watcher; in an intake process, the database and a nudge to `serve`."""

    deployments: Deployments
    submit: Submit
    checks_changed: Callable[[], None]


SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", Engine)
QUEUE = web.AppKey("queue", JobQueue)
FEEDBACK = web.AppKey("feedback", Feedback)
GATES = web.AppKey("gates", GateWatcher)
WATCHDOG = web.AppKey("watchdog", Watchdog)
SECRETS = web.AppKey("secrets", tuple[str, ...])  # what answers and logs must never show
SESSIONS = web.AppKey("sessions", Sessions)  # the dashboard's signed-in browsers
THROTTLE = web.AppKey("throttle", SignInThrottle)  # failed sign-ins per address
METRICS = web.AppKey("metrics", Metrics)
RECORDER = web.AppKey("recorder", Recorder)
# What became of a webhook delivery (queued, duplicate, ignored, ping), for the metrics.
WEBHOOK_OUTCOME = web.RequestKey("webhook_outcome", str)
