"""A deployment's record of what happened: step rows in SQLite plus a plain log file.

Each stage runs inside `Journal.stage(name)`, which times it, records how it ended, and turns
any exception into StageFailed(stage, reason) so the pipeline has one failure path; `running`
names the stage under way. The journal's own writes (step rows, the log file) are a record, not
state: one that fails (a locked or full database, a full disk) is logged and skipped, never
raised into the deploy, whose status writes go through the failure path instead. Listeners
(the CLI's progress printer, the live log stream) get every event as it happens.

Everything is redacted on write (`secrets`: the configuration's secrets), so no secret is at
rest in the step rows or the log file. A failed container's last log lines (an error's `logs`)
go to the failed step's output and the log file, never into the reason.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gatebot.errors import GatebotError, StageFailed, describe
from gatebot.redact import redact
from gatebot.store.db import utcnow
from gatebot.store.deployments import Deployments

log = logging.getLogger("gatebot.pipeline")

# Fault injection (tests/faults): a process started with this variable naming a stage kills
# itself with SIGKILL the moment that stage is recorded done, as a crash at that point would.
CRASH_AFTER_ENV = "GATEBOT_TEST_CRASH_AFTER"


@dataclass(frozen=True)
class JournalEvent:
    deployment_id: int
    kind: str  # start | done | failed | note | output
    stage: str
    message: str
    duration: float | None = None


Listener = Callable[[JournalEvent], None]


@dataclass
class StageRecord:
    """What a running stage reports back: a summary message and output lines."""

    journal: Journal
    name: str
    message: str = ""
    lines: list[str] = field(default_factory=list)

    def output(self, line: str) -> None:
        line = self.journal.redact(line)
        self.lines.append(line)
        self.journal.write_log(self.name, line)
        self.journal.emit(JournalEvent(self.journal.deployment_id, "output", self.name, line))


def last_stage(log_path: Path) -> str | None:
    """The stage of a log file's last line: for a deployment cut short, the one that was
    running (the log file is written as a stage starts, the step rows only as it ends)."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(log_path) - 8192))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        _, _, rest = line.partition(" [")
        stage, found, _ = rest.partition("] ")
        if found and stage:
            return stage
    return None


class Journal:
    def __init__(
        self,
        deployments: Deployments,
        deployment_id: int,
        log_path: Path,
        *,
        project: str,
        listeners: list[Listener] | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        self.secrets = tuple(secrets)
        self.deployments = deployments
        self.deployment_id = deployment_id
        self.log_path = log_path
        self.project = project
        self.listeners = list(listeners or [])
        self.running: str | None = None  # the stage under way
        log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    def emit(self, event: JournalEvent) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a listener must never break a deploy
                log.exception("journal listener failed")

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def write_log(self, stage: str, message: str) -> None:
        try:
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with open(fd, "a", encoding="utf-8") as fh:
                fh.write(f"{utcnow()} [{stage}] {self.redact(message)}\n")
        except OSError as exc:
            log.warning("could not write %s: %s", self.log_path, exc)

    async def _step(
        self, stage: str, message: str, *, output: str | None, duration: float | None
    ) -> None:
        """Add a step row; one that cannot be written is logged and skipped."""
        try:
            await self.deployments.add_step(
                self.deployment_id, stage, message, output=output, duration=duration
            )
        except Exception as exc:
            log.warning(
                "could not record step %s of deployment %s: %s: %s",
                stage,
                self.deployment_id,
                type(exc).__name__,
                exc,
                extra={"project": self.project, "deployment": self.deployment_id},
            )

    async def note(
        self, stage: str, message: str, *, output: str | None = None, duration: float | None = None
    ) -> None:
        message = self.redact(message)
        self.write_log(stage, message)
        await self._step(
            stage, message, output=self.redact(output) if output else None, duration=duration
        )
        log.info(
            "%s: %s",
            stage,
            message,
            extra={"project": self.project, "deployment": self.deployment_id, "stage": stage},
        )
        self.emit(JournalEvent(self.deployment_id, "note", stage, message, duration))

    @asynccontextmanager
    async def stage(self, name: str) -> AsyncIterator[StageRecord]:
        record = StageRecord(self, name)
        self.running = name
        self.write_log(name, "started")
        self.emit(JournalEvent(self.deployment_id, "start", name, ""))
        started = time.monotonic()
        try:
            yield record
        except StageFailed:
            raise
        except GatebotError as exc:
            logs = getattr(exc, "logs", None)
            logs = self.redact(logs) if isinstance(logs, str) and logs else None
            reason = self.redact(str(exc))
            await self._failed(record, reason, time.monotonic() - started, logs)
            raise StageFailed(name, reason, logs=logs) from exc
        except Exception as exc:
            log.exception("unexpected error in stage %s", name)
            reason = self.redact(describe(exc))
            await self._failed(record, reason, time.monotonic() - started)
            raise StageFailed(name, reason) from exc
        duration = time.monotonic() - started
        output = self.redact("\n".join(record.lines)) if record.lines else None
        message = self.redact(record.message or "done")
        self.write_log(name, message)
        self.running = None
        await self._step(name, message, output=output, duration=duration)
        self.emit(JournalEvent(self.deployment_id, "done", name, message, duration))
        if os.environ.get(CRASH_AFTER_ENV) == name:
            os.kill(os.getpid(), signal.SIGKILL)

    async def _failed(
        self, record: StageRecord, reason: str, duration: float, logs: str | None = None
    ) -> None:
        self.write_log(record.name, f"FAILED: {reason}")
        lines = list(record.lines)
        if logs:
            lines += ["the container's last log lines:", *logs.splitlines()]
            for line in logs.splitlines():
                self.write_log(record.name, f"| {line}")
        output = self.redact("\n".join(lines)) if lines else None
        await self._step(record.name, f"failed: {reason}", output=output, duration=duration)
        self.emit(JournalEvent(self.deployment_id, "failed", record.name, reason, duration))
