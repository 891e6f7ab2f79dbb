"""Health checks: is the new container answering, quickly, and still alive?

`judge` is the pure decision on one answer; `wait_healthy` is the loop around real HTTP calls
and container inspections, which needs `healthy_threshold` passing answers in a row (one 2xx
from an app about to crash is not enough), and `still_healthy` the last check right before a
switch. Its caller may hand it an `on_probe` listener to hear each answer's
latency (the engine's, which the server's metrics give it), so the pipeline itself knows
nothing about metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from gatebot.errors import HealthCheckFailed
from gatebot.runtime.base import Runtime
from gatebot.settings import HealthSettings

ProbeListener = Callable[[float, bool], None]  # (latency in seconds, healthy?)


def _heard(listener: ProbeListener | None, latency_ms: float, healthy: bool) -> None:
    if listener is not None:
        try:
            listener(latency_ms / 1000, healthy)
        except Exception:  # noqa: BLE001, S110 - a listener must never fail a health check
            pass


@dataclass(frozen=True)
class HealthResult:
    attempts: int
    latency_ms: float


def judge(status: int, latency_ms: float, max_latency_ms: int) -> str | None:
    """None when the answer is healthy, else why not."""
    if not 200 <= status < 300:
        return f"answered HTTP {status}"
    if latency_ms > max_latency_ms:
        return f"answered in {latency_ms:.0f} ms, over the {max_latency_ms} ms limit"
    return None


async def wait_healthy(
    runtime: Runtime,
    container: str,
    port: int,
    health: HealthSettings,
    *,
    on_probe: ProbeListener | None = None,
) -> HealthResult:
    """Poll until `healthy_threshold` healthy answers in a row (a failing one starts the count
    again) from every address the slot answers on (one host: 127.0.0.1; a swarm: each node
    running one of its tasks), or raise HealthCheckFailed with the last reason once `retries`
    attempts are spent.

    A container that has exited or restarted fails at once; its last log lines travel in the
    error's `logs`, apart from the reason. `on_probe` hears each answer's latency and verdict.
    """
    if health.start_period:
        await asyncio.sleep(health.start_period)
    reason = "no answer yet"
    passes: dict[str, int] = {}  # healthy answers in a row, by address
    slowest = 0.0
    timeout = aiohttp.ClientTimeout(total=health.timeout)
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        for attempt in range(1, health.retries + 1):
            await _require_alive(runtime, container)
            endpoints = await runtime.endpoints(container, port)
            if not endpoints:
                reason = f"{container} answers on no address yet"
            for endpoint in endpoints:
                where = endpoint.netloc
                if passes.get(where, 0) >= health.healthy_threshold:
                    continue
                problem, latency_ms = await probe(session, where, health, on_probe)
                if problem is None:
                    passes[where] = passes.get(where, 0) + 1
                    slowest = max(slowest, latency_ms)
                else:
                    passes[where] = 0
                    reason = problem if len(endpoints) == 1 else f"{problem} on {where}"
            if endpoints and all(
                passes.get(e.netloc, 0) >= health.healthy_threshold for e in endpoints
            ):
                return HealthResult(attempt, slowest)
            if attempt < health.retries:
                await asyncio.sleep(health.interval)
    await _require_alive(runtime, container)
    best = max(passes.values(), default=0)
    if best:
        reason = f"{reason}; then only {best} of {health.healthy_threshold} passes in a row"
    raise HealthCheckFailed(f"unhealthy after {health.retries} attempts: {reason}")


async def still_healthy(
    runtime: Runtime,
    container: str,
    port: int,
    health: HealthSettings,
    *,
    on_probe: ProbeListener | None = None,
) -> None:
    """The last check right before a switch: the container still runs, never restarted, and
    one more probe passes. Raises HealthCheckFailed saying so."""
    timeout = aiohttp.ClientTimeout(total=health.timeout)
    connector = aiohttp.TCPConnector(force_close=True)
    try:
        await _require_alive(runtime, container)
        endpoints = await runtime.endpoints(container, port)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            for endpoint in endpoints:
                problem, _ = await probe(session, endpoint.netloc, health, on_probe)
                if problem is not None:
                    where = "" if len(endpoints) == 1 else f" on {endpoint.netloc}"
                    raise HealthCheckFailed(f"last check before the switch: {problem}{where}")
    except HealthCheckFailed as exc:
        if str(exc).startswith("last check before the switch"):
            raise
        raise HealthCheckFailed(f"last check before the switch: {exc}", logs=exc.logs) from None
    if not endpoints:
        raise HealthCheckFailed(f"last check before the switch: {container} answers nowhere")


async def probe(
    session: aiohttp.ClientSession,
    where: str,
    health: HealthSettings,
    on_probe: ProbeListener | None = None,
) -> tuple[str | None, float]:
    """One GET of the health path at `where` (host:port): (None, latency) when healthy, else
    (what was wrong, latency)."""
    started = time.monotonic()
    try:
        async with session.get(f"http://{where}{health.path}", allow_redirects=False) as response:
            await response.read()
            latency_ms = (time.monotonic() - started) * 1000
            verdict = judge(response.status, latency_ms, health.max_latency_ms)
            _heard(on_probe, latency_ms, verdict is None)
            return (None if verdict is None else f"GET {health.path} {verdict}"), latency_ms
    except TimeoutError:
        problem = f"GET {health.path} timed out after {health.timeout:g}s"
    except aiohttp.ClientError as exc:
        problem = f"GET {health.path} failed: {type(exc).__name__}"
    return problem, (time.monotonic() - started) * 1000


async def _require_alive(runtime: Runtime, container: str) -> None:
    state = await runtime.state(container)
    if state is None:
        raise HealthCheckFailed(f"container {container} disappeared")
    if state.running and state.restart_count == 0:
        return
    logs = await runtime.logs(container, tail=20)
    what = (
        f"restarted {state.restart_count} time(s)"
        if state.restart_count
        else f"exited with code {state.exit_code}"
    )
    if not logs.strip():
        raise HealthCheckFailed(f"container {container} {what}; it wrote no log lines")
    raise HealthCheckFailed(f"container {container} {what}", logs=logs)
