"""GitHub webhooks without I/O: check the signature, decode the body, map the event.

Raw body bytes and headers go in, a `gatebot.events` event comes out; reading the request and
answering it is the web handler's job. The order there is: `peek_repository` (only to order
the secrets to try), `verify_signature` over the raw bytes, then `decode_body` and
`parse_event`. Every refusal is a `WebhookRejected` carrying the HTTP status to answer with.

Note that GitHub signs only the body: the ``X-GitHub-Event`` and ``X-GitHub-Delivery`` headers
are not covered, so `parse_event` insists on the fields each event needs instead of trusting
the header alone.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from gatebot.events import ChecksChanged, CommentCommand, Event, Ignored, Ping, Push, is_zero_sha
from gatebot.forges import (
    header,
    load_json_object,
    media_type,
    optional_bool,
    optional_int,
    optional_str,
    require_int,
    require_sha,
    require_str,
    split_ref,
)
from gatebot.forges.errors import WebhookRejected

SIGNATURE_HEADER = "X-Hub-Signature-256"
EVENT_HEADER = "X-GitHub-Event"
DELIVERY_HEADER = "X-GitHub-Delivery"

_JSON = "application/json"
# Events about a commit's checks, and where their payload names the commit.
_CHECK_EVENTS = {
    "check_run": "check_run.head_sha",
    "check_suite": "check_suite.head_sha",
    "status": "sha",
}
_FORM = "application/x-www-form-urlencoded"


def verify_signature(body: bytes, signature_header: str | None, secret: str) -> None:
    """Raise 401 unless `signature_header` is ``sha256=<hex>`` of HMAC-SHA256(secret, body).

    An empty secret is refused too: anyone can compute an HMAC with an empty key.
    """
    if not secret:
        raise WebhookRejected.unauthorized("no GitHub webhook secret is configured")
    if signature_header is None:
        raise WebhookRejected.unauthorized(f"{SIGNATURE_HEADER} header is missing")
    scheme, sep, digest = signature_header.strip().partition("=")
    if scheme != "sha256" or not sep or not digest or not digest.isascii():
        raise WebhookRejected.unauthorized(f"{SIGNATURE_HEADER} is not sha256=<hex digest>")
    expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode("ascii"), digest.lower().encode("ascii")):
        raise WebhookRejected.unauthorized(f"{SIGNATURE_HEADER} does not match the body")


def decode_body(content_type: str | None, body: bytes) -> dict[str, Any]:
    """The payload of a JSON body, or of the ``payload=`` field of a form-encoded one."""
    kind = media_type(content_type)
    if kind == _JSON:
        return load_json_object(body)
    if kind == _FORM:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise WebhookRejected.bad_request("form body is not UTF-8") from None
        values = parse_qs(text, keep_blank_values=True).get("payload", [])
        if len(values) != 1:
            raise WebhookRejected.bad_request("form body must have exactly one payload field")
        return load_json_object(values[0])
    raise WebhookRejected.unsupported_media_type(f"{_JSON} or {_FORM}")


PEEK_BYTES = 64 * 1024  # how much of an unverified body `peek_repository` looks at
_REPOSITORY = re.compile(
    r'"repository"\s*:\s*\{[^{}]*?"full_name"\s*:\s*"([^"\\\x00-\x1f]{1,255})"'
)


def peek_repository(content_type: str | None, body: bytes) -> str | None:
    """``repository.full_name`` from the first PEEK_BYTES of a body not yet verified, or None;
    never raises, and never parses the body: a large unsigned body costs no more than a small
    one (the search is linear and bounded).

    Use it only to order the secrets to verify with: nothing in the body is true until
    `verify_signature` has passed.
    """
    kind = media_type(content_type)
    if kind not in (_JSON, _FORM):
        return None
    prefix = body[:PEEK_BYTES].decode("utf-8", "replace")
    if kind == _FORM:
        prefix = unquote_plus(prefix)
    found = _REPOSITORY.search(prefix)
    return found.group(1) if found else None


def parse_event(headers: Mapping[str, str], payload: Mapping[str, Any]) -> Event:
    """Map a verified, decoded delivery to an event; 400 when a needed header or field is off."""
    delivery_id = header(headers, DELIVERY_HEADER)
    if delivery_id is None:
        raise WebhookRejected.bad_request(f"missing {DELIVERY_HEADER} header")
    event = header(headers, EVENT_HEADER)
    if event is None:
        raise WebhookRejected.bad_request(f"missing {EVENT_HEADER} header")
    if event == "ping":
        return Ping(
            forge="github",
            delivery_id=delivery_id,
            repo=optional_str(payload, "repository.full_name"),
        )
    if event == "push":
        return _push(payload, delivery_id)
    if event == "commit_comment":
        return _commit_comment(payload, delivery_id)
    if event in _CHECK_EVENTS:
        return ChecksChanged(
            forge="github",
            repo=require_str(payload, "repository.full_name"),
            sha=require_sha(payload, _CHECK_EVENTS[event]),
            delivery_id=delivery_id,
            event_name=event,
            installation_id=optional_int(payload, "installation.id"),
        )
    return Ignored(
        forge="github",
        delivery_id=delivery_id,
        event_name=event,
        reason=f"gatebot does not act on {event} events",
    )


def _push(payload: Mapping[str, Any], delivery_id: str) -> Event:
    repo = require_str(payload, "repository.full_name")
    ref = require_str(payload, "ref")
    after = require_sha(payload, "after")
    before = require_sha(payload, "before")
    branch, is_tag = split_ref(ref)
    if branch is None and not is_tag:
        return Ignored(
            forge="github",
            delivery_id=delivery_id,
            event_name="push",
            reason=f"{ref} is neither a branch nor a tag",
        )
    # sender.login is the account; pusher.name is the same login for a user's push.
    pusher = optional_str(payload, "sender.login") or require_str(payload, "pusher.name")
    return Push(
        forge="github",
        repo=repo,
        ref=ref,
        branch=branch,
        sha=after,
        before=before,
        deleted=bool(optional_bool(payload, "deleted")) or is_zero_sha(after),
        pusher=pusher,
        delivery_id=delivery_id,
        is_tag=is_tag,
        installation_id=optional_int(payload, "installation.id"),
    )


def _commit_comment(payload: Mapping[str, Any], delivery_id: str) -> Event:
    action = require_str(payload, "action")
    if action != "created":
        return Ignored(
            forge="github",
            delivery_id=delivery_id,
            event_name="commit_comment",
            reason=f"commit comment {action}, only new comments carry commands",
        )
    return CommentCommand(
        forge="github",
        repo=require_str(payload, "repository.full_name"),
        sha=require_sha(payload, "comment.commit_id"),
        body=require_str(payload, "comment.body", allow_empty=True),
        author=require_str(payload, "comment.user.login"),
        author_id=require_int(payload, "comment.user.id"),
        comment_id=require_int(payload, "comment.id"),
        delivery_id=delivery_id,
        installation_id=optional_int(payload, "installation.id"),
    )
