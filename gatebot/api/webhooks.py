"""POST /webhooks/github and /webhooks/gitlab: verify first, then parse, then record and queue.

The only thing read from a body before its signature is checked is the repository name, and
only to choose between per-project secrets. A delivery is acknowledged (202 with the job ids)
as soon as its record and its jobs are committed to SQLite; deploys run later, in the queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web

from gatebot.api.keys import FEEDBACK, QUEUE, SETTINGS
from gatebot.events import CommentCommand, Event, Ignored, Ping, Push
from gatebot.feedback import plan_comment
from gatebot.forges.base import RepoRef
from gatebot.forges.errors import WebhookRejected
from gatebot.forges.github import sansio as github
from gatebot.forges.gitlab import sansio as gitlab
from gatebot.settings import Settings
from gatebot.store.jobs import DuplicateDelivery, NewJob

log = logging.getLogger("gatebot.webhooks")
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


def candidate_secrets(
    settings: Settings, forge: str, repo: str | None, default: str | None
) -> list[str]:
    """Secrets a delivery for `repo` may be signed with: each tracking project's own, or the
    forge-wide one."""
    projects = settings.projects_for(forge, repo) if repo else []
    secrets = [
        p.webhook_secret.get_secret_value() if p.webhook_secret else default for p in projects
    ]
    if not projects:
        secrets = [default]
    return list(dict.fromkeys(s for s in secrets if s))


def verify_with_any(secrets: list[str], verify: Callable[[str], None]) -> None:
    if not secrets:
        raise WebhookRejected.unauthorized("no webhook secret is configured for this delivery")
    failure: WebhookRejected | None = None
    for secret in secrets:
        try:
            verify(secret)
            return
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
    secrets = candidate_secrets(
        settings,
        "github",
        github.peek_repository(content_type, body),
        default.get_secret_value() if default else None,
    )
    signature = request.headers.get("X-Hub-Signature-256")
    verify_with_any(secrets, lambda secret: github.verify_signature(body, signature, secret))
    event = github.parse_event(request.headers, github.decode_body(content_type, body))
    return await accept(request, event)


@routes.post("/webhooks/gitlab")
async def gitlab_webhook(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    body = await read_body(request)
    token = settings.gitlab.webhook_token
    signing = settings.gitlab.webhook_signing_token
    tokens = candidate_secrets(
        settings,
        "gitlab",
        gitlab.peek_repository(body),
        token.get_secret_value() if token else None,
    )
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

    if tokens:
        verify_with_any(tokens, check)
    else:
        check(None)  # signing token only, or nothing configured (refused)
    event = gitlab.parse_event(headers, gitlab.decode_body(headers.get("Content-Type"), body))
    return await accept(request, event)


def plan_push(settings: Settings, push: Push) -> tuple[list[NewJob], str | None]:
    """The deploy jobs a push asks for, or none and the reason it is ignored."""
    projects = settings.projects_for(push.forge, push.repo)
    if not projects:
        return [], f"no project tracks {push.repo}"
    if push.is_tag:
        return [], "tag pushes are not deployed"
    if push.deleted:
        return [], f"branch {push.branch} was deleted"
    tracked = [p for p in projects if p.branch == push.branch]
    if not tracked:
        return [], f"branch {push.branch} is not tracked"
    context = {
        "forge": push.forge,
        "repo": push.repo,
        "installation_id": push.installation_id,
        "project_id": push.project_id,
    }
    return [
        NewJob(
            project=p.name,
            kind="deploy",
            sha=push.sha,
            trigger=f"push:{push.pusher}",
            delivery_id=push.delivery_id,
            context=context,
        )
        for p in tracked
    ], None


async def accept(request: web.Request, event: Event) -> web.Response:
    """Record the delivery and queue what it asks for, in one transaction."""
    queue = request.app[QUEUE]
    settings = request.app[SETTINGS]
    name = type(event).__name__.lower()
    jobs: list[NewJob] = []
    reason: str | None = None
    if isinstance(event, Ping):
        reason = "ping"
    elif isinstance(event, Ignored):
        name, reason = event.event_name, event.reason
    elif isinstance(event, Push):
        jobs, reason = plan_push(settings, event)
    elif isinstance(event, CommentCommand):
        job, reason = plan_comment(settings, event)
        jobs = [job] if job else []
    extra = {"delivery": event.delivery_id}
    try:
        created = await queue.submit(
            jobs, delivery=(event.forge, event.delivery_id, name), supersede=True
        )
    except DuplicateDelivery:
        log.info("%s delivery %s is a redelivery", event.forge, event.delivery_id, extra=extra)
        return web.json_response({"duplicate": True, "delivery": event.delivery_id})
    if isinstance(event, Ping):
        return web.json_response({"ok": True, "event": "ping"})
    if isinstance(event, CommentCommand) and reason and reason.startswith("reply:"):
        answer = reason.removeprefix("reply:")
        request.app[FEEDBACK].reply(event.forge, RepoRef.of(event), event.sha, answer)
        log.info(
            "%s delivery %s: command not understood", event.forge, event.delivery_id, extra=extra
        )
        return web.json_response({"ignored": True, "reason": "usage", "reply": answer})
    if not created:
        log.info("%s delivery %s ignored: %s", event.forge, event.delivery_id, reason, extra=extra)
        return web.json_response({"ignored": True, "reason": reason})
    log.info(
        "%s delivery %s queued job(s) %s",
        event.forge,
        event.delivery_id,
        [j.id for j in created],
        extra=extra,
    )
    return web.json_response(
        {"queued": [{"job": j.id, "project": j.project, "sha": j.sha} for j in created]},
        status=202,
    )
