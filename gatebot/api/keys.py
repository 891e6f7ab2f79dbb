"""Typed keys for what the app factory puts on the aiohttp Application, and what a handler
records on its request for the middlewares."""

from __future__ import annotations

from aiohttp import web

from gatebot.feedback import ForgeFeedback
from gatebot.metrics import Metrics
from gatebot.pipeline.engine import Engine
from gatebot.queue import JobQueue
from gatebot.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", Engine)
QUEUE = web.AppKey("queue", JobQueue)
FEEDBACK = web.AppKey("feedback", ForgeFeedback)
SECRETS = web.AppKey("secrets", list[str])  # what answers and logs must never show
METRICS = web.AppKey("metrics", Metrics)
# What became of a webhook delivery (queued, duplicate, ignored, ping), for the metrics.
WEBHOOK_OUTCOME = web.RequestKey("webhook_outcome", str)
