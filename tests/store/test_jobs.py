"""The jobs table on real SQLite: the group commit of deliveries, recovery after a crash."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gatebot.model import Color, JobKind, Origin, OriginKind, Slot
from gatebot.store import NewJob, Store
from gatebot.store.jobs import DuplicateDelivery


async def test_a_job_whose_release_went_live_before_the_crash_is_not_run_again(
    tmp_path: Path,
) -> None:
    store = await Store.open(tmp_path / "g.db")
    try:
        [job] = await store.jobs.enqueue(
            [
                NewJob(
                    project="shop", kind=JobKind.DEPLOY, origin=Origin(kind=OriginKind.CLI, who="t")
                )
            ]
        )
        assert await store.jobs.claim(job.id)
        deployment = await store.deployments.create("shop", "t")
        await store.jobs.set_deployment(job.id, deployment.id)
        await store.deployments.mark_deploying(
            deployment.id,
            commit_sha="a" * 40,
            commit_message="",
            image="i",
            slot=Slot(container="c", color=Color.BLUE, port=3100),
        )
        await store.deployments.activate(deployment.id, old_id=None)  # live; then the crash

        failed, requeued = await store.jobs.recover_interrupted(retries=3)

        assert (failed, requeued) == ([], [])
        assert (await store.jobs.require(job.id)).state == "succeeded"
    finally:
        await store.close()


async def test_an_interrupted_job_is_requeued_up_to_retries_times_then_says_so(
    tmp_path: Path,
) -> None:
    store = await Store.open(tmp_path / "g.db")
    try:
        [job] = await store.jobs.enqueue(
            [
                NewJob(
                    project="shop", kind=JobKind.DEPLOY, origin=Origin(kind=OriginKind.CLI, who="t")
                )
            ]
        )
        assert await store.jobs.claim(job.id)
        failed, [first] = await store.jobs.recover_interrupted(retries=2)
        assert [f.id for f in failed] == [job.id] and first.retry_of == job.id
        assert failed[0].error == "interrupted: gatebot stopped while this job ran"
        assert await store.jobs.claim(first.id)  # ... and gatebot dies again
        failed, [second] = await store.jobs.recover_interrupted(retries=2)
        assert [f.id for f in failed] == [first.id] and second.retry_of == first.id
        assert await store.jobs.claim(second.id)  # ... and again
        failed, requeued = await store.jobs.recover_interrupted(retries=2)
        assert [f.id for f in failed] == [second.id] and requeued == []
        assert failed[0].error == (
            "interrupted: gatebot stopped while this job ran; not queued again: interrupted 3"
            " times ([queue] interrupted_retries = 2)"
        )
    finally:
        await store.close()


async def test_deliveries_older_than_the_window_are_forgotten(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from gatebot.store.jobs import DuplicateDelivery

    store = await Store.open(tmp_path / "gatebot.db")
    try:
        delivery = ("github", "d-1", "push", "digest-1")
        await store.jobs.enqueue([], delivery=delivery)
        await store.jobs.enqueue([], delivery=("github", "d-2", "push", "digest-2"))
        week = timedelta(days=7)
        now = datetime.now(UTC)
        assert await store.deliveries.prune(week, now=now + timedelta(days=6)) == 0
        with pytest.raises(DuplicateDelivery):  # still within the window: a duplicate
            await store.jobs.enqueue([], delivery=delivery)
        assert await store.deliveries.prune(week, now=now + timedelta(days=8)) == 2
        assert await store.deliveries.count() == 0
        await store.jobs.enqueue([], delivery=delivery)  # forgotten: accepted again
    finally:
        await store.close()


def _push(n: int, project: str = "shop") -> tuple[list[NewJob], tuple[str, str, str, str]]:
    origin = Origin(kind=OriginKind.PUSH, who="alice", delivery_id=f"d{n}", forge="github")
    job = NewJob(project=project, kind=JobKind.DEPLOY, sha=f"{n:040x}", origin=origin)
    return [job], ("github", f"d{n}", "push", f"{n:064x}")


async def test_concurrent_enqueues_are_each_committed_before_they_are_answered(
    tmp_path: Path,
) -> None:
    """Many deliveries at once go through the group commit: each caller hears only once its
    rows are committed (a second connection sees them), each gets its own job, and a
    redelivery among them is refused alone."""
    store = await Store.open(tmp_path / "g.db")
    try:

        async def deliver(n: int) -> tuple[int, str | None]:
            jobs, delivery = _push(n % 150)  # the last 50 repeat the first 50
            try:
                [job] = await store.jobs.enqueue(jobs, delivery=delivery, supersede=True)
            except DuplicateDelivery:
                return n, None
            with sqlite3.connect(tmp_path / "g.db") as other:  # committed, not just written
                row = other.execute("SELECT sha FROM jobs WHERE id = ?", (job.id,)).fetchone()
            return job.id, row[0] if row else "missing"

        answers = await asyncio.gather(*(deliver(n) for n in range(200)))

        accepted = [(job_id, sha) for job_id, sha in answers if sha is not None]
        assert len(accepted) == 150 and "missing" not in {sha for _, sha in accepted}
        assert len({job_id for job_id, _ in accepted}) == 150
        assert sum(sha is None for _, sha in answers) == 50
        counts = await store.jobs.counts("shop")
        assert counts == {"queued": 1, "superseded": 149}  # each newer one superseded the last
    finally:
        await store.close()
