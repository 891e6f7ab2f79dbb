"""Who may deploy: a project's allowlist, or write permission on the forge.

`Permissions` asks the forge through its client and remembers each answer for a while, so a
burst of comments from one person costs one API call, and a job asks at most once. When the
permission cannot be checked (no API configured, the forge failing), the answer is no.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from gatebot.forges.base import ForgeClient, ForgeError, RepoRef
from gatebot.settings import ProjectSettings

log = logging.getLogger("gatebot.feedback")

PERMISSION_TTL_SECONDS = 60.0  # how long a forge's answer is trusted
_MAX_REMEMBERED = 4096


class Permissions:
    def __init__(
        self, clients: dict[str, ForgeClient], *, ttl: float = PERMISSION_TTL_SECONDS
    ) -> None:
        self.clients = clients
        self.ttl = ttl
        self._known: OrderedDict[tuple[str, str, str], tuple[bool, float]] = OrderedDict()

    def known(self, project: ProjectSettings, repo: RepoRef, author: str) -> bool | None:
        """The remembered answer, or None when it must be asked."""
        if _allowlisted(project, author):
            return True
        key = (repo.forge, repo.repo.lower(), author.lower())
        found = self._known.get(key)
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

    async def may_deploy(
        self, project: ProjectSettings, repo: RepoRef, author: str, author_id: int | None
    ) -> bool:
        """Allowlisted, or at least write permission on the forge; any doubt means no."""
        known = self.known(project, repo, author)
        if known is not None:
            return known
        client = self.clients.get(project.forge)
        if client is None:
            log.warning("no %s API configured: cannot check %s's permission", project.forge, author)
            return False
        try:
            allowed = await client.may_deploy(repo, author, author_id)
        except ForgeError as exc:
            log.warning("permission check for %s failed: %s", author, exc)
            return False  # not remembered: the next comment asks again
        key = (repo.forge, repo.repo.lower(), author.lower())
        self._known[key] = (allowed, time.monotonic() + self.ttl)
        self._known.move_to_end(key)
        while len(self._known) > _MAX_REMEMBERED:
            self._known.popitem(last=False)
        return allowed


def _allowlisted(project: ProjectSettings, author: str) -> bool:
    return author.lower() in {name.lower() for name in project.allow}
