"""GitHub webhook verification, decoding and event mapping."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest

from gatebot.events import ChecksChanged, CommentCommand, Ignored, Ping, Push
from gatebot.forges.errors import UNAUTHORIZED_MESSAGE, WebhookRejected
from gatebot.forges.github.sansio import (
    decode_body,
    parse_event,
    peek_repository,
    verify_signature,
)
from tests.forges import fixture, fixture_bytes
from tests.support import signing

SECRET = "s3cret-for-tests"
ZERO = "0" * 40


def sign(body: bytes, secret: str = SECRET) -> str:
    return signing.github_signature(body, secret)


def headers(event: str, delivery: str = "72d3162e-cc78-11e3-81ab-4c9367dc0958") -> dict[str, str]:
    return {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery}


def rejected(exc_info: pytest.ExceptionInfo[WebhookRejected], status: int) -> WebhookRejected:
    assert exc_info.value.status == status
    return exc_info.value


# --- verify_signature ---------------------------------------------------------------------

# GitHub's published test vector (docs: "Validating webhook deliveries").
VECTOR_SECRET = "It's a Secret to Everybody"
VECTOR_BODY = b"Hello, World!"
VECTOR_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_github_published_vector_verifies() -> None:
    verify_signature(VECTOR_BODY, VECTOR_SIGNATURE, VECTOR_SECRET)


def test_github_published_vector_with_tampered_body_is_refused() -> None:
    with pytest.raises(WebhookRejected) as exc_info:
        verify_signature(b"Hello, World?", VECTOR_SIGNATURE, VECTOR_SECRET)
    rejected(exc_info, 401)


def test_signature_computed_independently_verifies() -> None:
    body = fixture_bytes("github_push.json")
    verify_signature(body, sign(body), SECRET)


def test_tampered_body_is_refused() -> None:
    body = fixture_bytes("github_push.json")
    signature = sign(body)
    tampered = body.replace(b"refs/heads/main", b"refs/heads/evil")
    assert tampered != body
    with pytest.raises(WebhookRejected) as exc_info:
        verify_signature(tampered, signature, SECRET)
    rejected(exc_info, 401)


def test_wrong_secret_is_refused() -> None:
    body = fixture_bytes("github_push.json")
    with pytest.raises(WebhookRejected) as exc_info:
        verify_signature(body, sign(body, "another-secret"), SECRET)
    rejected(exc_info, 401)


def test_missing_header_is_refused() -> None:
    with pytest.raises(WebhookRejected) as exc_info:
        verify_signature(b"{}", None, SECRET)
    rejected(exc_info, 401)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s.removeprefix("sha256="),  # bare hex, no scheme
        lambda s: s.replace("sha256=", "sha1="),  # the old, weaker header's scheme
        lambda s: "sha256=",  # scheme, no digest
        lambda s: "",
        lambda s: s[:-2],  # truncated digest
    ],
)
def test_malformed_header_is_refused(mangle: Any) -> None:
    body = b'{"zen": "Design for failure."}'
    with pytest.raises(WebhookRejected) as exc_info:
        verify_signature(body, mangle(sign(body)), SECRET)
    rejected(exc_info, 401)


def test_empty_secret_is_refused_even_with_a_matching_hmac() -> None:
    body = b"{}"
    with pytest.raises(WebhookRejected) as exc_info:
        verify_signature(body, sign(body, ""), "")
    rejected(exc_info, 401)


def test_401_says_nothing_about_why_and_never_quotes_the_secret() -> None:
    body = fixture_bytes("github_push.json")
    failures = [
        (body, None),
        (body, "garbage"),
        (body, sign(body, "another-secret")),
        (body + b" ", sign(body)),
    ]
    messages = set()
    for payload, signature in failures:
        with pytest.raises(WebhookRejected) as exc_info:
            verify_signature(payload, signature, SECRET)
        exc = rejected(exc_info, 401)
        messages.add(exc.public_message)
        assert SECRET not in str(exc) and SECRET not in exc.public_message
    assert messages == {UNAUTHORIZED_MESSAGE}


# --- decode_body / peek_repository ---------------------------------------------------------


def test_decode_json_body() -> None:
    assert decode_body("application/json", fixture_bytes("github_push.json")) == fixture(
        "github_push.json"
    )


def test_decode_json_body_with_charset_parameter() -> None:
    payload = decode_body("application/json; charset=utf-8", b'{"zen": "x"}')
    assert payload == {"zen": "x"}


def test_decode_form_encoded_body() -> None:
    expected = fixture("github_push.json")
    body = urlencode({"payload": json.dumps(expected)}).encode()
    assert decode_body("application/x-www-form-urlencoded", body) == expected


def test_form_encoded_body_without_payload_field_is_400() -> None:
    with pytest.raises(WebhookRejected) as exc_info:
        decode_body("application/x-www-form-urlencoded", b"other=1")
    assert "payload" in rejected(exc_info, 400).public_message


def test_form_encoded_body_with_two_payload_fields_is_400() -> None:
    with pytest.raises(WebhookRejected) as exc_info:
        decode_body("application/x-www-form-urlencoded", b"payload=%7B%7D&payload=%7B%7D")
    rejected(exc_info, 400)


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"[1, 2]", b'"a string"', b"\xff\xfe\xfa", b"[" * 100_000],
    ids=["malformed", "empty", "array", "string", "not-utf8", "deeply-nested"],
)
def test_body_that_is_not_a_json_object_is_400(body: bytes) -> None:
    with pytest.raises(WebhookRejected) as exc_info:
        decode_body("application/json", body)
    rejected(exc_info, 400)


def test_form_payload_with_malformed_json_is_400() -> None:
    with pytest.raises(WebhookRejected) as exc_info:
        decode_body("application/x-www-form-urlencoded", b"payload=%7Bnot-json")
    rejected(exc_info, 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "", None])
def test_other_content_types_are_415(content_type: str | None) -> None:
    with pytest.raises(WebhookRejected) as exc_info:
        decode_body(content_type, b"{}")
    rejected(exc_info, 415)


def test_peek_repository_reads_json_and_form_bodies() -> None:
    body = fixture_bytes("github_push.json")
    form = urlencode({"payload": body.decode()}).encode()
    assert peek_repository("application/json", body) == "acme/shop"
    assert peek_repository("application/x-www-form-urlencoded", form) == "acme/shop"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{broken"),
        ("text/plain", b'{"repository": {"full_name": "acme/shop"}}'),
        ("application/json", b'{"repository": "acme/shop"}'),
        ("application/json", b'{"repository": {"full_name": 42}}'),
        ("application/json", b'{"zen": "no repository"}'),
        ("application/json", b"[" * 100_000),
    ],
)
def test_peek_repository_returns_none_instead_of_raising(content_type: str, body: bytes) -> None:
    assert peek_repository(content_type, body) is None


# --- parse_event ------------------------------------------------------------------------


def test_push_to_a_branch() -> None:
    event = parse_event(headers("push", "d-1"), fixture("github_push.json"))
    assert event == Push(
        forge="github",
        repo="acme/shop",
        ref="refs/heads/main",
        branch="main",
        sha="0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
        before="6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        deleted=False,
        pusher="octocat",
        delivery_id="d-1",
        is_tag=False,
        installation_id=2311213,
    )


def test_push_of_a_tag() -> None:
    event = parse_event(headers("push"), fixture("github_push_tag.json"))
    assert isinstance(event, Push)
    assert (event.ref, event.branch, event.is_tag) == ("refs/tags/v1.2.0", None, True)
    assert event.sha == "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
    assert event.before == ZERO
    assert event.deleted is False
    assert event.installation_id is None


def test_push_that_deletes_a_branch() -> None:
    event = parse_event(headers("push"), fixture("github_push_delete.json"))
    assert isinstance(event, Push)
    assert event.deleted is True
    assert event.branch == "feature/old-checkout"
    assert event.sha == ZERO


def test_push_with_zero_after_is_a_delete_even_without_the_flag() -> None:
    payload = fixture("github_push_delete.json")
    del payload["deleted"]
    event = parse_event(headers("push"), payload)
    assert isinstance(event, Push) and event.deleted is True


def test_pusher_is_the_sender_login() -> None:
    payload = fixture("github_push.json")
    payload["pusher"]["name"] = "someone-else"
    event = parse_event(headers("push"), payload)
    assert isinstance(event, Push) and event.pusher == "octocat"


def test_pusher_falls_back_to_pusher_name() -> None:
    payload = fixture("github_push.json")
    del payload["sender"]
    payload["pusher"]["name"] = "hubot"
    event = parse_event(headers("push"), payload)
    assert isinstance(event, Push) and event.pusher == "hubot"


def test_push_to_a_ref_that_is_neither_branch_nor_tag_is_ignored() -> None:
    payload = fixture("github_push.json")
    payload["ref"] = "refs/notes/commits"
    event = parse_event(headers("push"), payload)
    assert isinstance(event, Ignored)
    assert event.event_name == "push" and "refs/notes/commits" in event.reason


@pytest.mark.parametrize("path", ["ref", "after", "before", "repository.full_name"])
def test_push_missing_a_field_is_400_naming_it(path: str) -> None:
    payload = fixture("github_push.json")
    *parents, leaf = path.split(".")
    node = payload
    for key in parents:
        node = node[key]
    del node[leaf]
    with pytest.raises(WebhookRejected) as exc_info:
        parse_event(headers("push"), payload)
    assert path in rejected(exc_info, 400).public_message


@pytest.mark.parametrize(
    ("field", "value"),
    [("ref", 7), ("after", "--upload-pack=touch /tmp/x"), ("after", "abc123"), ("deleted", "yes")],
)
def test_push_with_a_malformed_field_is_400_naming_it(field: str, value: object) -> None:
    payload = fixture("github_push.json")
    payload[field] = value
    with pytest.raises(WebhookRejected) as exc_info:
        parse_event(headers("push"), payload)
    assert field in rejected(exc_info, 400).public_message


def test_ping() -> None:
    event = parse_event(headers("ping", "d-ping"), fixture("github_ping.json"))
    assert event == Ping(forge="github", delivery_id="d-ping", repo="acme/shop")


def test_commit_comment_created() -> None:
    event = parse_event(headers("commit_comment", "d-2"), fixture("github_commit_comment.json"))
    assert event == CommentCommand(
        forge="github",
        repo="acme/shop",
        sha="0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
        body="/rollback",
        author="octocat",
        author_id=583231,
        comment_id=133876594,
        delivery_id="d-2",
        installation_id=2311213,
    )


def test_commit_comment_other_action_is_ignored() -> None:
    payload = fixture("github_commit_comment.json")
    payload["action"] = "edited"
    event = parse_event(headers("commit_comment"), payload)
    assert isinstance(event, Ignored)
    assert event.event_name == "commit_comment" and "edited" in event.reason


@pytest.mark.parametrize(
    "path", ["comment.commit_id", "comment.user.login", "comment.id", "repository.full_name"]
)
def test_commit_comment_missing_a_field_is_400_naming_it(path: str) -> None:
    payload = fixture("github_commit_comment.json")
    *parents, leaf = path.split(".")
    node = payload
    for key in parents:
        node = node[key]
    del node[leaf]
    with pytest.raises(WebhookRejected) as exc_info:
        parse_event(headers("commit_comment"), payload)
    assert path in rejected(exc_info, 400).public_message


def test_other_events_are_ignored_with_a_reason() -> None:
    event = parse_event(headers("issues", "d-3"), {"action": "opened"})
    assert isinstance(event, Ignored)
    assert (event.forge, event.delivery_id, event.event_name) == ("github", "d-3", "issues")
    assert "issues" in event.reason


@pytest.mark.parametrize("missing", ["X-GitHub-Event", "X-GitHub-Delivery"])
def test_missing_event_or_delivery_header_is_400(missing: str) -> None:
    hdrs = headers("push")
    del hdrs[missing]
    with pytest.raises(WebhookRejected) as exc_info:
        parse_event(hdrs, fixture("github_push.json"))
    assert missing in rejected(exc_info, 400).public_message


def test_header_names_are_case_insensitive() -> None:
    event = parse_event(
        {"x-github-event": "ping", "x-github-delivery": "d-lower"}, fixture("github_ping.json")
    )
    assert event == Ping(forge="github", delivery_id="d-lower", repo="acme/shop")


# --- bytes that are not UTF-8, text that is not Unicode -------------------------------------

# aiohttp decodes header bytes with surrogateescape: b"\xff" arrives as "\udcff".
NOT_UTF8 = b"\xff\xa0".decode("utf-8", "surrogateescape")


@pytest.mark.parametrize("value", [f"sha256={NOT_UTF8}", f"sha256=ab{NOT_UTF8}", "sha256=é"])
def test_a_signature_header_that_is_not_ascii_is_refused_with_401(value: str) -> None:
    body = fixture_bytes("github_push.json")
    with pytest.raises(WebhookRejected) as exc_info:
        verify_signature(body, value, SECRET)
    rejected(exc_info, 401)


@pytest.mark.parametrize("name", ["X-GitHub-Delivery", "X-GitHub-Event"])
def test_a_delivery_or_event_header_that_is_not_utf8_is_a_400(name: str) -> None:
    hdrs = {**headers("push"), name: f"abc{NOT_UTF8}"}
    with pytest.raises(WebhookRejected) as exc_info:
        parse_event(hdrs, fixture("github_push.json"))
    assert f"header {name} is not UTF-8 text" in rejected(exc_info, 400).public_message


@pytest.mark.parametrize(
    "path", [("sender", "login"), ("repository", "full_name"), ("ref",), ("pusher", "name")]
)
def test_a_lone_surrogate_in_a_payload_string_is_a_400(path: tuple[str, ...]) -> None:
    payload = fixture("github_push.json")
    node = payload
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = json.loads('"a\\ud800b"')  # what a JSON escape of a lone surrogate gives
    if path == ("pusher", "name"):
        del payload["sender"]
    with pytest.raises(WebhookRejected) as exc_info:
        parse_event(headers("push"), payload)
    assert "is not valid Unicode text" in rejected(exc_info, 400).public_message


def test_a_lone_surrogate_in_a_comment_body_is_a_400() -> None:
    payload = fixture("github_commit_comment.json")
    payload["comment"]["body"] = "/rollback \ud800"
    with pytest.raises(WebhookRejected) as exc_info:
        parse_event(headers("commit_comment"), payload)
    rejected(exc_info, 400)


@pytest.mark.parametrize(
    ("event_name", "fixture_name"),
    [
        ("check_run", "github_check_run.json"),
        ("check_suite", "github_check_suite.json"),
        ("status", "github_status.json"),
    ],
)
def test_check_events_say_which_commits_checks_changed(event_name: str, fixture_name: str) -> None:
    event = parse_event(headers(event_name), fixture(fixture_name))
    assert isinstance(event, ChecksChanged)
    assert (event.forge, event.repo, event.event_name) == ("github", "acme/shop", event_name)
    assert event.sha == "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
    assert event.installation_id == fixture(fixture_name)["installation"]["id"]


def test_a_check_run_without_its_commit_is_400() -> None:
    payload = fixture("github_check_run.json")
    del payload["check_run"]["head_sha"]
    with pytest.raises(WebhookRejected):
        parse_event(headers("check_run"), payload)
