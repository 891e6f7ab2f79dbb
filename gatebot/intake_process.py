"""Intake processes: webhooks answered by more processes than `serve`'s one, for more deliveries
per second than one core answers ([server] intake_listen and intake_processes).

`gatebot serve` starts `intake_processes` of them (`gatebot intake`, told serve's pid in
GATEBOT_SERVE_PID) and starts again one that ends. Each listens on intake_listen with
SO_REUSEPORT, so the kernel spreads connections over them, and answers a delivery exactly as
serve's own handlers do (gatebot/api/webhooks.py): verified, de-duplicated and committed to the
same SQLite database before the answer (deduplication and superseding are SQLite constraints
and statements, so they hold across processes). Then it nudges serve with SIGUSR1, and serve
announces the new jobs (commit statuses, gates: JobQueue.listen_to_others) and runs them: only
serve runs the queue, the gate watcher, the poller and the watchdog. A comment command is
authorized and answered by the intake process that received it. Each dies with serve
(PR_SET_PDEATHSIG). Their webhook counters are their own: /metrics is serve's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from gatebot import wiring
from gatebot.api import webhooks
from gatebot.api.errors import json_answer
from gatebot.api.keys import FEEDBACK, METRICS, RECORDER, Recorder
from gatebot.feedback import Feedback
from gatebot.metrics import counted
from gatebot.settings import Settings
from gatebot.store import Store
from gatebot.store.jobs import Job, NewJob

if TYPE_CHECKING:
    from gatebot.forges.base import ForgeClient

ForgesOpener = Callable[[Settings], AbstractAsyncContextManager["dict[str, ForgeClient]"]]
log = logging.getLogger("gatebot.intake")
SERVE_PID_ENV = "GATEBOT_SERVE_PID"
NUDGE = signal.SIGUSR1  # "jobs were queued, or checks changed: look at the database"
NUDGE_INTERVAL_SECONDS = 0.025  # at most one nudge per interval; serve batches for 50 ms anyway
RESTART_PAUSE_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)  # before starting an ended process again
STEADY_SECONDS = 30.0  # a process that ran this long starts again after the shortest pause
PR_SET_PDEATHSIG = 1


def create_intake_app(
    settings: Settings, serve_pid: int, *, open_forges: ForgesOpener = wiring.open_forges
) -> web.Application:
    """The webhook routes alone, over the database and the forge clients."""
    app = webhooks.webhook_app(settings)
    metrics = app[METRICS]

    async def healthz(request: web.Request) -> web.Response:
        return json_answer({"ok": True, "intake": os.getpid()})

    app.router.add_get("/healthz", healthz)

    def signal_serve() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(serve_pid, NUDGE)

    nudge = Throttle(signal_serve, NUDGE_INTERVAL_SECONDS)

    async def context(app: web.Application) -> AsyncIterator[None]:
        store = await Store.open(settings.server.data_dir / "gatebot.db")
        try:
            async with open_forges(settings) as forges:
                feedback = Feedback.over(settings, counted(forges, metrics))

                async def submit(
                    jobs: list[NewJob],
                    *,
                    delivery: tuple[str, str, str, str | None] | None = None,
                    supersede: bool = False,
                    forward_only: bool = False,
                ) -> list[Job]:
                    created = await store.jobs.enqueue(
                        jobs, delivery=delivery, supersede=supersede, forward_only=forward_only
                    )
                    if created:
                        nudge()
                    return created

                app[FEEDBACK] = feedback
                app[RECORDER] = Recorder(store.deployments, submit, nudge)
                yield
                await feedback.close()
        finally:
            await store.close()

    app.cleanup_ctx.append(context)
    return app


class Throttle:
    """Calls `send` at once, then at most once per `interval`: a call meanwhile is not lost
    but sent when the interval ends. A signal per delivery cost a tenth of an intake process's
    time, and serve's as much to take them; serve reads every job since its last look anyway."""

    def __init__(self, send: Callable[[], None], interval: float) -> None:
        self.send = send
        self.interval = interval
        self._quiet: asyncio.TimerHandle | None = None  # set: sent less than `interval` ago
        self._again = False

    def __call__(self) -> None:
        if self._quiet is not None:
            self._again = True
            return
        self.send()
        self._quiet = asyncio.get_running_loop().call_later(self.interval, self._end)

    def _end(self) -> None:
        self._quiet = None
        if self._again:
            self._again = False
            self()


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the kernel kills this process when serve, the parent, ends (a kill -9
    too), so none outlives it and answers deliveries nothing would run. SIGKILL, not a
    graceful stop: a delivery cut off was not answered, and its commit is all or nothing."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("could not ask to die with serve: errno %d", ctypes.get_errno())


def run_intake(settings: Settings) -> int:
    """`gatebot intake`: answer webhooks on intake_listen until SIGTERM."""
    import uvloop

    address = settings.server.intake_address
    serve_pid = int(os.environ.get(SERVE_PID_ENV) or 0)
    if address is None or serve_pid <= 0:
        log.error("gatebot intake is started by gatebot serve, with [server] intake_listen set")
        return 2
    die_with_parent()
    if os.getppid() != serve_pid:  # serve ended before the line above
        return 0
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    loop = uvloop.new_event_loop()

    def stop() -> None:
        raise web.GracefulExit()

    loop.add_signal_handler(signal.SIGTERM, stop)
    loop.add_signal_handler(signal.SIGINT, stop)
    web.run_app(
        create_intake_app(settings, serve_pid),
        host=address[0],
        port=address[1],
        reuse_port=True,
        print=None,
        access_log=None,
        shutdown_timeout=5,
        handle_signals=False,
        loop=loop,
    )
    return 0


def intake_command(config: Path) -> list[str]:
    """How serve starts an intake process: this Python, this gatebot, the same config file."""
    return [sys.executable, "-m", "gatebot", "-c", str(config.resolve()), "intake"]


class IntakeProcesses:
    """serve's side: start `count` intake processes, start again one that ended (after a
    pause that grows while it keeps ending at once), stop them with serve."""

    def __init__(self, command: Sequence[str], count: int) -> None:
        self.command = list(command)
        self.count = count
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self._keepers: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self) -> None:
        for index in range(self.count):
            self._keepers.append(
                asyncio.create_task(self._keep(index), name=f"gatebot-intake-{index}")
            )

    async def _keep(self, index: int) -> None:
        failures = 0
        env = {**os.environ, SERVE_PID_ENV: str(os.getpid())}
        while not self._stopping:
            started = time.monotonic()
            try:
                # A session of its own: a Ctrl-C to serve's terminal reaches serve alone,
                # which stops them in order (stop()).
                process = await asyncio.create_subprocess_exec(
                    *self.command,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as exc:
                log.error("cannot start intake process %d: %s", index, exc)
            else:
                self.processes[index] = process
                log.info("intake process %d started (pid %d)", index, process.pid)
                try:
                    if self._stopping:  # stop() began while this one was starting
                        process.terminate()
                    code = await process.wait()
                finally:
                    if process.returncode is None:  # cancelled while it runs: never an orphan
                        process.kill()
                        await asyncio.shield(process.wait())
                if self._stopping:
                    return
                log.warning(
                    "intake process %d (pid %d) ended with %s; starting it again",
                    index,
                    process.pid,
                    f"signal {-code}" if code < 0 else f"exit code {code}",
                )
            failures = 0 if time.monotonic() - started > STEADY_SECONDS else failures + 1
            last = len(RESTART_PAUSE_SECONDS) - 1
            await asyncio.sleep(RESTART_PAUSE_SECONDS[min(failures, last)])

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to each (a delivery being answered finishes), SIGKILL after `timeout`."""
        self._stopping = True
        running = [p for p in self.processes.values() if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for keeper in self._keepers:
            keeper.cancel()
        for keeper in self._keepers:
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
