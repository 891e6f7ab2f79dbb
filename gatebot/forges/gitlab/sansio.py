"""GitLab webhooks without I/O: check the token and/or signature, decode, map the event.

GitLab proves a delivery in two ways, and a project may configure either or both:

* a secret token, sent back verbatim in ``X-Gitlab-Token``;
* a signing token (``whsec_<base64>``): GitLab signs ``{webhook-id}.{webhook-timestamp}.{body}``
  with HMAC-SHA256 as in the Standard Webhooks spec and sends ``webhook-signature: v1,<base64>``.

`verify` is strict: nothing configured is refused; a configured token must always match;
a configured signing token must verify whenever GitLab sends a signature; and at least one
mechanism must have been checked and passed. Every refusal is a `WebhookRejected`.

A ``Tag Push Hook`` becomes a `Push` with ``is_tag=True`` (as GitHub's tag pushes do), so both
forges look the same to the queue, which deploys branches only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any

from gatebot.errors import ConfigError
from gatebot.events import ChecksChanged, CommentCommand, Event, Ignored, Push, is_zero_sha
from gatebot.forges import (
    check_sha,
    header,
    load_json_object,
    lookup,
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

TOKEN_HEADER = "X-Gitlab-Token"  # noqa: S105 - a header name, not a secret
EVENT_HEADER = "X-Gitlab-Event"
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
DELIVERY_HEADERS = ("Idempotency-Key", ID_HEADER, "X-Gitlab-Event-UUID")
SIGNING_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300.0  # seconds a webhook-timestamp may be off from now, either way

_JSON = "application/json"
_TIMESTAMP = re.compile(r"[0-9]{1,12}")

# X-Gitlab-Event -> the object_kind its payload must carry (headers are not signed).
_KINDS = {
    "Push Hook": "push",
    "Tag Push Hook": "tag_push",
    "Note Hook": "note",
    "Pipeline Hook": "pipeline",
    "Job Hook": "build",
}


# --- verification -------------------------------------------------------------------------


def verify_token(header_value: str | None, expected: str) -> None:
    """Raise 401 unless ``X-Gitlab-Token`` equals the configured token (constant time)."""
    if not expected:
        raise WebhookRejected.unauthorized("no GitLab webhook token is configured")
    if header_value is None:
        raise WebhookRejected.unauthorized(f"{TOKEN_HEADER} header is missing")
    presented = header_value.encode("utf-8", "surrogateescape")  # the bytes as sent
    if not hmac.compare_digest(presented, expected.encode("utf-8")):
        raise WebhookRejected.unauthorized(f"{TOKEN_HEADER} does not match")


def signing_key(signing_token: str) -> bytes:
    """The HMAC key in a signing token: base64 after an optional ``whsec_`` prefix.

    Raises ConfigError (never quoting the token) so settings can check it when loading.
    """
    encoded = signing_token.strip().removeprefix(SIGNING_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise ConfigError(
            "the GitLab signing token is not valid: expected whsec_ followed by base64, "
            "as GitLab shows it when you generate the token"
        )
    return key


def verify_signing(
    headers: Mapping[str, str],
    body: bytes,
    signing_token: str,
    now: float,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """Raise 401 unless one ``v1,`` entry of ``webhook-signature`` signs this delivery and
    ``webhook-timestamp`` is within `tolerance` seconds of `now` (Standard Webhooks)."""
    key = signing_key(signing_token)
    msg_id = header(headers, ID_HEADER)
    timestamp = header(headers, TIMESTAMP_HEADER)
    signatures = header(headers, SIGNATURE_HEADER)
    if msg_id is None or timestamp is None or signatures is None:
        raise WebhookRejected.unauthorized(
            f"{ID_HEADER}, {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} headers are all required"
        )
    if not _TIMESTAMP.fullmatch(timestamp):
        raise WebhookRejected.unauthorized(f"{TIMESTAMP_HEADER} is not a Unix time in seconds")
    if abs(now - int(timestamp)) > tolerance:
        raise WebhookRejected.unauthorized(
            f"{TIMESTAMP_HEADER} is more than {tolerance:g} s away from now"
        )
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    matched = False
    for entry in signatures.split():
        version, sep, value = entry.partition(",")
        if version == "v1" and sep and value.isascii():
            if hmac.compare_digest(value.encode("ascii"), expected):
                matched = True
    if not matched:
        raise WebhookRejected.unauthorized(f"no {SIGNATURE_HEADER} entry matches the delivery")


def verify(
    headers: Mapping[str, str],
    body: bytes,
    *,
    token: str | None,
    signing_token: str | None,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """Check every configured mechanism; raise 401 unless all pass.

    * nothing configured: refused, gatebot never runs unsigned work;
    * token configured: ``X-Gitlab-Token`` must match;
    * signing token configured: the delivery must be signed (``webhook-id``,
      ``webhook-timestamp``, ``webhook-signature``) and the signature must verify; a delivery
      without signature headers is refused, so whoever knows the token cannot strip the
      signature and lose its replay protection.
    """
    if not token and not signing_token:
        raise WebhookRejected.unauthorized("no GitLab webhook token or signing token configured")
    if signing_token:
        verify_signing(headers, body, signing_token, now, tolerance=tolerance)
    if token:
        verify_token(header(headers, TOKEN_HEADER), token)


# --- decoding -----------------------------------------------------------------------------


def decode_body(content_type: str | None, body: bytes) -> dict[str, Any]:
    """The JSON payload; GitLab sends nothing else."""
    if media_type(content_type) != _JSON:
        raise WebhookRejected.unsupported_media_type(_JSON)
    return load_json_object(body)


def peek_repository(body: bytes) -> str | None:
    """``project.path_with_namespace`` from a body not yet verified, or None; never raises.

    Use it only to choose the tokens to verify with.
    """
    try:
        payload = load_json_object(body)
    except WebhookRejected:
        return None
    name = lookup(payload, "project.path_with_namespace")
    return name if isinstance(name, str) and name else None


def delivery_id(headers: Mapping[str, str]) -> str:
    """``webhook-id`` when the delivery is signed (it is covered by the signature, so a replay
    cannot pass as a new delivery), else ``Idempotency-Key`` (the same on GitLab's retries),
    else ``X-Gitlab-Event-UUID``; 400 when there is none."""
    for name in (ID_HEADER, *(h for h in DELIVERY_HEADERS if h != ID_HEADER)):
        value = header(headers, name)
        if value is not None:
            return value
    raise WebhookRejected.bad_request(f"missing delivery id: none of {', '.join(DELIVERY_HEADERS)}")


# --- events -------------------------------------------------------------------------------


def parse_event(headers: Mapping[str, str], payload: Mapping[str, Any]) -> Event:
    """Map a verified, decoded delivery to an event; 400 when a needed header or field is off."""
    delivery = delivery_id(headers)
    event = header(headers, EVENT_HEADER)
    if event is None:
        raise WebhookRejected.bad_request(f"missing {EVENT_HEADER} header")
    kind = _KINDS.get(event)
    if kind is None:
        return Ignored(
            forge="gitlab",
            delivery_id=delivery,
            event_name=event,
            reason=f"gatebot does not act on {event} events",
        )
    object_kind = optional_str(payload, "object_kind")
    if object_kind is not None and object_kind != kind:
        raise WebhookRejected.bad_request(
            f"{EVENT_HEADER} is {event} but object_kind is not {kind}"
        )
    if kind == "note":
        return _note(payload, delivery)
    if kind in ("pipeline", "build"):
        return _checks(payload, delivery, event, kind)
    return _push(payload, delivery, event)


def _project_id(payload: Mapping[str, Any]) -> int | None:
    project_id = optional_int(payload, "project.id")
    return project_id if project_id is not None else optional_int(payload, "project_id")


def _push(payload: Mapping[str, Any], delivery: str, event: str) -> Event:
    repo = require_str(payload, "project.path_with_namespace")
    ref = require_str(payload, "ref")
    after = require_sha(payload, "after")
    before = require_sha(payload, "before")
    branch, is_tag = split_ref(ref)
    if branch is None and not is_tag:
        return Ignored(
            forge="gitlab",
            delivery_id=delivery,
            event_name=event,
            reason=f"{ref} is neither a branch nor a tag",
        )
    # checkout_sha is the commit (for an annotated tag, `after` is the tag object);
    # GitLab sends it as null when the ref was deleted.
    checkout = optional_str(payload, "checkout_sha")
    sha = check_sha(checkout, "checkout_sha") if checkout else after
    deleted = is_zero_sha(after) or ("checkout_sha" in payload and checkout is None)
    return Push(
        forge="gitlab",
        repo=repo,
        ref=ref,
        branch=branch,
        sha=sha,
        before=before,
        deleted=deleted,
        pusher=require_str(payload, "user_username"),
        delivery_id=delivery,
        is_tag=is_tag,
        project_id=_project_id(payload),
    )


def _checks(payload: Mapping[str, Any], delivery: str, event: str, kind: str) -> Event:
    """A pipeline or a CI job changed: the gate watcher asks about the commit now."""
    sha_path = "object_attributes.sha" if kind == "pipeline" else "sha"
    return ChecksChanged(
        forge="gitlab",
        repo=require_str(payload, "project.path_with_namespace"),
        sha=require_sha(payload, sha_path),
        delivery_id=delivery,
        event_name=event,
        project_id=_project_id(payload),
    )


def _note(payload: Mapping[str, Any], delivery: str) -> Event:
    def ignored(reason: str) -> Ignored:
        return Ignored(forge="gitlab", delivery_id=delivery, event_name="Note Hook", reason=reason)

    noteable = require_str(payload, "object_attributes.noteable_type")
    if noteable != "Commit":
        return ignored(f"comment on a {noteable}, only commit comments carry commands")
    if optional_bool(payload, "object_attributes.system"):
        return ignored("system note, written by GitLab rather than a person")
    # Older GitLab versions send no action; a note hook then always means a new note.
    action = optional_str(payload, "object_attributes.action") or "create"
    if action != "create":
        return ignored(f"comment {action}, only new comments carry commands")
    has_commit = lookup(payload, "commit.id") is not None
    sha_path = "commit.id" if has_commit else "object_attributes.commit_id"
    return CommentCommand(
        forge="gitlab",
        repo=require_str(payload, "project.path_with_namespace"),
        sha=require_sha(payload, sha_path),
        body=require_str(payload, "object_attributes.note", allow_empty=True),
        author=require_str(payload, "user.username"),
        author_id=require_int(payload, "user.id"),
        comment_id=require_int(payload, "object_attributes.id"),
        delivery_id=delivery,
        project_id=_project_id(payload),
    )
