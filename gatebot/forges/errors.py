"""The one error a webhook parser raises: the delivery is refused, with the HTTP status to send.

`public_message` is what the forge (or whoever posted) sees in the response. For 401 it is
always the same words, so a caller learns nothing about why; `str(exc)` holds the reason for
the log. Neither ever carries a secret, a signature or a value copied from the request.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from gatebot.errors import GatebotError

RejectStatus: TypeAlias = Literal[400, 401, 413, 415]

UNAUTHORIZED_MESSAGE = "invalid signature"


class WebhookRejected(GatebotError):
    """A webhook delivery that gatebot refuses; answer it with `status` and `public_message`."""

    def __init__(
        self, status: RejectStatus, public_message: str, *, detail: str | None = None
    ) -> None:
        super().__init__(detail or public_message)
        self.status: RejectStatus = status
        self.public_message = public_message

    @classmethod
    def unauthorized(cls, detail: str) -> WebhookRejected:
        """401: the delivery is not proven to come from the forge; `detail` is for logs only."""
        return cls(401, UNAUTHORIZED_MESSAGE, detail=detail)

    @classmethod
    def bad_request(cls, message: str) -> WebhookRejected:
        """400: verified (or not yet checkable) but malformed; the message names the problem."""
        return cls(400, message)

    @classmethod
    def too_large(cls, limit: int) -> WebhookRejected:
        return cls(413, f"body is larger than {limit} bytes")

    @classmethod
    def unsupported_media_type(cls, accepted: str) -> WebhookRejected:
        return cls(415, f"unsupported content type: send {accepted}")
