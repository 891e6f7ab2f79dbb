"""The watchdog: keeps every project's live release running while `serve` runs.

Start-up reconciliation repairs what a crash of gatebot left, and every job repairs its project
first; but a live container can also stop while gatebot runs and nothing deploys: dockerd
restarted (it stops the containers it finds and does not start them again, exit 143), someone's
`docker stop`, the OOM killer. So, once the queue runs, the watchdog reconciles
(pipeline/reconcile.py, each project under its lock):

- every project every `[server] reconcile_interval` seconds (0: no watchdog at all);
- a project at once when the engine reports that its ACTIVE release's container died;
- every project when the engine's event stream comes back after it broke (dockerd went away;
  it is followed again with backoff).

A project that is busy (a deploy holds its lock) or whose round failed (the engine not answering
yet) is tried again after RETRY_SECONDS. A live container Docker is restarting by itself
(its restart policy, after the app exited) is left to Docker for that round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from gatebot.aio import cancel_all
from gatebot.errors import GatebotError, UnrecordedReleases
from gatebot.pipeline.engine import Engine
from gatebot.pipeline.reconcile import ReconcileReport, reconcile
from gatebot.runtime.base import LABEL_DEPLOYMENT, LABEL_PROJECT, ContainerEvent

log = logging.getLogger("gatebot.watchdog")

RETRY_SECONDS = 5.0  # a busy project, or a round that failed, is tried again after this
# Pauses before following the engine's events again after the stream broke, the last repeated.
FOLLOW_RETRY_SECONDS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)


def changed(report: ReconcileReport) -> bool:
    """Whether a round did anything worth a log line."""
    return bool(
        report.interrupted
        or report.restarted
        or report.lost
        or report.removed_containers
        or report.nginx_changed
        or report.routes_changed
    )


class Watchdog:
    def __init__(self, engine: Engine, interval: float, *, ready: Callable[[], bool]) -> None:
        """`ready`: whether rounds may run now (the server's queue has started, so start-up
        reconciliation is done; before that, the start-up does it)."""
        self.engine = engine
        self.interval = interval
        self.ready = ready
        self.following = False  # subscribed to the engine's events right now
        self._everything = False
        self._wanted: set[str] = set()
        self._died: dict[str, set[str]] = {}  # project -> deployments whose container died
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if self.interval <= 0 or self._tasks:
            return
        self._tasks.append(asyncio.create_task(self._work(), name="gatebot-watchdog"))
        self._tasks.append(asyncio.create_task(self._tick(), name="gatebot-watchdog-timer"))
        if self.engine.events is not None:
            self._tasks.append(asyncio.create_task(self._follow(), name="gatebot-watchdog-events"))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_all(tasks)

    def want(self, projects: Iterable[str] | None = None) -> None:
        """Reconcile `projects` (None: all) at the next round, which starts now."""
        if projects is None:
            self._everything = True
        else:
            self._wanted.update(projects)
        self._wake.set()

    def saw(self, event: ContainerEvent) -> None:
        """An engine event: a container of a project died (the round checks it was live)."""
        project = event.labels.get(LABEL_PROJECT)
        deployment = event.labels.get(LABEL_DEPLOYMENT)
        if event.action == "die" and project and deployment:
            self._died.setdefault(project, set()).add(deployment)
            self._wake.set()

    # --- the rounds ---------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.want()

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            everything, wanted, died = self._everything, self._wanted, self._died
            self._everything, self._wanted, self._died = False, set(), {}
            if not self.ready():
                continue  # start-up reconciliation, still to come, covers it
            names = sorted(wanted | set(died))
            try:
                wanted |= await self._live_ones_died(died)
                names = [
                    p.name for p in self.engine.settings.projects if everything or p.name in wanted
                ]
                if names:
                    await self.round(names)
            except UnrecordedReleases as exc:  # serve logged it at start; /readyz names it
                log.debug("watchdog round skipped: %s", exc)  # the timer tries again
            except Exception as exc:  # noqa: BLE001 - never let the watchdog die
                log.warning("watchdog round failed (%s: %s)", type(exc).__name__, exc)
                if self.following or self.engine.events is None:
                    self._later(None if everything else names)
                # else: the engine is away; following it again brings a round for everything

    async def round(self, names: list[str]) -> ReconcileReport:
        """Reconcile `names`, but those whose live container Docker is restarting right now;
        busy ones are tried again later."""
        todo = [name for name in names if not await self._docker_restarting(name)]
        if not todo:
            return ReconcileReport()
        report = await reconcile(self.engine, todo)
        if changed(report):
            log.warning("watchdog: %s", report.summary())
        else:
            log.debug("watchdog: %s", report.summary())
        if report.skipped:
            self._later(report.skipped)
        return report

    async def _live_ones_died(self, died: dict[str, set[str]]) -> set[str]:
        projects = set()
        for project, deployments in died.items():
            active = await self.engine.store.deployments.active(project)
            if active is not None and str(active.id) in deployments:
                log.warning(
                    "the live container %s stopped; starting it again",
                    active.container,
                    extra={"project": project, "deployment": active.id},
                )
                projects.add(project)
        return projects

    async def _docker_restarting(self, project: str) -> bool:
        active = await self.engine.store.deployments.active(project)
        if active is None or not active.container:
            return False
        state = await self.engine.runtime_for(project).state(active.container)
        return state is not None and state.status == "restarting"

    def _later(self, projects: list[str] | None) -> None:
        asyncio.get_running_loop().call_later(RETRY_SECONDS, self.want, projects)

    # --- the engine's events --------------------------------------------------------------

    async def _follow(self) -> None:
        events = self.engine.events
        assert events is not None
        failures = 0
        while True:
            try:
                await events.follow(self.saw, self._opened)
            except GatebotError as exc:
                if self.following or failures == 0:
                    log.warning("not following Docker's events (%s); trying again", exc)
            except Exception as exc:  # noqa: BLE001 - keep following, whatever broke
                log.warning("Docker's event stream failed (%s: %s)", type(exc).__name__, exc)
            if self.following:
                failures = 0
            self.following = False
            pause = FOLLOW_RETRY_SECONDS[min(failures, len(FOLLOW_RETRY_SECONDS) - 1)]
            failures += 1
            await asyncio.sleep(pause)

    def _opened(self) -> None:
        """Subscribed (again): whatever happened while the stream was down is unknown, so
        every project gets a round."""
        if not self.following:
            log.info("following Docker's events; reconciling every project")
        self.following = True
        self.want()
