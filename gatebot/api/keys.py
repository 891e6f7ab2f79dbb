"""Typed keys for what the app factory puts on the aiohttp Application."""

from __future__ import annotations

from aiohttp import web

from gatebot.api.session import Sessions, SignInThrottle
from gatebot.feedback import Feedback
from gatebot.pipeline.engine import Engine
from gatebot.queue import JobQueue
from gatebot.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", Engine)
QUEUE = web.AppKey("queue", JobQueue)
FEEDBACK = web.AppKey("feedback", Feedback)
SECRETS = web.AppKey("secrets", tuple[str, ...])  # what answers and logs must never show
SESSIONS = web.AppKey("sessions", Sessions)  # the dashboard's signed-in browsers
THROTTLE = web.AppKey("throttle", SignInThrottle)  # failed sign-ins per address
