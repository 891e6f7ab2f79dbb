"""Browser sessions for the dashboard and the deployment pages, and what guards their forms.

Signing in with an API token opens a server-side session: the browser keeps only a random
session id in an HttpOnly, SameSite=Strict cookie; the server keeps, under the SHA-256 of that
id, which token signed in, until when, and the session's CSRF token. The token itself is never
stored in the browser. Sessions live in memory: a restart of gatebot signs everyone out.
Each request re-reads the token, so a revoked token ends its sessions at the next request.

Forms that change something carry the session's CSRF token and must come from gatebot's own
origin (`same_origin`); the sign-in form checks the origin too. Failed sign-ins are counted per
client address (`SignInThrottle`): after a few, each further attempt has to wait, longer each
time.

Everything here is pure (no I/O); the clock is passed in, so tests set the time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

COOKIE = "gatebot_session"
MAX_SESSIONS = 10_000  # the oldest are dropped beyond this
Clock = Callable[[], float]


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True)
class Session:
    token_id: int
    csrf: str
    expires_at: float  # on the store's clock

    def csrf_ok(self, presented: str | None) -> bool:
        """Whether `presented` is this session's CSRF token (compared in constant time)."""
        return presented is not None and hmac.compare_digest(
            self.csrf.encode(), presented.encode("utf-8", "replace")
        )


class Sessions:
    """The open sessions, by the hash of their id; each ends `lifetime` seconds after sign-in."""

    def __init__(self, lifetime: float, *, clock: Clock = time.monotonic) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self._open: OrderedDict[str, Session] = OrderedDict()

    def open(self, token_id: int) -> tuple[str, Session]:
        """A new session for the token: (the id for the cookie, the session)."""
        self._prune()
        session_id = secrets.token_urlsafe(32)
        session = Session(
            token_id=token_id,
            csrf=secrets.token_urlsafe(32),
            expires_at=self.clock() + self.lifetime,
        )
        self._open[_key(session_id)] = session
        while len(self._open) > MAX_SESSIONS:
            self._open.popitem(last=False)
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, or None (unknown, closed or expired)."""
        if not session_id:
            return None
        key = _key(session_id)
        session = self._open.get(key)
        if session is None:
            return None
        if session.expires_at <= self.clock():
            del self._open[key]
            return None
        return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            self._open.pop(_key(session_id), None)

    def __len__(self) -> int:
        return len(self._open)

    def _prune(self) -> None:
        """Drop expired sessions: the oldest first (all live equally long), so this stops at
        the first live one."""
        now = self.clock()
        while self._open:
            key, oldest = next(iter(self._open.items()))
            if oldest.expires_at > now:
                break
            del self._open[key]


def origin_of_url(url: str) -> str | None:
    """``https://gatebot.example.com/x`` -> ``https://gatebot.example.com``; None if no host."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(origin: str | None, referer: str | None, allowed: set[str]) -> bool:
    """Whether a form post comes from one of the `allowed` origins.

    The Origin header decides when there is one (browsers send it with every POST); without
    it, the Referer's origin; with neither, the post is refused. ``Origin: null`` (a sandboxed
    frame, a privacy setting) is refused too.
    """
    claimed = origin.strip().lower() if origin else None
    if claimed is None and referer:
        claimed = origin_of_url(referer)
    return claimed is not None and claimed in allowed


def safe_next(path: str | None) -> str:
    """Where to go after signing in: a path on this server, or ``/``; never another site."""
    if (
        not path
        or not path.startswith("/")
        or path.startswith("//")
        or "\\" in path
        or any(ord(c) < 0x20 for c in path)
    ):
        return "/"
    return path


@dataclass
class _Failures:
    count: int
    last: float


class SignInThrottle:
    """Slows down guessing: after `free` failed sign-ins from one address, each attempt must
    wait 2, 4, 8, ... seconds (at most `longest`) after the previous failure. A success, or
    `forget_after` seconds without a failure, clears the address."""

    def __init__(
        self,
        *,
        free: int = 5,
        longest: float = 300.0,
        forget_after: float = 900.0,
        clock: Clock = time.monotonic,
        max_addresses: int = 10_000,
    ) -> None:
        self.free = free
        self.longest = longest
        self.forget_after = forget_after
        self.clock = clock
        self.max_addresses = max_addresses
        self._seen: OrderedDict[str, _Failures] = OrderedDict()

    def wait(self, address: str) -> float:
        """Seconds the address must still wait before its next attempt (0: it may try now)."""
        seen = self._current(address)
        if seen is None or seen.count < self.free:
            return 0.0
        delay = min(self.longest, 2.0 ** (seen.count - self.free + 1))
        return max(0.0, seen.last + delay - self.clock())

    def failed(self, address: str) -> None:
        seen = self._current(address)
        now = self.clock()
        self._seen[address] = _Failures(count=(seen.count if seen else 0) + 1, last=now)
        self._seen.move_to_end(address)
        while len(self._seen) > self.max_addresses:
            self._seen.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._seen.pop(address, None)

    def _current(self, address: str) -> _Failures | None:
        seen = self._seen.get(address)
        if seen is not None and self.clock() - seen.last > self.forget_after:
            del self._seen[address]
            return None
        return seen
