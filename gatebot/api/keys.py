"""Typed keys for what the app factory puts on the aiohttp Application."""

from __future__ import annotations

from aiohttp import web

from gatebot.feedback import Feedback
from gatebot.gatewatch import GateWatcher
from gatebot.pipeline.engine import Engine
from gatebot.queue import JobQueue
from gatebot.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", Engine)
QUEUE = web.AppKey("queue", JobQueue)
FEEDBACK = web.AppKey("feedback", Feedback)
GATES = web.AppKey("gates", GateWatcher)
SECRETS = web.AppKey("secrets", list[str])  # what answers and logs must never show
