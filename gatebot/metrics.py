"""Prometheus metrics for one gatebot server: the registry and what feeds it, without HTTP.

Each app gets its own `CollectorRegistry`, so several servers in one process (the tests) never
share a counter. The numbers come from where things happen without the pipeline importing
anything from here: a JobObserver for jobs and durations, listeners handed to the engine for
nginx reloads and health-probe latencies (`engine_listeners`), a counting wrapper around each
forge client, and the webhook outcome each delivery's handler records. Job counts by state are
read from SQLite when /metrics is scraped, so they are right after a restart. The route and the
webhook middleware are in gatebot/api/metrics.py.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from gatebot.model import JobKind, JobState

if TYPE_CHECKING:
    from gatebot.forges.base import CommitRef, DeployState, ForgeClient, RepoRef, StatusTarget
    from gatebot.gate import Check
    from gatebot.pipeline.engine import EngineListeners
    from gatebot.pipeline.journal import JournalEvent
    from gatebot.store.deployments import Deployment
    from gatebot.store.jobs import Job

log = logging.getLogger("gatebot.metrics")
T = TypeVar("T")

FORGES = ("github", "gitlab")
DURATION_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# Event names a label may take; anything else is "other", so an unsigned request cannot
# create a new time series per made-up header value.
KNOWN_EVENTS = frozenset(
    {
        "push",
        "ping",
        "commit_comment",
        "issue_comment",
        "pull_request",
        "create",
        "delete",
        "release",
        "status",
        "check_run",
        "check_suite",
        "workflow_run",
        "push_hook",
        "tag_push_hook",
        "note_hook",
        "merge_request_hook",
        "pipeline_hook",
        "job_hook",
        "issue_hook",
        "release_hook",
        "system_hook",
    }
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.webhooks = Counter(
            "gatebot_webhooks_received",
            "Webhook deliveries received, by forge, event and outcome",
            ["forge", "event", "outcome"],
            registry=r,
        )
        self.jobs = Gauge(
            "gatebot_jobs", "Jobs by state (from the database)", ["state"], registry=r
        )
        self.queue_depth = Gauge("gatebot_queue_depth", "Jobs waiting to run", registry=r)
        self.jobs_finished = Counter(
            "gatebot_jobs_finished",
            "Jobs that ended in this process, by kind and final state",
            ["kind", "state"],
            registry=r,
        )
        self.deploy_seconds = Histogram(
            "gatebot_deploy_duration_seconds",
            "How long a deploy job ran, by outcome (succeeded, failed)",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.rollback_seconds = Histogram(
            "gatebot_rollback_duration_seconds",
            "How long a rollback job ran, by outcome (succeeded, failed)",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.health_latency = Histogram(
            "gatebot_health_check_latency_seconds",
            "Latency of each answered health probe, by outcome (healthy, unhealthy)",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.nginx_reloads = Counter(
            "gatebot_nginx_reloads",
            "nginx configuration changes, by outcome (ok, rejected by the test, reload failed)",
            ["outcome"],
            registry=r,
        )
        self.forge_calls = Counter(
            "gatebot_forge_api_calls",
            "Calls to a forge's API (commit statuses, comments, permissions), by outcome",
            ["forge", "outcome"],
            registry=r,
        )
        for state in JobState:
            self.jobs.labels(state)
        for outcome in ("succeeded", "failed"):
            self.deploy_seconds.labels(outcome)
            self.rollback_seconds.labels(outcome)
        for outcome in ("ok", "rejected", "failed"):
            self.nginx_reloads.labels(outcome)
        for forge in FORGES:
            for outcome in ("ok", "error"):
                self.forge_calls.labels(forge, outcome)

    # --- listeners handed to the parts that do the work ------------------------------------

    def nginx_reload(self, outcome: str) -> None:
        self.nginx_reloads.labels(outcome).inc()

    def health_probe(self, latency: float, healthy: bool) -> None:
        self.health_latency.labels("healthy" if healthy else "unhealthy").observe(latency)

    def forge_call(self, forge: str, ok: bool) -> None:
        """One call to `forge`'s API ended (ok: it did what it was asked)."""
        self.forge_calls.labels(forge, "ok" if ok else "error").inc()

    def webhook(self, forge: str, event: str, outcome: str) -> None:
        self.webhooks.labels(forge, event, outcome).inc()

    def engine_listeners(self) -> EngineListeners:
        """The listeners to build the engine with: nginx reloads and health probes."""
        from gatebot.pipeline.engine import EngineListeners

        return EngineListeners(nginx_reload=self.nginx_reload, health_probe=self.health_probe)

    # --- scraping ---------------------------------------------------------------------------

    def set_job_counts(self, counts: Mapping[str, int]) -> None:
        """Jobs by state, as the database counts them."""
        for state in JobState:
            self.jobs.labels(state).set(counts.get(state, 0))
        self.queue_depth.set(counts.get(JobState.QUEUED, 0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsObserver:
    """A JobObserver: counts finished jobs and times deploys and rollbacks."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._started: dict[int, float] = {}

    async def job_queued(self, job: Job) -> None:
        return None

    async def job_superseded(self, job: Job, by: Job) -> None:
        self.metrics.jobs_finished.labels(job.kind, JobState.SUPERSEDED).inc()

    async def job_started(self, job: Job) -> None:
        self._started[job.id] = time.monotonic()

    def job_event(self, job: Job, event: JournalEvent) -> None:
        return None

    async def job_finished(self, job: Job, deployment: Deployment | None) -> None:
        started = self._started.pop(job.id, None)
        self.metrics.jobs_finished.labels(job.kind, job.state).inc()
        if started is None:
            return
        rollback = job.kind is JobKind.ROLLBACK
        histogram = self.metrics.rollback_seconds if rollback else self.metrics.deploy_seconds
        histogram.labels(job.state).observe(time.monotonic() - started)


class CountedForge:
    """A ForgeClient that counts each call into `gatebot_forge_api_calls_total` (one call is
    one operation: a status set, a comment posted, a permission asked, retries included)."""

    def __init__(self, client: ForgeClient, forge: str, metrics: Metrics) -> None:
        self.client = client
        self.forge = forge
        self.metrics = metrics

    async def _count(self, call: Awaitable[T]) -> T:
        try:
            result = await call
        except Exception:
            self.metrics.forge_call(self.forge, ok=False)
            raise
        self.metrics.forge_call(self.forge, ok=True)
        return result

    async def set_status(
        self, target: StatusTarget, state: DeployState, description: str, target_url: str | None
    ) -> None:
        await self._count(self.client.set_status(target, state, description, target_url))

    async def comment(self, target: CommitRef, body: str) -> None:
        await self._count(self.client.comment(target, body))

    async def may_deploy(self, repo: RepoRef, username: str, user_id: int | None) -> bool:
        return await self._count(self.client.may_deploy(repo, username, user_id))

    async def commit_checks(self, commit: CommitRef) -> list[Check]:
        return await self._count(self.client.commit_checks(commit))

    async def close(self) -> None:
        await self.client.close()


def counted(forges: dict[str, ForgeClient], metrics: Metrics) -> dict[str, ForgeClient]:
    return {name: CountedForge(client, name, metrics) for name, client in forges.items()}


def event_label(forge: str, raw: str | None) -> str:
    """A forge's event header as a bounded label: ``"Push Hook"`` -> ``"push_hook"``."""
    if not raw:
        return "none"
    name = re.sub(r"[^a-z0-9]+", "_", raw.strip().lower()).strip("_")
    return name if name in KNOWN_EVENTS else "other"
