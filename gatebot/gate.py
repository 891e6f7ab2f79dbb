"""Release gates, decided without I/O: has a commit's CI passed, failed, or is it still running?

A forge client turns what its API says about a commit (GitHub: check runs and commit statuses;
GitLab: commit statuses, one per CI job) into `Check`s; `judge` weighs them against the
project's `[projects.gate]`. The gate watcher (`gatebot.gatewatch`) does the asking and acts
on the verdict. Deciding from the API's current answer, never from a webhook's payload, means
a late or lost check delivery can never make the verdict stale: a webhook only says "ask now".

What passes: a check run that completed `success`, `neutral` or `skipped` (GitHub's branch
protection counts neutral and skipped as passing too); a status `success` (GitLab: `success`,
`skipped`, or a failed job allowed to fail). What fails: a check run `failure`, `cancelled`,
`timed_out`, `action_required` or `stale`; a status `failure` or `error` (GitLab: `failed`,
`canceled`). Everything else is still pending. Of several runs with one name (a re-run), the
newest wins. gatebot's own statuses (`gatebot/...`) never count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

Outcome: TypeAlias = Literal["pending", "passed", "failed"]
Required: TypeAlias = Sequence[str] | Literal["all"]

OWN_PREFIX = "gatebot/"  # gatebot's own status contexts

RUN_PASSED = frozenset({"success", "neutral", "skipped"})
RUN_FAILED = frozenset({"failure", "cancelled", "timed_out", "action_required", "stale"})
STATUS_PASSED = frozenset({"success"})
STATUS_FAILED = frozenset({"failure", "error"})


@dataclass(frozen=True, slots=True)
class Check:
    """One check on a commit, as the forge's API reported it."""

    name: str  # the check run's name or the status's context (GitLab: the job's name)
    outcome: Outcome
    detail: str  # the forge's word: "failure", "in_progress", "success", ...
    order: int = 0  # newer is larger (the forge's id): of two with one name, the newest wins
    source: Literal["run", "status"] = "status"  # a check run, or a commit status


def check_run(name: str, status: str, conclusion: str | None, order: int = 0) -> Check:
    """A GitHub check run: `status` queued/in_progress/completed/...; `conclusion` when done."""
    if status != "completed" or conclusion is None:
        return Check(name, "pending", status, order, "run")
    if conclusion in RUN_PASSED:
        return Check(name, "passed", conclusion, order, "run")
    if conclusion in RUN_FAILED:
        return Check(name, "failed", conclusion, order, "run")
    return Check(name, "pending", conclusion, order, "run")


def commit_status(name: str, state: str, order: int = 0) -> Check:
    """A GitHub commit status: success, failure, error or pending."""
    if state in STATUS_PASSED:
        return Check(name, "passed", state, order)
    if state in STATUS_FAILED:
        return Check(name, "failed", state, order)
    return Check(name, "pending", state, order)


def gitlab_status(name: str, status: str, allow_failure: bool, order: int = 0) -> Check:
    """A GitLab commit status (a CI job's or an external one's)."""
    if status in ("success", "skipped"):
        return Check(name, "passed", status, order)
    if status in ("failed", "canceled"):
        if allow_failure:
            return Check(name, "passed", f"{status}, allowed to fail", order)
        return Check(name, "failed", status, order)
    if status == "manual" and allow_failure:  # a manual job that nothing waits for
        return Check(name, "passed", "manual, not required", order)
    return Check(name, "pending", status, order)


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str  # for a person: "checks failed: lint (failure)", "waiting for checks: test"
    pending: list[str] = field(default_factory=list)  # names not done yet (or not seen)
    failed: list[str] = field(default_factory=list)  # "lint (failure)"
    passed: list[str] = field(default_factory=list)


def newest(checks: Iterable[Check]) -> dict[str, Check]:
    """The newest check of each name, gatebot's own left out. A name reported both as a check
    run and as a status counts as failed if either failed, else pending if either is."""
    rank = {"failed": 2, "pending": 1, "passed": 0}
    by_kind: dict[tuple[str, str], Check] = {}
    for check in checks:
        if check.name.startswith(OWN_PREFIX):
            continue
        key = (check.name, check.source)
        old = by_kind.get(key)
        if old is None or check.order >= old.order:
            by_kind[key] = check
    merged: dict[str, Check] = {}
    for (name, _), check in by_kind.items():
        old = merged.get(name)
        if old is None or rank[check.outcome] > rank[old.outcome]:
            merged[name] = check
    return merged


def judge(
    required: Required,
    checks: Iterable[Check],
    *,
    waited: float,
    settle: float,
    timeout: float,
) -> Verdict:
    """Whether a commit may be deployed, `waited` seconds after its job started waiting.

    Named checks: passed when each has passed; failed when one has failed; a name not seen yet
    is pending. "all": every check seen must pass, and none is trusted to be complete before
    `settle` seconds (checks appear one by one); with none seen by then, the commit passes.
    Still pending at `timeout`: failed.
    """
    seen = newest(checks)
    if required == "all":
        names = sorted(seen)
    else:
        names = list(dict.fromkeys(required))
    failed = [f"{n} ({seen[n].detail})" for n in names if n in seen and seen[n].outcome == "failed"]
    passed = [n for n in names if n in seen and seen[n].outcome == "passed"]
    pending = [n for n in names if n not in seen or seen[n].outcome == "pending"]
    if failed:
        return Verdict("failed", f"checks failed: {', '.join(failed)}", pending, failed, passed)
    settling = required == "all" and waited < settle
    if not pending and not settling:
        what = ", ".join(passed) if passed else "no checks reported"
        return Verdict("passed", f"checks passed: {what}", pending, failed, passed)
    if waited >= timeout:
        late = ", ".join(describe_pending(n, seen) for n in pending) or "none reported"
        return Verdict(
            "failed",
            f"checks not done within {timeout:g}s: {late}",
            pending,
            [f"{n} (timed out)" for n in pending],
            passed,
        )
    if pending:
        return Verdict(
            "pending", f"waiting for checks: {', '.join(pending)}", pending, failed, passed
        )
    return Verdict("pending", "waiting for checks to appear", pending, failed, passed)


def describe_pending(name: str, seen: dict[str, Check]) -> str:
    return f"{name} ({seen[name].detail if name in seen else 'not reported'})"


def gate_record(
    required: Required, verdict: Verdict | None, checked_at: str | None
) -> dict[str, Any]:
    """What a job stores (and the API shows) about its gate."""
    return {
        "required": "all" if required == "all" else list(required),
        "pending": verdict.pending if verdict else ([] if required == "all" else list(required)),
        "failed": verdict.failed if verdict else [],
        "passed": verdict.passed if verdict else [],
        "reason": verdict.reason if verdict else "not asked yet",
        "checkedAt": checked_at,
    }
