"""The live log stream: resuming with Last-Event-ID (what a reconnecting EventSource sends)
gives only newer events, and a log line longer than the read chunk neither stops the stream
nor the page (it comes in marked pieces, and everything after it follows)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gatebot.api import sse
from gatebot.api.keys import ENGINE
from gatebot.pipeline.engine import Engine
from gatebot.store.deployments import Deployment
from tests.support.server import SLOW_HEALTH, ClientFactory, auth, page_log, running_job
from tests.support.setup import Setup

Client = TestClient[Any, Any]
Event = tuple[str, str | None, Any]  # (event, id, data)


async def stream(
    client: Client, path: str, headers: dict[str, str], *, stop_after: int | None = None
) -> list[Event]:
    """The events of an event stream, to its end or (then disconnecting) to `stop_after`."""
    response = await client.get(path, headers={**headers, "Accept": "text/event-stream"})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events: list[Event] = []
    name, event_id, data = "", None, []
    buffer = b""
    async with asyncio.timeout(60):
        # Read raw chunks: aiohttp's line iterator stalls on a line over its buffer limit.
        async for chunk in response.content.iter_any():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.decode()
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif not line and name:
                    text = "\n".join(data)
                    events.append((name, event_id, text if name == "log" else json.loads(text)))
                    name, event_id, data = "", None, []
                    if stop_after is not None and len(events) >= stop_after:
                        response.close()
                        return events
    return events


async def finished_deployment(engine: Engine, project: str, notes: int) -> Deployment:
    """A deployment with `notes` steps and log lines, that nothing writes to any more."""
    d = await engine.store.deployments.create(project, "test")
    journal = engine.journal(d, None)
    for n in range(notes):
        await journal.note("build", f"note {n}")
    return await engine.store.deployments.fail(d.id, stage="build", error="test over")


async def test_last_event_id_resumes_after_that_event_only(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(queue={"paused": True})
    headers = await auth(client, "read")
    d = await finished_deployment(client.app[ENGINE], setup.name, 6)
    path = f"/api/v1/deployments/{d.id}/logs"
    whole = await stream(client, path, headers)
    assert [name for name, _, _ in whole] == ["status"] + ["step"] * 6 + ["log"] * 6 + ["end"]
    assert len({event_id for _, event_id, _ in whole[1:-1]}) == 12  # every one has its own id

    for k in (3, 8, 12):  # after a step, after a log line, after the last line
        last_id = whole[k][1]
        assert last_id is not None
        resumed = await stream(client, path, {**headers, "Last-Event-ID": last_id})
        assert resumed[0] == whole[0] and resumed[-1] == ("end", None, {"status": "FAILED"})
        assert resumed[1:-1] == whole[k + 1 : -1], (k, last_id)

    # The page's stream takes the header over its ?after= (an EventSource reconnecting keeps
    # the URL it started with and adds Last-Event-ID).
    after_log_line = whole[8][1]
    assert after_log_line is not None
    page_stream = await stream(
        client,
        f"/deployments/{d.id}/events?after=0.0",
        {**headers, "Last-Event-ID": after_log_line},
    )
    assert page_stream[1:-1] == whole[9:-1]
    # A malformed header starts over, odd numbers included (they once ended the stream).
    for odd in ("garbage", "0.99999999999999999999", "².0", "0." + "9" * 5000):
        again = await stream(client, path, {**headers, "Last-Event-ID": odd})
        assert again == whole, odd
    for query in ("%C2%B2.0", "0.99999999999999999999"):
        page_stream = await stream(client, f"/deployments/{d.id}/events?after={query}", headers)
        assert page_stream == whole, query


async def test_a_client_reconnecting_mid_deploy_misses_nothing_and_gets_nothing_twice(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(health=SLOW_HEALTH)
    headers = await auth(client, "read")
    setup.repo.commit("v1")
    response = await client.post(
        "/api/v1/deploy", json={"projectId": setup.name}, headers=await auth(client, "deploy")
    )
    assert response.status == 202
    job = await running_job(client, setup.name)
    path = f"/api/v1/deployments/{job.deployment_id}/logs"

    first = await stream(client, path, headers, stop_after=5)  # then the connection drops
    assert len(first) == 5 and first[-1][0] != "end"
    last_id = next(event_id for _, event_id, _ in reversed(first) if event_id)
    rest = await stream(client, path, {**headers, "Last-Event-ID": last_id})
    assert rest[-1] == ("end", None, {"status": "ACTIVE"})

    events = first + rest
    steps = [data["id"] for name, _, data in events if name == "step"]
    assert steps == sorted(set(steps)), "no step twice, in order"
    all_steps = await client.app[ENGINE].store.deployments.steps(job.deployment_id)
    assert steps == [s.id for s in all_steps]
    logs = [data for name, _, data in events if name == "log"]
    whole = await (await client.get(path, headers=headers)).text()
    assert logs == whole.splitlines(), "every log line exactly once, in order"


async def test_head_on_the_stream_answers_headers_only(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(queue={"paused": True})
    headers = {**await auth(client, "read"), "Accept": "text/event-stream"}
    d = await finished_deployment(client.app[ENGINE], setup.name, 2)
    for path in (f"/api/v1/deployments/{d.id}/logs", f"/deployments/{d.id}/events"):
        head = await client.head(path, headers=headers)
        assert head.status == 200 and head.headers["Content-Type"].startswith("text/event-stream")
        assert await head.read() == b""
        # The connection is kept alive and the next answer on it is intact.
        assert (await client.get("/healthz")).status == 200


# --- lines longer than the read chunk ----------------------------------------------------------


def all_lines(path: Path) -> list[tuple[str, int]]:
    """Everything read_new_lines gives from the start, call after call (bounded)."""
    found: list[tuple[str, int]] = []
    offset = 0
    for _ in range(100):
        lines = sse.read_new_lines(path, offset)
        if not lines:
            return found
        found += lines
        offset = lines[-1][1]
    raise AssertionError("read_new_lines never ran dry")


def test_a_line_longer_than_the_chunk_comes_in_marked_pieces(tmp_path: Path) -> None:
    path = tmp_path / "1.log"
    long = "x" * (sse.CHUNK + 100)
    path.write_text(f"before\n{long}\nafter\n")
    lines = all_lines(path)
    assert [line for line, _ in lines] == [
        "before",
        "x" * sse.CHUNK + sse.CUT_MARK,
        "x" * 100,
        "after",
    ]
    assert lines[-1][1] == path.stat().st_size  # the offset went all the way


def test_a_long_line_is_cut_between_characters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "CHUNK", 10)
    path = tmp_path / "1.log"
    path.write_text("aaaaaaaaaé€😀bbbbbbbbbbbb\nend\n", encoding="utf-8")  # é crosses byte 10
    lines = [line for line, _ in all_lines(path)]
    assert lines[-1] == "end"
    assert "".join(line.removesuffix(sse.CUT_MARK) for line in lines[:-1]) == (
        "aaaaaaaaaé€😀bbbbbbbbbbbb"
    )
    assert all("\ufffd" not in line for line in lines), lines


async def test_the_stream_and_the_page_go_past_a_line_longer_than_the_chunk(
    start_server: ClientFactory, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A smaller chunk keeps the test quick: redacting a very long line costs time of its own.
    monkeypatch.setattr(sse, "CHUNK", 4096)
    client = await start_server(queue={"paused": True})
    headers = await auth(client, "read")
    engine = client.app[ENGINE]
    d = await finished_deployment(engine, setup.name, 1)
    with open(engine.log_path(d.id), "a", encoding="utf-8") as log:
        log.write("y" * (2 * sse.CHUNK + 10) + "\n")  # build output with no newline in it
        log.write("the line after\n")

    events = await stream(client, f"/api/v1/deployments/{d.id}/logs", headers)
    logs = [data for name, _, data in events if name == "log"]
    assert events[-1][0] == "end"
    assert logs[-1] == "the line after"
    assert "".join(line.removesuffix(sse.CUT_MARK) for line in logs[1:-1]) == "y" * (
        2 * sse.CHUNK + 10
    )
    ids = [event_id for name, event_id, _ in events if name == "log"]
    offsets = [int(str(i).split(".")[1]) for i in ids]
    assert offsets == sorted(offsets) and offsets[-1] == engine.log_path(d.id).stat().st_size

    page = await (await client.get(f"/deployments/{d.id}", headers=headers)).text()
    assert page_log(page).endswith("the line after\n")
