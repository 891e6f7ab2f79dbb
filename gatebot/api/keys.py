"""Typed keys for what the app factory puts on the aiohttp Application, and what a handler
records on its request for the middlewares."""

from __future__ import annotations

from aiohttp import web

from gatebot.api.session import Sessions, SignInThrottle
from gatebot.feedback import Feedback
from gatebot.gatewatch import GateWatcher
from gatebot.metrics import Metrics
from gatebot.pipeline.engine import Engine
from gatebot.queue import JobQueue
from gatebot.settings import Settings
from gatebot.watchdog import Watchdog

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
# What became of a webhook delivery (queued, duplicate, ignored, ping), for the metrics.
WEBHOOK_OUTCOME = web.RequestKey("webhook_outcome", str)
