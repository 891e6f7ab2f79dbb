"""The retry rules for forge calls: which failures are transient, how long to wait, and when
to stop."""

from __future__ import annotations

from collections.abc import Mapping
from email.utils import formatdate

import aiohttp
import pytest

from gatebot.forges.backoff import (
    MAX_ATTEMPTS,
    MAX_DELAY,
    Outcome,
    exponential_delay,
    is_transient,
    retry_delay,
    server_delay,
)

NOW = 1_750_000_000.0


def delay(
    outcome: Outcome,
    headers: Mapping[str, str] | None = None,
    *,
    attempt: int = 1,
    elapsed: float = 0.0,
    budget: float = 120.0,
) -> float | None:
    return retry_delay(
        outcome, headers or {}, attempt=attempt, elapsed=elapsed, budget=budget, now=NOW
    )


def test_exponential_delays_double_up_to_the_cap() -> None:
    assert [exponential_delay(n) for n in range(1, 10)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
        30.0,
    ]
    assert exponential_delay(1000) == MAX_DELAY


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_server_errors_and_429_are_transient(status: int) -> None:
    assert is_transient(status, {})
    assert delay(status, attempt=3) == 2.0


@pytest.mark.parametrize("status", [200, 201, 204, 301, 400, 401, 404, 409, 422])
def test_success_and_client_errors_are_not_retried(status: int) -> None:
    assert not is_transient(status, {})
    assert delay(status) is None


def test_403_is_retried_only_when_rate_limited() -> None:
    assert delay(403) is None
    assert delay(403, {"x-ratelimit-remaining": "12", "x-ratelimit-reset": str(NOW + 5)}) is None
    assert delay(403, {"Retry-After": "60"}) == 60.0
    reset = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 42)}
    assert delay(403, reset) == 42.0


@pytest.mark.parametrize(
    "error",
    [
        aiohttp.ClientConnectionError("refused"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("truncated"),
        TimeoutError(),
        ConnectionResetError(),
    ],
)
def test_network_errors_are_transient(error: BaseException) -> None:
    assert is_transient(error, {})
    assert delay(error) == 0.5


@pytest.mark.parametrize("error", [aiohttp.InvalidURL("nope"), ValueError("bug"), KeyError("bug")])
def test_other_errors_are_not_retried(error: BaseException) -> None:
    assert delay(error) is None


def test_retry_after_seconds_wins_over_a_shorter_backoff() -> None:
    assert delay(429, {"Retry-After": "7"}) == 7.0
    assert delay(503, {"retry-after": " 3 "}, attempt=5) == 8.0  # backoff is longer here


def test_retry_after_http_date() -> None:
    when = formatdate(NOW + 90, usegmt=True)
    assert delay(429, {"Retry-After": when}) == 90.0
    assert server_delay({"Retry-After": formatdate(NOW - 90, usegmt=True)}, now=NOW) == 0.0


def test_unreadable_retry_after_falls_back_to_backoff() -> None:
    assert delay(429, {"Retry-After": "soon"}, attempt=2) == 1.0
    assert delay(429, {"Retry-After": "nan"}, attempt=2) == 1.0


def test_gitlab_ratelimit_reset() -> None:
    headers = {"RateLimit-Remaining": "0", "RateLimit-Reset": str(int(NOW) + 30)}
    assert delay(429, headers) == 30.0
    assert server_delay({"RateLimit-Reset": str(int(NOW) + 30)}, now=NOW) == 30.0


def test_reset_of_a_quota_not_exhausted_is_ignored() -> None:
    headers = {"x-ratelimit-remaining": "4999", "x-ratelimit-reset": str(int(NOW) + 3000)}
    assert server_delay(headers, now=NOW) is None
    assert delay(500, headers) == 0.5


def test_delay_never_exceeds_the_remaining_budget() -> None:
    assert delay(500, attempt=6, elapsed=110.0, budget=120.0) == 10.0
    assert delay(500, attempt=1, elapsed=119.9, budget=120.0) == pytest.approx(0.1)


def test_gives_up_when_the_budget_is_spent() -> None:
    assert delay(500, elapsed=120.0, budget=120.0) is None
    assert delay(500, elapsed=200.0, budget=120.0) is None
    assert delay(500, budget=0.0) is None  # retry_for_seconds = 0: never retry


def test_gives_up_when_the_server_asks_for_more_than_is_left() -> None:
    assert delay(429, {"Retry-After": "60"}, elapsed=100.0, budget=120.0) is None
    assert delay(429, {"Retry-After": "20"}, elapsed=100.0, budget=120.0) == 20.0


def test_attempts_are_capped_even_if_the_clock_stands_still() -> None:
    assert delay(500, attempt=MAX_ATTEMPTS - 1) == MAX_DELAY
    assert delay(500, attempt=MAX_ATTEMPTS) is None
