"""Signed webhook deliveries, built from the documented payload fixtures, as a forge sends them."""

from __future__ import annotations

import base64
import copy
import itertools
import json
import time
import uuid
from typing import Any

from tests.forges import fixture
from tests.support import signing

GITHUB_SECRET = "github-test-secret"
API_TOKEN = "fake-api-token-for-tests"  # what the fake forge APIs accept
GITLAB_TOKEN = "gitlab-test-token"
GITLAB_SIGNING_KEY = b"0123456789abcdef0123456789abcdef"
GITLAB_SIGNING_TOKEN = "whsec_" + base64.b64encode(GITLAB_SIGNING_KEY).decode()

_counter = itertools.count(1)


def github_signature(body: bytes, secret: str = GITHUB_SECRET) -> str:
    return signing.github_signature(body, secret)


def github_push_payload(
    repo: str, sha: str, *, branch: str = "main", **extra: Any
) -> dict[str, Any]:
    payload = fixture("github_push.json")
    owner, name = repo.split("/")
    payload["repository"]["full_name"] = repo
    payload["repository"]["name"] = name
    payload["repository"]["owner"]["login"] = owner
    payload["ref"] = f"refs/heads/{branch}"
    payload["after"] = sha
    payload["head_commit"]["id"] = sha
    payload.update(extra)
    return payload


def github_delivery(
    event: str,
    payload: dict[str, Any] | bytes,
    *,
    secret: str = GITHUB_SECRET,
    delivery: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": github_signature(body, secret),
        "User-Agent": "GitHub-Hookshot/test",
    }
    return body, headers


def gitlab_push_payload(repo: str, sha: str, *, branch: str = "main") -> dict[str, Any]:
    payload = fixture("gitlab_push.json")
    payload["project"]["path_with_namespace"] = repo
    payload["ref"] = f"refs/heads/{branch}"
    payload["after"] = sha
    payload["checkout_sha"] = sha
    return payload


def gitlab_delivery(
    payload: dict[str, Any],
    *,
    event: str = "Push Hook",
    token: str | None = GITLAB_TOKEN,
    signing_token: str | None = None,
    timestamp: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Gitlab-Event": event,
        "X-Gitlab-Event-UUID": str(uuid.uuid4()),
    }
    if token is not None:
        headers["X-Gitlab-Token"] = token
    if signing_token is not None:
        webhook_id = f"msg_{next(_counter)}_{uuid.uuid4().hex}"
        stamp = timestamp if timestamp is not None else int(time.time())
        headers.update(signing.gitlab_signature_headers(body, signing_token, webhook_id, stamp))
    return body, headers


def comment_payload(repo: str, sha: str, body: str, user: str, user_id: int = 7) -> dict[str, Any]:
    payload = copy.deepcopy(fixture("github_commit_comment.json"))
    owner, name = repo.split("/")
    payload["repository"]["full_name"] = repo
    payload["repository"]["name"] = name
    payload["repository"]["owner"]["login"] = owner
    payload["comment"].update(commit_id=sha, body=body)
    payload["comment"]["user"].update(login=user, id=user_id)
    payload["sender"].update(login=user, id=user_id)
    return payload
