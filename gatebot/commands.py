"""Comment commands: what a `/rollback` comment on a commit asks for, decided without I/O.

Replies never quote the comment back, so nobody can make gatebot post text of their choosing.

Grammar (the comment's first line; the rest of the comment is free text):

    /rollback [PROJECT] [to VERSION|SHA]

PROJECT is needed only when one repository maps to several projects. Without `to`, the
commented commit decides: the live commit rolls back to the previous release; an older commit
that was live once becomes live again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gatebot.model import PROJECT_NAME

COMMAND = "/rollback"
USAGE = (
    "usage: `/rollback [PROJECT] [to VERSION|SHA]` on a commit; on the live commit it rolls "
    "back to the previous release, on an older deployed commit it makes that release live again"
)
_REF = re.compile(r"(v?[0-9]{1,9}|[0-9a-fA-F]{7,64})")


@dataclass(frozen=True)
class RollbackCommand:
    project: str | None
    to: str | None


@dataclass(frozen=True)
class CommandError:
    message: str


def parse_comment(body: str) -> RollbackCommand | CommandError | None:
    """None when the comment is no command; CommandError (with the usage) when it is a
    malformed one."""
    first = body.strip().splitlines()[0].strip() if body.strip() else ""
    words = first.split()
    if not words or words[0].lower() != COMMAND:
        return None
    args = words[1:]
    project: str | None = None
    if args and args[0].lower() != "to":
        project = args.pop(0)
        if not PROJECT_NAME.fullmatch(project):
            return CommandError(f"the word after `/rollback` is not a project name. {USAGE}")
    to: str | None = None
    if args:
        if args[0].lower() != "to" or len(args) != 2:
            return CommandError(f"I did not understand the command. {USAGE}")
        to = args[1]
        if not _REF.fullmatch(to):
            return CommandError(
                f"the word after `to` is neither a version nor a commit SHA. {USAGE}"
            )
    return RollbackCommand(project=project, to=to)


def choose_project(command: RollbackCommand, candidates: list[str]) -> str | CommandError:
    """The project a command is for, among those that track the commented repository."""
    if command.project is not None:
        if command.project in candidates:
            return command.project
        known = ", ".join(candidates) or "none"
        return CommandError(
            f"project {command.project!r} is not deployed from this repository (projects: {known})"
        )
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        return CommandError("no project is deployed from this repository")
    return CommandError(
        "this repository deploys several projects; name one: "
        + ", ".join(f"`/rollback {name}`" for name in candidates)
    )
