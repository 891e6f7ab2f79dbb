"""Whether a failed forge API call is worth retrying, and how long to wait first.

Pure and deterministic (no jitter, no clock of its own), so the rules are tested without a
network: a transient failure (network error, 5xx, 429, a rate-limited 403) waits 0.5, 1, 2, 4 ...
seconds, capped at `MAX_DELAY`, or longer when the server asks for it (``Retry-After``, or the
reset time of an exhausted rate limit), and never past the caller's time budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

import aiohttp

from gatebot.forges import header

BASE_DELAY = 0.5
MAX_DELAY = 30.0
MAX_ATTEMPTS = 50  # a safety net for a clock that stands still; the budget ends retries first

Outcome = int | BaseException  # an HTTP status, or what was raised instead of an answer

# (remaining-requests header, reset-epoch header): GitHub's, then GitLab's spelling
_RATE_LIMIT_HEADERS = (
    ("x-ratelimit-remaining", "x-ratelimit-reset"),
    ("ratelimit-remaining", "ratelimit-reset"),
)
_PERMANENT_ERRORS = (aiohttp.InvalidURL, aiohttp.ClientSSLError, aiohttp.ClientResponseError)
_TRANSIENT_ERRORS = (aiohttp.ClientError, TimeoutError, ConnectionError)


def is_transient(outcome: Outcome, headers: Mapping[str, str]) -> bool:
    """Whether the same request may well succeed later."""
    if isinstance(outcome, BaseException):
        return isinstance(outcome, _TRANSIENT_ERRORS) and not isinstance(outcome, _PERMANENT_ERRORS)
    if outcome >= 500 or outcome == 429:
        return True
    if outcome == 403:  # GitHub's secondary rate limit; otherwise a real "forbidden"
        return header(headers, "retry-after") is not None or _quota_exhausted(headers)
    return False


def retry_delay(
    outcome: Outcome,
    headers: Mapping[str, str],
    *,
    attempt: int,
    elapsed: float,
    budget: float,
    now: float,
) -> float | None:
    """Seconds to wait before the next attempt, or None to give up.

    `attempt` counts the attempts made so far (1 after the first failure), `elapsed` the seconds
    since the first one began, `budget` the seconds retrying may take in all, `now` the epoch
    time (for ``Retry-After`` dates and reset times). A server-requested wait that would not end
    within the budget gives up at once: the server would refuse again.
    """
    if not is_transient(outcome, headers) or attempt >= MAX_ATTEMPTS:
        return None
    remaining = budget - elapsed
    if remaining <= 0:
        return None
    wanted = server_delay(headers, now=now)
    if wanted is not None and wanted > remaining:
        return None
    return min(max(wanted or 0.0, exponential_delay(attempt)), remaining)


def exponential_delay(attempt: int) -> float:
    """0.5 s after the first attempt, doubling each time, capped at `MAX_DELAY`."""
    return min(BASE_DELAY * 2.0 ** min(max(attempt - 1, 0), 32), MAX_DELAY)


def server_delay(headers: Mapping[str, str], *, now: float) -> float | None:
    """How long the server asked us to wait: ``Retry-After`` (seconds or an HTTP date), else
    the reset epoch of a rate limit whose remaining count is 0 (or not given); None if neither."""
    retry_after = header(headers, "retry-after")
    if retry_after is not None:
        wait = _parse_retry_after(retry_after, now)
        if wait is not None:
            return wait
    for remaining_name, reset_name in _RATE_LIMIT_HEADERS:
        reset = _number(header(headers, reset_name))
        remaining = header(headers, remaining_name)
        if reset is not None and (remaining is None or remaining == "0"):
            return max(0.0, reset - now)
    return None


def _quota_exhausted(headers: Mapping[str, str]) -> bool:
    return any(header(headers, name) == "0" for name, _ in _RATE_LIMIT_HEADERS)


def _parse_retry_after(value: str, now: float) -> float | None:
    seconds = _number(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": an HTTP date is always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
