"""Forge-neutral webhook events: what GitHub and GitLab deliveries mean to gatebot.

The sans-I/O parsers in `gatebot.forges` turn a verified delivery into one of these, so the
queue and the pipeline never look at a forge's payload format. Every event carries the
delivery id, which the store uses to drop a delivery the forge sends twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

Forge: TypeAlias = Literal["github", "gitlab"]


def is_zero_sha(sha: str) -> bool:
    """Whether `sha` is the all-zeros id forges send for a ref that does not exist."""
    return bool(sha) and not sha.strip("0")


@dataclass(frozen=True, kw_only=True, slots=True)
class Push:
    """A ref was created, moved or deleted."""

    forge: Forge
    repo: str  # "owner/name"; on GitLab the project's path_with_namespace ("group/sub/name")
    ref: str  # the full ref, "refs/heads/main" or "refs/tags/v1.0"
    branch: str | None  # "main" for refs/heads/main; None for a tag
    sha: str  # the commit to deploy; all zeros when the ref was deleted
    before: str  # the ref's previous commit; all zeros when the ref was created
    deleted: bool
    pusher: str  # login (GitHub) or username (GitLab) of who pushed
    delivery_id: str
    is_tag: bool = False
    installation_id: int | None = None  # GitHub App installation that sent the delivery
    project_id: int | None = None  # GitLab's numeric project id, for its API


@dataclass(frozen=True, kw_only=True, slots=True)
class CommentCommand:
    """A new comment on a commit; it may hold a command such as ``/rollback``.

    Nothing here says whether the body is a command or whether the author may run it: the
    caller parses the body and asks the forge about the author's permission.
    """

    forge: Forge
    repo: str
    sha: str  # the commented commit
    body: str
    author: str  # login (GitHub) or username (GitLab)
    author_id: int
    comment_id: int
    delivery_id: str
    installation_id: int | None = None
    project_id: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ChecksChanged:
    """A check run, check suite, commit status, pipeline or CI job of a commit changed. It says
    only "ask the forge about this commit now": a waiting job's verdict is always read from the
    forge's API (`gatebot.gatewatch`), so a delivery that is late, lost or replayed cannot make
    it stale."""

    forge: Forge
    repo: str
    sha: str
    delivery_id: str
    event_name: str  # "check_run", "status", "Pipeline Hook", ...
    installation_id: int | None = None
    project_id: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Ping:
    """The forge checks that the webhook is set up; answer 200 and do nothing else."""

    forge: Forge
    delivery_id: str
    repo: str | None = None  # absent for organisation and app hooks


@dataclass(frozen=True, kw_only=True, slots=True)
class Ignored:
    """A verified delivery gatebot acknowledges but does not act on, and why."""

    forge: Forge
    delivery_id: str
    event_name: str
    reason: str


Event: TypeAlias = Push | CommentCommand | ChecksChanged | Ping | Ignored
