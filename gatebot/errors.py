"""One error tree for gatebot, so callers catch by meaning, not by library.

Every message here may reach a user (CLI, API, forge comment): it says what went wrong and,
where there is one, what to do, and it never carries a secret.
"""

from __future__ import annotations

import errno
import sqlite3


class GatebotError(Exception):
    """Base of every error gatebot raises on purpose."""


class ConfigError(GatebotError):
    """The configuration file is missing, unreadable or invalid."""


class UnknownProject(GatebotError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown project {name!r}: it is not in the configuration")
        self.name = name


class LockHeld(GatebotError):
    """Another deploy or rollback of the same project is running."""

    def __init__(self, project: str, holder: str) -> None:
        super().__init__(f"project {project!r} is busy: {holder}")
        self.project = project
        self.holder = holder


class IllegalTransition(GatebotError):
    def __init__(self, deployment_id: int, old: str, new: str) -> None:
        super().__init__(f"deployment {deployment_id}: illegal status change {old} -> {new}")


class NothingToRollBack(GatebotError):
    """No earlier release with an image exists to roll back to."""


class LiveReleaseChanged(GatebotError):
    """A rollback decided against one live release found another live when it ran."""

    def __init__(self, project: str, now: str) -> None:
        super().__init__(f"the live release of {project} changed (now {now}); nothing was done")
        self.now = now


class UnrecordedReleases(GatebotError):
    """The database holds no deployment while gatebot's releases run (a lost or deleted
    database): reconciling or deploying would tear them down, so gatebot refuses until the
    database is restored or `gatebot reconcile --adopt` records what runs."""


class RuntimeUnavailable(GatebotError):
    """The Docker engine cannot be reached."""


class RuntimeFailure(GatebotError):
    """The Docker engine refused or failed an operation."""


class NameConflict(RuntimeFailure):
    """A container gatebot wants to create exists and is not gatebot's."""


class SourceError(GatebotError):
    """Cloning, fetching or checking out the repository failed."""


class NotNewer(GatebotError):
    """A push job's commit is not newer than what is live (or than a job it superseded): it
    ends superseded, without deploying, so a late delivery never moves a project backwards.
    `by` is the job that replaces it, when there is one."""

    def __init__(self, message: str, by: int | None = None) -> None:
        super().__init__(message)
        self.by = by


class ProxyError(GatebotError):
    """nginx rejected the configuration or could not be reloaded."""


class HealthCheckFailed(GatebotError):
    """The new container never answered its health check in time.

    `logs` holds the container's last log lines when it died: they may contain anything the
    app printed, so they are kept apart from the message, which may be shown in public.
    """

    def __init__(self, reason: str, *, logs: str | None = None) -> None:
        super().__init__(reason)
        self.logs = logs


class StageFailed(GatebotError):
    """A deploy or rollback stopped at `stage` for `reason`; the live release is untouched.

    `logs` (the failed container's last lines, if any) go to the journal only: the step's
    output and the log file, never the reason shown in statuses and replies.
    """

    def __init__(self, stage: str, reason: str, *, logs: str | None = None) -> None:
        super().__init__(f"{stage} failed: {reason}")
        self.stage = stage
        self.reason = reason
        self.logs = logs


def named_cause(exc: BaseException) -> str | None:
    """A known cause in words, or None: a database that refuses (locked, full, corrupted), a
    file that cannot be written (its strerror, errno name and path: "No space left on device
    [ENOSPC] (/etc/nginx/gatebot.d/.shop.live.tmp)")."""
    if isinstance(exc, sqlite3.DatabaseError):
        return f"database error: {exc}"
    if isinstance(exc, OSError) and exc.errno is not None:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc} [{errno.errorcode.get(exc.errno, exc.errno)}]{where}"
    return None


def describe(exc: BaseException) -> str:
    """An unexpected exception in words: its named cause, else an internal error."""
    return named_cause(exc) or f"internal error: {type(exc).__name__}: {exc}"
