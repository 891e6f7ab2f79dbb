"""POST /webhooks/github and /webhooks/gitlab: verify first, then parse, then decide and queue.

Nothing of a body is parsed before its signature is checked. The secrets to try are every one
configured for the forge; only when projects have secrets of their own is a bounded prefix of
the body searched for the repository's name, and then only to try the likely secret first.
A delivery is acknowledged (202 with the job ids) as soon as its record and its jobs are
committed to SQLite; deploys run later, in the queue. What a delivery means is decided by the
pure `gatebot.intake` over what the database says; this module only does the I/O around it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable

from aiohttp import web

from gatebot.api import metrics as metrics_api
from gatebot.api.errors import ApiError, body_reader, error_middleware, json_answer
from gatebot.api.keys import FEEDBACK, METRICS, RECORDER, SECRETS, SETTINGS, WEBHOOK_OUTCOME
from gatebot.errors import GatebotError
from gatebot.events import ChecksChanged, CommentCommand, Event, Ignored, Ping, Push
from gatebot.forges.errors import WebhookRejected
from gatebot.forges.github import sansio as github
from gatebot.forges.gitlab import sansio as gitlab
from gatebot.intake import (
    NOT_NEWER,
    Candidate,
    CommentAsk,
    Intake,
    ReleaseFacts,
    candidate_secrets,
    has_own_secrets,
    plan_checks,
    plan_push,
    plan_rollback,
    read_comment,
)
from gatebot.metrics import Metrics
from gatebot.redact import secrets_of
from gatebot.settings import Settings
from gatebot.store.deployments import Deployments
from gatebot.store.jobs import DuplicateDelivery, Job

log = logging.getLogger("gatebot.webhooks")
RETRY_AFTER_SECONDS = 30  # what a 503 asks the forge to wait before sending again
routes = web.RouteTableDef()


async def read_body(request: web.Request) -> bytes:
    """The raw body, refusing one over the limit before reading it whole."""
    limit = request.app[SETTINGS].server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise WebhookRejected.too_large(limit)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise WebhookRejected.too_large(limit) from None


def verify_with_any(candidates: list[Candidate], verify: Callable[[str], None]) -> frozenset[str]:
    """Verify with each candidate secret in turn; return the projects the one that passed
    acts for. Raises the last refusal when none passes (401)."""
    if not candidates:
        raise WebhookRejected.unauthorized("no webhook secret is configured for this delivery")
    failure: WebhookRejected | None = None
    for candidate in candidates:
        try:
            verify(candidate.secret)
            return candidate.projects
        except WebhookRejected as exc:
            failure = exc
    assert failure is not None
    raise failure


@routes.post("/webhooks/github")
async def github_webhook(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    body = await read_body(request)
    content_type = request.headers.get("Content-Type")
    default = settings.github.webhook_secret
    hint = None
    if has_own_secrets(settings, "github"):
        hint = github.peek_repository(content_type, body)
    candidates = candidate_secrets(
        settings, "github", default.get_secret_value() if default else None, hint
    )
    signature = request.headers.get(github.SIGNATURE_HEADER)
    allowed = verify_with_any(
        candidates, lambda secret: github.verify_signature(body, signature, secret)
    )
    event = github.parse_event(request.headers, github.decode_body(content_type, body))
    return await accept(request, event, allowed, body)


@routes.post("/webhooks/gitlab")
async def gitlab_webhook(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    body = await read_body(request)
    token = settings.gitlab.webhook_token
    signing = settings.gitlab.webhook_signing_token
    # Tokens are compared with a header, not over the body: trying them all costs nothing,
    # so the body is never looked at before it is verified.
    tokens = candidate_secrets(settings, "gitlab", token.get_secret_value() if token else None)
    now = time.time()
    headers = request.headers

    def check(token_value: str | None) -> None:
        gitlab.verify(
            headers,
            body,
            token=token_value,
            signing_token=signing.get_secret_value() if signing else None,
            now=now,
        )

    allowed: frozenset[str] | None = None  # the signing token alone acts for every project
    if tokens:
        allowed = verify_with_any(tokens, check)
    else:
        check(None)  # signing token only, or nothing configured (refused)
    event = gitlab.parse_event(headers, gitlab.decode_body(headers.get("Content-Type"), body))
    return await accept(request, event, allowed, body)


async def release_facts(deployments: Deployments, project: str, sha: str) -> ReleaseFacts:
    """What the database says about `project`'s releases, as a comment on `sha` needs it."""
    active = await deployments.active(project)
    earlier = await deployments.once_live_before(project, active.version) if active else []
    commented = await deployments.once_live_with_commit(project, sha)
    return ReleaseFacts(
        active_id=active.id if active else None,
        active_sha=active.commit_sha if active else None,
        has_earlier=bool(earlier),
        commented_version=commented.version if commented else None,
    )


async def comment_intake(
    request: web.Request, event: CommentCommand, allowed: frozenset[str] | None
) -> tuple[Intake, bool | None]:
    """What a comment asks for, and whether its author may deploy (None: not known in time).
    Only the database and the forge's permission answer are consulted, never Docker."""
    first = read_comment(request.app[SETTINGS], event, allowed)
    if isinstance(first, CommentAsk):
        facts = await release_facts(request.app[RECORDER].deployments, first.project, event.sha)
        intake = plan_rollback(event, first, facts)
    else:
        intake = first
    if intake.project is None:
        return intake, None
    return intake, await request.app[FEEDBACK].desk.authorize(event, intake.project)


async def accept(
    request: web.Request, event: Event, allowed: frozenset[str] | None, body: bytes
) -> web.Response:
    """Decide what the delivery asks for, then record it and its jobs in one transaction."""
    settings = request.app[SETTINGS]
    name = type(event).__name__.lower()
    intake = Intake()
    permitted: bool | None = None
    if isinstance(event, Ping):
        intake = Intake(ignored="ping")
    elif isinstance(event, Ignored):
        name, intake = event.event_name, Intake(ignored=event.reason)
    elif isinstance(event, Push):  # a commit not newer than the live one is left out below
        intake = plan_push(settings, event, allowed)
    elif isinstance(event, CommentCommand):
        intake, permitted = await comment_intake(request, event, allowed)
    elif isinstance(event, ChecksChanged):
        intake = plan_checks(settings, event, allowed)
    jobs, reason = intake.jobs, intake.ignored
    if isinstance(event, CommentCommand) and permitted is False:
        jobs, reason = [], f"{event.author} may not deploy {intake.project}"
    elif intake.answer is not None:
        reason = "the command cannot run; the commenter is answered if allowed to deploy"
    extra = {"delivery": event.delivery_id}
    digest = hashlib.sha256(body).hexdigest()
    # The write goes on if the answer cannot wait for it (shielded): when it lands, the queue
    # is woken and hears of the jobs as usual, and the forge's redelivery is a duplicate.
    recording = asyncio.ensure_future(
        request.app[RECORDER].submit(
            jobs,
            delivery=(event.forge, event.delivery_id, name, digest),
            supersede=True,
            forward_only=isinstance(event, Push),
        )
    )
    try:
        created = await asyncio.wait_for(asyncio.shield(recording), settings.server.record_timeout)
    except DuplicateDelivery as duplicate:
        log.info("%s delivery %s: %s", event.forge, event.delivery_id, duplicate, extra=extra)
        request[WEBHOOK_OUTCOME] = "duplicate"
        return json_answer({"duplicate": True, "delivery": event.delivery_id})
    except (TimeoutError, GatebotError) as exc:
        if isinstance(exc, TimeoutError):
            what = f"not committed within {settings.server.record_timeout:g}s"
            recording.add_done_callback(_log_late_recording)
        else:
            what = str(exc)
        log.error("%s delivery %s: %s", event.forge, event.delivery_id, what, extra=extra)
        raise ApiError(
            503,
            "the delivery could not be recorded now (the database is busy or full); "
            "send it again later",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from None
    if isinstance(event, CommentCommand) and intake.project is not None:
        answer_comment(request, event, intake, permitted)
    if isinstance(event, ChecksChanged):
        # the verdict is read from the forge's API, never the payload
        request.app[RECORDER].checks_changed()
    if isinstance(event, Ping):
        request[WEBHOOK_OUTCOME] = "ping"
        return json_answer({"ok": True, "event": "ping"})
    if not created and jobs:  # each of a commit not newer than its project's live one
        reason = NOT_NEWER
    if not created:
        log.info("%s delivery %s ignored: %s", event.forge, event.delivery_id, reason, extra=extra)
        request[WEBHOOK_OUTCOME] = "ignored"
        return json_answer({"ignored": True, "reason": reason})
    request[WEBHOOK_OUTCOME] = "queued"
    log.info(
        "%s delivery %s queued job(s) %s",
        event.forge,
        event.delivery_id,
        [j.id for j in created],
        extra=extra,
    )
    return json_answer(
        {"queued": [{"job": j.id, "project": j.project, "sha": j.sha} for j in created]},
        status=202,
    )


def webhook_app(settings: Settings) -> web.Application:
    """An application answering the webhook routes, with their middlewares and what they read
    beside the recorder and the feedback (settings, secrets, a metrics registry): `serve`'s
    adds the rest of its routes to it, an intake process nothing (gatebot/intake_process.py)."""
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[metrics_api.webhook_metrics, error_middleware, body_reader],
    )
    app[SETTINGS] = settings
    app[SECRETS] = secrets_of(settings)  # worked out once, not per request
    app[METRICS] = Metrics()
    app.add_routes(routes)
    return app


def _log_late_recording(task: asyncio.Future[list[Job]]) -> None:
    if task.cancelled():
        return
    problem = task.exception()
    if problem is None:
        log.info("a delivery answered 503 was recorded after all; its redelivery is a duplicate")
    elif not isinstance(problem, DuplicateDelivery):
        log.error("a delivery answered 503 was never recorded: %s", problem)


def answer_comment(
    request: web.Request, event: CommentCommand, intake: Intake, permitted: bool | None
) -> None:
    """Once the delivery is recorded: tell someone not allowed that the command will not run
    (once per commit), answer a command that cannot run (only to someone allowed to deploy:
    nobody else can make gatebot post on a commit)."""
    assert intake.project is not None
    desk = request.app[FEEDBACK].desk
    if permitted is False:
        if intake.jobs:
            desk.refuse(event, intake.project)
    elif intake.answer is not None:
        if permitted:
            desk.answer(event, intake.answer)
        else:  # the forge did not answer in time: answer once it has
            desk.replier.tasks.spawn(desk.answer_if_allowed(event, intake.project, intake.answer))
