"""The watch window: after a switch, keep the old slot running for `watch_seconds` while the
new release is probed every `[projects.health] interval` and its answers through nginx are
counted; on a bad verdict flip the route back at once, record the revert, and remove the new
container. The old release serves again within one probe interval plus the flip.

`verdict` is the pure decision over what was seen (`Seen`); `parse_access_line` and
`count_answers` read the access log the project's snippet writes during the window (a format
of gatebot's own: `$msec $status $upstream_addr`); `watch_window` is the loop around real
probes, container inspections and the log, and the revert.

A crash during the window leaves the new release ACTIVE (it passed its health check and was
live): the next reconciliation keeps it, closes the window (the watch marker) and removes the
old slot's container as a stray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from gatebot.errors import GatebotError, StageFailed
from gatebot.model import Slot
from gatebot.pipeline.engine import Engine
from gatebot.pipeline.health import probe
from gatebot.pipeline.journal import Journal, StageRecord
from gatebot.runtime.base import Runtime
from gatebot.settings import HealthSettings, ProjectSettings
from gatebot.store.deployments import Deployment

log = logging.getLogger("gatebot.pipeline")

PROGRESS_EVERY = 5.0  # seconds between progress lines while all is well


@dataclass(frozen=True)
class Seen:
    """What the window has seen of the new release so far."""

    elapsed: float  # seconds since the switch
    probes: int = 0
    failed_in_a_row: int = 0
    requests: int = 0  # answers of the new slot through nginx
    errors: int = 0  # of them, 5xx
    gone: str | None = None  # "exited with code 3", "restarted 2 time(s)", "disappeared"


def verdict(project: ProjectSettings, seen: Seen) -> str | None:
    """Why the new release must be reverted, or None while it may stay."""
    after = f"{seen.elapsed:.0f} s after the switch"
    if seen.gone is not None:
        return f"the container {seen.gone} {after}"
    if seen.failed_in_a_row >= project.watch_failures:
        return f"{seen.failed_in_a_row} failed health checks {after}"
    if seen.requests >= project.min_requests and seen.requests > 0:
        rate = seen.errors / seen.requests
        if rate > project.max_error_rate:
            return f"5xx rate {rate * 100:.0f} % over {seen.requests} requests"
    return None


def parse_access_line(line: str) -> tuple[int, str] | None:
    """(status, upstream address) from one line of the watch log; None if it is not one."""
    parts = line.split(" ", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return int(parts[1]), parts[2].strip()


def count_answers(lines: list[str], port: int) -> tuple[int, int]:
    """(answers, 5xx answers) among `lines` whose last upstream was the slot's `port` (on
    127.0.0.1, or on a swarm node: each slot has a port of its own)."""
    answers = errors = 0
    for line in lines:
        parsed = parse_access_line(line)
        if parsed is None:
            continue
        status, upstream = parsed
        if upstream.rsplit(", ", 1)[-1].strip().rpartition(":")[2] != str(port):
            continue
        answers += 1
        if status >= 500:
            errors += 1
    return answers, errors


class LogFollower:
    """The complete lines appended to a file since the last read (or since it was opened,
    with `from_end`: what an earlier window left there, if it could not be truncated)."""

    def __init__(self, path: Path, *, from_end: bool = False) -> None:
        self.path = path
        self.offset = 0
        self.partial = ""
        if from_end:
            with contextlib.suppress(FileNotFoundError):
                self.offset = path.stat().st_size

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                fh.seek(self.offset)
                data = fh.read()
                self.offset = fh.tell()
        except FileNotFoundError:
            return []
        data = self.partial + data
        *lines, self.partial = data.split("\n")
        return lines


class Reverted(GatebotError):
    """The window's verdict: the new release was taken out of traffic."""


async def watch_window(
    engine: Engine,
    project: ProjectSettings,
    new: Deployment,
    old: Deployment | None,
    slot: Slot,
    journal: Journal,
) -> None:
    """Watch `new` (live on `slot`) for `watch_seconds`; `old` is still running. Returns when
    the release stays; after a revert raises StageFailed("watch", reason).

    Problems of the window itself (the Docker engine stops answering) end it early and the
    release stays: only a verdict on the release reverts it."""
    if project.watch_seconds <= 0:
        return
    reverted = False
    try:
        async with journal.stage("watch") as stage:
            reason = await observe(engine, project, slot, stage)
            if reason is not None:
                back = old.color if old is not None else None
                engine.proxy.set_route(project.name, back, note="reverted by the watch window")
                reverted = True
                log.warning(
                    "reverted v%s: %s",
                    new.version,
                    reason,
                    extra={"project": project.name, "deployment": new.id},
                )
                raise Reverted(reason)
    except StageFailed as failure:
        if not reverted:
            log.warning("the watch window ended early: %s; the release stays", failure.reason)
            return
        await settle_revert(engine, project, new, old, slot, journal, failure.reason)
        raise


async def settle_revert(
    engine: Engine,
    project: ProjectSettings,
    new: Deployment,
    old: Deployment | None,
    slot: Slot,
    journal: Journal,
    reason: str,
) -> None:
    """After the flip back: the database says so (new FAILED at `watch`, old ACTIVE again, in
    one transaction), requests in flight on the new slot finish, its container goes."""
    from gatebot.pipeline.deploy import undo  # deploy runs the window: imported when needed

    await engine.store.deployments.revert(
        new.id, old_id=old.id if old is not None else None, stage="watch", error=reason
    )
    if old is not None:
        await engine.journal(old, None).note(
            "watch", f"live again: v{new.version} was reverted ({reason})"
        )
        await journal.note("live", f"v{old.version} live again on {old.color} (port {old.port})")
    else:
        await journal.note("live", "nothing is live: nginx answers 503")
    await asyncio.sleep(project.drain_seconds)
    await undo(engine, project, new, old, slot, False, journal)


async def observe(
    engine: Engine, project: ProjectSettings, slot: Slot, stage: StageRecord
) -> str | None:
    """Probe and count until the window ends (None) or a verdict says revert (its reason)."""
    health = project.health
    loop = asyncio.get_running_loop()
    started = loop.time()
    runtime = engine.runtime_for(project.name)
    engine.proxy.set_watch(project.name, True)  # truncates the log when it may
    follower = LogFollower(engine.proxy.access_log(project.name), from_end=True)
    stage.output(
        f"watching {slot.container} for {project.watch_seconds:g}s, a probe every "
        f"{health.interval:g}s; the old slot keeps running"
    )
    seen = Seen(elapsed=0.0)
    reported = 0.0
    timeout = aiohttp.ClientTimeout(total=health.timeout)
    try:
        async with aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)
        ) as session:
            while True:
                next_probe = loop.time() + health.interval
                await asyncio.sleep(max(0.0, next_probe - loop.time()))
                gone = await _gone(runtime, slot.container)
                problem = None if gone else await _probe(runtime, session, slot, health)
                answers, errors = count_answers(follower.new_lines(), slot.port)
                seen = Seen(
                    elapsed=loop.time() - started,
                    probes=seen.probes + 1,
                    failed_in_a_row=seen.failed_in_a_row + 1 if problem else 0,
                    requests=seen.requests + answers,
                    errors=seen.errors + errors,
                    gone=gone,
                )
                reason = verdict(project, seen)
                if reason is not None:
                    stage.output(f"{seen.elapsed:5.1f}s  revert: {reason}")
                    return reason
                if problem:
                    stage.output(f"{seen.elapsed:5.1f}s  probe failed: {problem}")
                if seen.elapsed >= project.watch_seconds:
                    stage.message = (
                        f"quiet for {project.watch_seconds:g}s: {seen.probes} probes, "
                        f"{seen.requests} requests, {seen.errors} 5xx"
                    )
                    return None
                if seen.elapsed - reported >= PROGRESS_EVERY:
                    reported = seen.elapsed
                    stage.output(
                        f"{seen.elapsed:5.1f}s  {seen.probes} probes, {seen.requests} requests,"
                        f" {seen.errors} 5xx"
                    )
    finally:
        with contextlib.suppress(GatebotError):
            engine.proxy.set_watch(project.name, False)


async def _gone(runtime: Runtime, container: str) -> str | None:
    state = await runtime.state(container)
    if state is None:
        return "disappeared"
    if not state.running:
        return f"exited with code {state.exit_code}"
    if state.restart_count:
        return f"restarted {state.restart_count} time(s)"
    return None


async def _probe(
    runtime: Runtime, session: aiohttp.ClientSession, slot: Slot, health: HealthSettings
) -> str | None:
    """None when the release answered its health check well on every address it answers on
    (127.0.0.1; a swarm's nodes), else what was wrong."""
    endpoints = await runtime.endpoints(slot.container, slot.port)
    if not endpoints:
        return "it answers on no address"
    for endpoint in endpoints:
        problem, _ = await probe(session, endpoint.netloc, health)
        if problem is not None:
            return problem if len(endpoints) == 1 else f"{problem} on {endpoint.netloc}"
    return None
