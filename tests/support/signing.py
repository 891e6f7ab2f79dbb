"""Webhook signing as GitHub and GitLab do it: the one signer for tests, the demo and the
benchmarks (gatebot's own verification is in gatebot/forges/*/sansio.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac


def github_signature(body: bytes, secret: str) -> str:
    """X-Hub-Signature-256: HMAC-SHA256 of the raw body, hex, prefixed ``sha256=``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def gitlab_signature(body: bytes, key: bytes, webhook_id: str, timestamp: int) -> str:
    """webhook-signature (Standard Webhooks): ``v1,`` and the base64 HMAC-SHA256 of
    ``id.timestamp.body``."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def gitlab_signature_headers(
    body: bytes, signing_token: str, webhook_id: str, timestamp: int
) -> dict[str, str]:
    """A signed GitLab delivery's headers, with the key in the ``whsec_<base64>`` token."""
    key = base64.b64decode(signing_token.removeprefix("whsec_"))
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": gitlab_signature(body, key, webhook_id, timestamp),
    }
