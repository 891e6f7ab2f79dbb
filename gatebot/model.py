"""The domain's words, each with one home: what a deployment's status, a job's state and kind,
a slot's color and a job's origin are. Store, pipeline, API, OpenAPI and feedback import them
from here; this module imports nothing of gatebot's but the error tree.

Deployment status lifecycle (`check_transition` is the only judge):

    PENDING -> DEPLOYING -> ACTIVE -> ROLLED_BACK -> ACTIVE (rollback)
                         -> FAILED

PENDING may fail too (the source stage runs before DEPLOYING is recorded), and reconciliation
may mark an ACTIVE deployment FAILED when its container cannot be brought back.

Job states:

    waiting -> queued (the commit's checks passed) | failed (a check failed, or the gate timed out)
    queued -> running -> succeeded | failed
              running -> superseded (a push whose commit is not newer than the live one)
    queued | waiting -> superseded (a newer push for the project) | cancelled (an operator)

A push job of a gated project (`[projects.gate]`) starts `waiting`; every other job `queued`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from gatebot.errors import IllegalTransition

# A project's name: it becomes part of file, container, image and nginx names.
PROJECT_NAME_PATTERN = r"[a-z0-9][a-z0-9-]{0,39}"
PROJECT_NAME = re.compile(PROJECT_NAME_PATTERN)


def is_project_name(value: str) -> bool:
    return PROJECT_NAME.fullmatch(value) is not None


# --- deployments ----------------------------------------------------------------------------


class Status(StrEnum):
    PENDING = "PENDING"
    DEPLOYING = "DEPLOYING"
    ACTIVE = "ACTIVE"
    ROLLED_BACK = "ROLLED_BACK"
    FAILED = "FAILED"


ALLOWED: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.DEPLOYING, Status.FAILED}),
    Status.DEPLOYING: frozenset({Status.ACTIVE, Status.FAILED}),
    Status.ACTIVE: frozenset({Status.ROLLED_BACK, Status.FAILED}),
    Status.ROLLED_BACK: frozenset({Status.ACTIVE}),
    Status.FAILED: frozenset(),
}

LIVE_ONCE = frozenset({Status.ACTIVE, Status.ROLLED_BACK})  # releases that served traffic
IN_FLIGHT = frozenset({Status.PENDING, Status.DEPLOYING})  # a deploy is (or was) under way


def check_transition(deployment_id: int, old: Status, new: Status) -> None:
    """Raise IllegalTransition unless `old -> new` is a step of the lifecycle."""
    if new not in ALLOWED[old]:
        raise IllegalTransition(deployment_id, old, new)


class Color(StrEnum):
    """The two slots of a project: blue on its base port, green on the next one."""

    BLUE = "blue"
    GREEN = "green"

    @property
    def other(self) -> Color:
        return Color.GREEN if self is Color.BLUE else Color.BLUE


@dataclass(frozen=True)
class Slot:
    """Where a deployment's container runs."""

    container: str
    color: Color
    port: int


# --- jobs -----------------------------------------------------------------------------------


class JobState(StrEnum):
    WAITING = "waiting"  # for the commit's checks (a release gate)
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"


PENDING_JOB_STATES = frozenset({JobState.WAITING, JobState.QUEUED})  # not started yet
ENDED_JOB_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.SUPERSEDED, JobState.CANCELLED}
)


class JobKind(StrEnum):
    DEPLOY = "deploy"
    ROLLBACK = "rollback"


class OriginKind(StrEnum):
    """What asked for a job. The value is the prefix of the job's recorded trigger."""

    PUSH = "push"  # a push webhook
    COMMENT = "comment"  # a /rollback comment on a commit
    API = "token"  # the REST API (or a page's button), with a token: "token:<name>"
    CLI = "cli"  # the command line
    POLL = "poll"  # the branch head seen by polling the repository


@dataclass(frozen=True, kw_only=True)
class CommentRef:
    """The comment a job answers on: where the replies go."""

    sha: str  # the commented commit
    author: str
    author_id: int | None = None
    comment_id: int | None = None


@dataclass(frozen=True, kw_only=True)
class Origin:
    """Who asked for a job, through which delivery, about which forge repository, and where
    to reply. Stored as JSON with the job, read back typed."""

    kind: OriginKind
    who: str
    delivery_id: str | None = None
    forge: str | None = None
    repo: str | None = None  # the forge's "owner/name" (GitLab: path_with_namespace)
    installation_id: int | None = None  # GitHub App installation that sent the delivery
    project_id: int | None = None  # GitLab's numeric project id
    comment: CommentRef | None = None
    # A rollback decided when a comment arrived: the ACTIVE deployment it was decided against
    # (None: nothing was live). The rollback is refused if another release is live by then.
    expect_active: int | None = None

    @property
    def trigger(self) -> str:
        """What the job and its deployment record as their trigger, e.g. ``push:alice``."""
        return f"{self.kind.value}:{self.who}" if self.who else self.kind.value

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if v is not None}  # asdict is deep and slow
        data["kind"] = self.kind.value
        if self.comment is not None:
            data["comment"] = asdict(self.comment)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], trigger: str = "") -> Origin:
        """Read back what `to_json` wrote (or, for rows written before origins were typed,
        the old context dict, with the kind taken from the trigger)."""
        prefix, _, who = trigger.partition(":")
        kind = data.get("kind") or prefix
        try:
            origin_kind = OriginKind(kind)
        except ValueError:
            origin_kind = OriginKind.CLI
        comment = data.get("comment")
        expect = data.get("expect_active")
        if isinstance(comment, dict) and "expect_active" in comment:  # the old layout
            expect = comment.get("expect_active")
        return cls(
            kind=origin_kind,
            who=str(data.get("who", who)),
            delivery_id=_opt_str(data.get("delivery_id")),
            forge=_opt_str(data.get("forge")),
            repo=_opt_str(data.get("repo")),
            installation_id=_opt_int(data.get("installation_id")),
            project_id=_opt_int(data.get("project_id")),
            comment=(
                CommentRef(
                    sha=str(comment.get("sha", "")),
                    author=str(comment.get("author", "")),
                    author_id=_opt_int(comment.get("author_id")),
                    comment_id=_opt_int(comment.get("comment_id")),
                )
                if isinstance(comment, dict)
                else None
            ),
            expect_active=_opt_int(expect),
        )


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
