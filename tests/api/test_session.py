"""Sessions, CSRF, Origin checks and the sign-in throttle, without a server (a set clock)."""

from __future__ import annotations

from gatebot.api.session import (
    MAX_SESSIONS,
    Sessions,
    SignInThrottle,
    origin_of_url,
    safe_next,
    same_origin,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_lives_until_it_expires_or_is_closed() -> None:
    clock = Clock()
    sessions = Sessions(60, clock=clock)
    session_id, session = sessions.open(token_id=7)
    assert len(session_id) >= 40 and session.token_id == 7
    assert sessions.get(session_id) == session
    assert (
        sessions.get("made-up") is None and sessions.get(None) is None and sessions.get("") is None
    )
    clock.now += 59
    assert sessions.get(session_id) == session
    clock.now += 1
    assert sessions.get(session_id) is None, "expired"
    again, _ = sessions.open(token_id=7)
    assert again != session_id
    sessions.close(again)
    assert sessions.get(again) is None


def test_sessions_are_kept_by_the_hash_of_their_id_and_bounded() -> None:
    sessions = Sessions(60, clock=Clock())
    session_id, _ = sessions.open(token_id=1)
    assert session_id not in sessions._open, "the id itself is not what the server keeps"
    first = session_id
    for n in range(MAX_SESSIONS):
        sessions.open(token_id=n)
    assert len(sessions) == MAX_SESSIONS
    assert sessions.get(first) is None, "the oldest session makes room"


def test_each_session_has_its_own_csrf_token() -> None:
    sessions = Sessions(60, clock=Clock())
    _, one = sessions.open(token_id=1)
    _, two = sessions.open(token_id=1)
    assert one.csrf != two.csrf and len(one.csrf) >= 40
    assert one.csrf_ok(one.csrf)
    assert not one.csrf_ok(two.csrf)
    assert not one.csrf_ok(None) and not one.csrf_ok("") and not one.csrf_ok("é" * 43)


def test_origin_checks() -> None:
    allowed = {"http://127.0.0.1:8088", "https://gatebot.example.com"}
    assert same_origin("http://127.0.0.1:8088", None, allowed)
    assert same_origin("HTTPS://gatebot.example.com", None, allowed)
    assert not same_origin("https://evil.example", None, allowed)
    assert not same_origin("null", "http://127.0.0.1:8088/projects/x", allowed)
    assert not same_origin("https://evil.example", "http://127.0.0.1:8088/", allowed)
    # No Origin: the Referer decides; neither: refused.
    assert same_origin(None, "https://gatebot.example.com/projects/shop?page=2", allowed)
    assert not same_origin(None, "https://gatebot.example.com.evil.example/", allowed)
    assert not same_origin(None, None, allowed)
    assert origin_of_url("https://Gatebot.example.com:8443/x") == "https://gatebot.example.com:8443"
    assert origin_of_url("javascript:alert(1)") is None and origin_of_url("/relative") is None


def test_after_sign_in_only_paths_of_this_server() -> None:
    assert safe_next("/projects/shop?page=2") == "/projects/shop?page=2"
    for bad in (
        None,
        "",
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
        "javascript:alert(1)",
        "/x\r\nSet-Cookie: a=b",
    ):
        assert safe_next(bad) == "/", bad


def test_failed_sign_ins_are_slowed_down_per_address() -> None:
    clock = Clock()
    throttle = SignInThrottle(free=3, longest=30, forget_after=600, clock=clock)
    for _ in range(3):
        assert throttle.wait("10.0.0.1") == 0
        throttle.failed("10.0.0.1")
    assert throttle.wait("10.0.0.1") == 2.0, "the 4th attempt waits 2 s after the 3rd failure"
    assert throttle.wait("10.0.0.2") == 0, "another address is not slowed"
    clock.now += 2
    assert throttle.wait("10.0.0.1") == 0
    throttle.failed("10.0.0.1")
    assert throttle.wait("10.0.0.1") == 4.0, "each failure doubles the wait"
    for _ in range(10):
        clock.now += 100
        throttle.failed("10.0.0.1")
    assert throttle.wait("10.0.0.1") == 30.0, "capped at `longest`"
    clock.now += 601
    assert throttle.wait("10.0.0.1") == 0, "forgotten after a quiet while"
    for _ in range(5):
        throttle.failed("10.0.0.3")
    throttle.succeeded("10.0.0.3")
    assert throttle.wait("10.0.0.3") == 0, "a success clears the address"


def test_the_throttle_remembers_a_bounded_number_of_addresses() -> None:
    throttle = SignInThrottle(free=1, clock=Clock(), max_addresses=3)
    for n in range(5):
        throttle.failed(f"10.0.0.{n}")
    assert len(throttle._seen) == 3 and "10.0.0.0" not in throttle._seen
