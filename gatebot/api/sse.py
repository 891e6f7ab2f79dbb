"""A deployment's log, whole or live: the text of `data_dir/logs/<id>.log`, or a stream of
server-sent events that follows it while the deployment runs and ends when it is done.

The stream polls the log file and the step rows (SQLite has nothing to wait on). Events:

    status  the deployment (JSON), at the start and whenever its status changes
    step    a new step row (JSON): the timeline of stages with their durations
    log     one line of the log file, secrets redacted
    end     {"status": ...}: nothing more will come; the stream closes

Each event carries an id (``<step id>.<log offset>``), so a client that reconnects with
Last-Event-ID resumes where it was instead of starting over. A line longer than CHUNK bytes
comes in pieces of at most CHUNK bytes, each but the last ending in CUT_MARK.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from gatebot.api.views import deployment_view, step_view, stream_finished
from gatebot.model import JobState
from gatebot.numbers import parse_count
from gatebot.pipeline.engine import Engine
from gatebot.redact import redact
from gatebot.store.deployments import Deployment

POLL_SECONDS = 0.2
KEEPALIVE_SECONDS = 15.0
CHUNK = 256 * 1024
CUT_MARK = " …(the line goes on)"


def read_new_lines(path: Path, offset: int) -> list[tuple[str, int]]:
    """The complete lines of `path` after byte `offset`, each with the offset just after it.

    A line longer than CHUNK comes as a piece of it marked with CUT_MARK (cut at a character
    boundary), and the offset moves past the piece: the rest follows at the next call.
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(CHUNK)
    except FileNotFoundError:
        return []
    found = []
    for raw in data.split(b"\n")[:-1]:  # the last piece is an unfinished line (or empty)
        offset += len(raw) + 1
        found.append((raw.decode("utf-8", "replace").rstrip("\r"), offset))
    if not found and len(data) == CHUNK:  # a full chunk and no newline: a very long line
        piece = data[: _character_boundary(data)]
        found.append((piece.decode("utf-8", "replace") + CUT_MARK, offset + len(piece)))
    return found


def _character_boundary(data: bytes) -> int:
    """Where to cut `data` so that no UTF-8 character is split (never at 0)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0xC0:  # the lead byte of a character ending beyond `data`?
            width = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) - back if width > back and back < len(data) else len(data)
        if byte & 0x80 == 0:  # ASCII: nothing is split
            return len(data)
    return len(data)


async def log_text(engine: Engine, d: Deployment, secrets: Sequence[str]) -> str:
    """The whole log, redacted; rebuilt from the step rows when the file is missing."""
    try:
        text = engine.log_path(d.id).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        steps = await engine.store.deployments.steps(d.id)
        text = "".join(f"{s.at} [{s.stage}] {s.message}\n" for s in steps)
    return redact(text, secrets)


def event(name: str, data: str, event_id: str | None = None) -> bytes:
    lines = [f"event: {name}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines += [f"data: {part}" for part in data.split("\n")]
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def parse_last_event_id(value: str | None) -> tuple[int, int]:
    """(step id, log offset) from a Last-Event-ID header; (0, 0) when absent or malformed."""
    step, _, offset = (value or "").partition(".")
    step_id, position = parse_count(step), parse_count(offset)
    if step_id is None or position is None:
        return 0, 0
    return step_id, position


async def is_finished(engine: Engine, d: Deployment) -> bool:
    """stream_finished, asking only what it needs: the lock is probed last and only when no
    job of this server runs (probing takes the lock for an instant, and must not race this
    server's own job for it)."""
    running = await engine.store.jobs.recent(project=d.project, state=JobState.RUNNING, limit=1)
    if running:
        return stream_finished(d, running[0], None, None)
    newest = await engine.store.deployments.history(d.project, limit=1)
    newest_id = newest[0].id if newest else None
    if newest_id != d.id:
        return stream_finished(d, None, None, newest_id)
    return stream_finished(d, None, engine.locks.holder(d.project), newest_id)


async def follow(
    request: web.Request,
    engine: Engine,
    deployment_id: int,
    secrets: Sequence[str],
    *,
    resume: str | None = None,
) -> web.StreamResponse:
    """Answer with the live event stream of one deployment (it must exist), starting after
    the Last-Event-ID the client sends, or after `resume` (the same form), or at the start."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx in front must not buffer the stream
        }
    )
    await response.prepare(request)
    if request.method == "HEAD":  # headers only: a body would corrupt a kept-alive connection
        await response.write_eof()
        return response
    deployments = engine.store.deployments
    path = engine.log_path(deployment_id)
    step_after, offset = parse_last_event_id(request.headers.get("Last-Event-ID") or resume)
    status: str | None = None
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    try:
        await response.write(b"retry: 2000\n\n")
        while True:
            d = await deployments.require(deployment_id)
            done = await is_finished(engine, d)  # decided first: what follows drains the rest
            out: list[bytes] = []
            if str(d.status) != status:
                status = str(d.status)
                out.append(event("status", _json(deployment_view(d, secrets))))
            for step in await deployments.steps(deployment_id, after_id=step_after):
                step_after = step.id
                out.append(event("step", _json(step_view(step, secrets)), f"{step_after}.{offset}"))
            while True:
                lines = read_new_lines(path, offset)
                for line, end in lines:
                    offset = end
                    out.append(event("log", redact(line, secrets), f"{step_after}.{offset}"))
                if not lines or not done:
                    break
            if done:
                out.append(event("end", _json({"status": str(d.status)})))
            if out:
                await response.write(b"".join(out))
                quiet_since = loop.time()
            elif loop.time() - quiet_since > KEEPALIVE_SECONDS:
                await response.write(b": keepalive\n\n")
                quiet_since = loop.time()
            if done:
                break
            await asyncio.sleep(POLL_SECONDS)
    except ConnectionResetError:  # the client went away
        return response
    await response.write_eof()
    return response


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))
