"""Forge feedback: what gatebot tells the forge, and what it asks it.

- `statuses`: every job shows on its commit as a commit status, posted in order;
- `comments`: `/rollback` comments are authorized, run and answered on the commit;
- `authz`: whether someone may deploy a project (the forge's permission or the allowlist).

Forge calls run in the background (`tasks.TaskSet`) and never block or fail a deploy: a call that
finally fails is logged, and the deploy's own result stands. `Feedback` bundles the three for
the app factory, which builds it once over the configured forge clients.
"""

from __future__ import annotations

from dataclasses import dataclass

from gatebot.feedback.authz import Permissions
from gatebot.feedback.comments import CommentDesk, Replier
from gatebot.feedback.statuses import StatusObserver, StatusPoster
from gatebot.forges.base import ForgeClient
from gatebot.redact import secrets_of
from gatebot.settings import Settings


@dataclass(frozen=True)
class Feedback:
    poster: StatusPoster
    statuses: StatusObserver
    permissions: Permissions
    replier: Replier
    desk: CommentDesk

    @classmethod
    def over(cls, settings: Settings, clients: dict[str, ForgeClient]) -> Feedback:
        secrets = secrets_of(settings)
        poster = StatusPoster(clients, secrets)
        permissions = Permissions(clients)
        replier = Replier(clients, secrets)
        return cls(
            poster=poster,
            statuses=StatusObserver(settings, poster),
            permissions=permissions,
            replier=replier,
            desk=CommentDesk(settings, permissions, replier),
        )

    async def settle(self) -> None:
        """Wait until every forge call started so far has gone out (or given up)."""
        while self.poster.tasks or self.replier.tasks:
            await self.poster.tasks.settle()
            await self.replier.tasks.settle()

    async def close(self, timeout: float = 10.0) -> None:
        """Give queued forge calls a little time to go out, then stop."""
        await self.poster.tasks.close(timeout)
        await self.replier.tasks.close(timeout)
