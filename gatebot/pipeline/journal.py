"""A deployment's record of what happened: step rows in SQLite plus a plain log file.

Each stage runs inside `Journal.stage(name)`, which times it, records how it ended, and turns
any exception into StageFailed(stage, reason) so the pipeline has one failure path. Listeners
(the CLI's progress printer, the live log stream) get every event as it happens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gatebot.errors import GatebotError, StageFailed
from gatebot.redact import redact_url
from gatebot.store.db import utcnow
from gatebot.store.deployments import Deployments

log = logging.getLogger("gatebot.pipeline")


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
        self.lines.append(line)
        self.journal.write_log(self.name, line)
        self.journal.emit(JournalEvent(self.journal.deployment_id, "output", self.name, line))


class Journal:
    def __init__(
        self,
        deployments: Deployments,
        deployment_id: int,
        log_path: Path,
        *,
        project: str,
        listeners: list[Listener] | None = None,
    ) -> None:
        self.deployments = deployments
        self.deployment_id = deployment_id
        self.log_path = log_path
        self.project = project
        self.listeners = list(listeners or [])
        log_path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: JournalEvent) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a listener must never break a deploy
                log.exception("journal listener failed")

    def write_log(self, stage: str, message: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(f"{utcnow()} [{stage}] {redact_url(message)}\n")

    async def note(
        self, stage: str, message: str, *, output: str | None = None, duration: float | None = None
    ) -> None:
        message = redact_url(message)
        self.write_log(stage, message)
        await self.deployments.add_step(
            self.deployment_id,
            stage,
            message,
            output=redact_url(output) if output else None,
            duration=duration,
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
        self.write_log(name, "started")
        self.emit(JournalEvent(self.deployment_id, "start", name, ""))
        started = time.monotonic()
        try:
            yield record
        except StageFailed:
            raise
        except GatebotError as exc:
            await self._failed(record, str(exc), time.monotonic() - started)
            raise StageFailed(name, redact_url(str(exc))) from exc
        except Exception as exc:
            log.exception("unexpected error in stage %s", name)
            reason = f"internal error: {type(exc).__name__}: {exc}"
            await self._failed(record, reason, time.monotonic() - started)
            raise StageFailed(name, redact_url(reason)) from exc
        duration = time.monotonic() - started
        output = "\n".join(record.lines) if record.lines else None
        message = redact_url(record.message or "done")
        self.write_log(name, message)
        await self.deployments.add_step(
            self.deployment_id, name, message, output=output, duration=duration
        )
        self.emit(JournalEvent(self.deployment_id, "done", name, message, duration))

    async def _failed(self, record: StageRecord, reason: str, duration: float) -> None:
        reason = redact_url(reason)
        self.write_log(record.name, f"FAILED: {reason}")
        output = "\n".join(record.lines) if record.lines else None
        await self.deployments.add_step(
            self.deployment_id, record.name, f"failed: {reason}", output=output, duration=duration
        )
        self.emit(JournalEvent(self.deployment_id, "failed", record.name, reason, duration))
