"""GitLab webhook verification (token, Standard Webhooks signing), decoding and event mapping."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest

from gatebot.errors import ConfigError
from gatebot.events import ChecksChanged, CommentCommand, Ignored, Push
from gatebot.forges.errors import UNAUTHORIZED_MESSAGE, WebhookRejected
from gatebot.forges.gitlab.sansio import (
    decode_body,
    delivery_id,
    parse_event,
    peek_repository,
    verify,
    verify_signing,
    verify_token,
)
from tests.forges import fixture, fixture_bytes
from tests.support import signing

TOKEN = "gitlab-secret-token"
KEY = os.urandom(32)
SIGNING_TOKEN = "whsec_" + base64.b64encode(KEY).decode()
NOW = 1_718_011_234
MSG_ID = "4e0f6b6a-8f8e-4a52-9c43-3c4f2b1e6d10"
ZERO = "0" * 40


def signature(body: bytes, *, key: bytes = KEY, msg_id: str = MSG_ID, ts: int = NOW) -> str:
    """Standard Webhooks v1 signature, computed independently of the code under test."""
    return signing.gitlab_signature(body, key, msg_id, ts)


def signed_headers(body: bytes, *, ts: int = NOW, sig: str | None = None) -> dict[str, str]:
    return {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(ts),
        "webhook-signature": sig if sig is not None else signature(body, ts=ts),
    }


def rejected(exc_info: pytest.ExceptionInfo[WebhookRejected], status: int) -> WebhookRejected:
    assert exc_info.value.status == status
    return exc_info.value


# --- X-Gitlab-Token -----------------------------------------------------------------------


def test_token_matches() -> None:
    verify_token(TOKEN, TOKEN)


@pytest.mark.parametrize("given", ["wrong", TOKEN + "x", TOKEN[:-1], "", "tökén"])
def test_wrong_token_is_refused(given: str) -> None:
    with pytest.raises(WebhookRejected) as exc_info:
        verify_token(given, TOKEN)
    exc = rejected(exc_info, 401)
    assert exc.public_message == UNAUTHORIZED_MESSAGE
    assert TOKEN not in str(exc)


def test_missing_token_is_refused() -> None:
    with pytest.raises(WebhookRejected) as exc_info:
        verify_token(None, TOKEN)
    rejected(exc_info, 401)


def test_empty_configured_token_refuses_an_empty_header() -> None:
    with pytest.raises(WebhookRejected) as exc_info:
        verify_token("", "")
    rejected(exc_info, 401)


# --- signing token (Standard Webhooks) ----------------------------------------------------


def test_standard_webhooks_published_vector_verifies() -> None:
    # The test vector of the Standard Webhooks specification's reference libraries.
    verify_signing(
        {
            "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "webhook-timestamp": "1614265330",
            "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        },
        b'{"test": 2432232314}',
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        now=1614265330,
    )


def test_signature_verifies() -> None:
    body = fixture_bytes("gitlab_push.json")
    verify_signing(signed_headers(body), body, SIGNING_TOKEN, now=NOW)


def test_signing_token_without_whsec_prefix_is_plain_base64() -> None:
    body = fixture_bytes("gitlab_push.json")
    verify_signing(signed_headers(body), body, base64.b64encode(KEY).decode(), now=NOW)


def test_tampered_body_is_refused() -> None:
    body = fixture_bytes("gitlab_push.json")
    hdrs = signed_headers(body)
    tampered = body.replace(b"refs/heads/main", b"refs/heads/evil")
    assert tampered != body
    with pytest.raises(WebhookRejected) as exc_info:
        verify_signing(hdrs, tampered, SIGNING_TOKEN, now=NOW)
    rejected(exc_info, 401)


def test_tampered_webhook_id_is_refused() -> None:
    body = b"{}"
    hdrs = signed_headers(body) | {"webhook-id": "another-id"}
    with pytest.raises(WebhookRejected) as exc_info:
        verify_signing(hdrs, body, SIGNING_TOKEN, now=NOW)
    rejected(exc_info, 401)


def test_wrong_signing_key_is_refused() -> None:
    body = b"{}"
    hdrs = signed_headers(body, sig=signature(body, key=os.urandom(32)))
    with pytest.raises(WebhookRejected) as exc_info:
        verify_signing(hdrs, body, SIGNING_TOKEN, now=NOW)
    rejected(exc_info, 401)


def test_stale_timestamp_is_refused_even_when_correctly_signed() -> None:
    body = b"{}"
    ts = NOW - 301
    with pytest.raises(WebhookRejected) as exc_info:
        verify_signing(signed_headers(body, ts=ts), body, SIGNING_TOKEN, now=NOW)
    rejected(exc_info, 401)


def test_future_timestamp_is_refused_even_when_correctly_signed() -> None:
    body = b"{}"
    ts = NOW + 301
    with pytest.raises(WebhookRejected) as exc_info:
        verify_signing(signed_headers(body, ts=ts), body, SIGNING_TOKEN, now=NOW)
    rejected(exc_info, 401)


@pytest.mark.parametrize("offset", [-300, 300])
def test_timestamp_exactly_five_minutes_off_is_accepted(offset: int) -> None:
    body = b"{}"
    ts = NOW + offset
    verify_signing(signed_headers(body, ts=ts), body, SIGNING_TOKEN, now=NOW)


def test_tolerance_is_configurable() -> None:
    body = b"{}"
    hdrs = signed_headers(body, ts=NOW - 60)
    verify_signing(hdrs, body, SIGNING_TOKEN, now=NOW, tolerance=60)
    with pytest.raises(WebhookRejected):
        verify_signing(hdrs, body, SIGNING_TOKEN, now=NOW, tolerance=59)


def test_one_valid_signature_among_several_is_enough() -> None:
    body = fixture_bytes("gitlab_push.json")
    entries = [
        signature(body, key=os.urandom(32)),  # e.g. the token before a rotation
        "v1a,c29tZXRoaW5nIGVsc2U=",  # another scheme, ignored
        signature(body),
    ]
    verify_signing(signed_headers(body, sig=" ".join(entries)), body, SIGNING_TOKEN, now=NOW)


def test_several_signatures_none_valid_is_refused() -> None:
    body = b"{}"
    entries = [signature(body, key=os.urandom(32)), signature(body, key=os.urandom(32))]
    with pytest.raises(WebhookRejected) as exc_info:
        verify_signing(signed_headers(body, sig=" ".join(entries)), body, SIGNING_TOKEN, now=NOW)
    rejected(exc_info, 401)


def test_a_valid_digest_under_another_version_is_refused() -> None:
    body = b"{}"
    sig = signature(body).replace("v1,", "v2,")
    with pytest.raises(WebhookRejected) as exc_info:
        verify_signing(signed_headers(body, sig=sig), body, SIGNING_TOKEN, now=NOW)
    rejected(exc_info, 401)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_signing_header_is_refused(missing: str) -> None:
    body = b"{}"
    hdrs = signed_headers(body)
    del hdrs[missing]
    with pytest.raises(WebhookRejected) as exc_info:
        verify_signing(hdrs, body, SIGNING_TOKEN, now=NOW)
    rejected(exc_info, 401)


@pytest.mark.parametrize("ts", ["soon", "1718011234.5", "-1718011234", "１２３"])
def test_timestamp_that_is_not_unix_seconds_is_refused(ts: str) -> None:
    body = b"{}"
    hdrs = signed_headers(body) | {"webhook-timestamp": ts}
    with pytest.raises(WebhookRejected) as exc_info:
        verify_signing(hdrs, body, SIGNING_TOKEN, now=NOW)
    rejected(exc_info, 401)


@pytest.mark.parametrize("token", ["whsec_not base64!", "whsec_c2VjcmV0!", "%%%secret%%%"])
def test_invalid_signing_token_is_a_config_error_that_does_not_quote_it(token: str) -> None:
    with pytest.raises(ConfigError) as exc_info:
        verify_signing(signed_headers(b"{}"), b"{}", token, now=NOW)
    assert token not in str(exc_info.value)
    assert token.removeprefix("whsec_") not in str(exc_info.value)


def test_empty_signing_token_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        verify_signing(signed_headers(b"{}"), b"{}", "whsec_", now=NOW)


# --- verify: which mechanisms apply -------------------------------------------------------


def both(body: bytes) -> dict[str, str]:
    return signed_headers(body) | {"X-Gitlab-Token": TOKEN}


def check(hdrs: dict[str, str], body: bytes, *, token: str | None, signing: str | None) -> None:
    verify(hdrs, body, token=token, signing_token=signing, now=NOW)


def test_nothing_configured_is_refused() -> None:
    body = b"{}"
    with pytest.raises(WebhookRejected) as exc_info:
        check(both(body), body, token=None, signing=None)
    rejected(exc_info, 401)


def test_token_only() -> None:
    check({"X-Gitlab-Token": TOKEN}, b"{}", token=TOKEN, signing=None)
    with pytest.raises(WebhookRejected):
        check({"X-Gitlab-Token": "wrong"}, b"{}", token=TOKEN, signing=None)
    with pytest.raises(WebhookRejected):
        check({}, b"{}", token=TOKEN, signing=None)


def test_signing_only() -> None:
    body = b'{"object_kind": "push"}'
    check(signed_headers(body), body, token=None, signing=SIGNING_TOKEN)
    with pytest.raises(WebhookRejected):
        check(signed_headers(body), body + b" ", token=None, signing=SIGNING_TOKEN)


def test_signing_only_without_signature_headers_is_refused() -> None:
    with pytest.raises(WebhookRejected) as exc_info:
        check({"X-Gitlab-Token": TOKEN}, b"{}", token=None, signing=SIGNING_TOKEN)
    rejected(exc_info, 401)


def test_signing_only_with_partial_signature_headers_is_refused() -> None:
    body = b"{}"
    hdrs = signed_headers(body)
    del hdrs["webhook-signature"]
    with pytest.raises(WebhookRejected):
        check(hdrs, body, token=None, signing=SIGNING_TOKEN)


def test_both_configured_and_both_pass() -> None:
    body = b"{}"
    check(both(body), body, token=TOKEN, signing=SIGNING_TOKEN)


def test_both_configured_bad_signature_is_refused_despite_a_good_token() -> None:
    body = b"{}"
    hdrs = both(body) | {"webhook-signature": signature(body, key=os.urandom(32))}
    with pytest.raises(WebhookRejected):
        check(hdrs, body, token=TOKEN, signing=SIGNING_TOKEN)


def test_both_configured_bad_token_is_refused_despite_a_good_signature() -> None:
    body = b"{}"
    with pytest.raises(WebhookRejected):
        check(both(body) | {"X-Gitlab-Token": "wrong"}, body, token=TOKEN, signing=SIGNING_TOKEN)
    hdrs = both(body)
    del hdrs["X-Gitlab-Token"]
    with pytest.raises(WebhookRejected):
        check(hdrs, body, token=TOKEN, signing=SIGNING_TOKEN)


def test_both_configured_and_the_signature_stripped_is_refused() -> None:
    # Whoever knows the token must not be able to drop the signature (and its replay guard).
    with pytest.raises(WebhookRejected) as exc_info:
        check({"X-Gitlab-Token": TOKEN}, b"{}", token=TOKEN, signing=SIGNING_TOKEN)
    rejected(exc_info, 401)


# --- delivery id, body --------------------------------------------------------------------


def test_delivery_id_precedence() -> None:
    hdrs = {"Idempotency-Key": "idem", "webhook-id": "wh", "X-Gitlab-Event-UUID": "uuid"}
    assert delivery_id(hdrs) == "wh", "the signed id wins: a replay cannot pose as new"
    del hdrs["webhook-id"]
    assert delivery_id(hdrs) == "idem"
    del hdrs["Idempotency-Key"]
    assert delivery_id(hdrs) == "uuid"
    del hdrs["X-Gitlab-Event-UUID"]
    with pytest.raises(WebhookRejected) as exc_info:
        delivery_id(hdrs)
    rejected(exc_info, 400)


def test_delivery_id_header_names_are_case_insensitive() -> None:
    assert delivery_id({"idempotency-key": "idem", "x-gitlab-event-uuid": "uuid"}) == "idem"


def test_decode_json_body() -> None:
    body = fixture_bytes("gitlab_push.json")
    assert decode_body("application/json", body) == fixture("gitlab_push.json")


def test_malformed_json_is_400() -> None:
    with pytest.raises(WebhookRejected) as exc_info:
        decode_body("application/json", b'{"object_kind": ')
    rejected(exc_info, 400)


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
def test_other_content_types_are_415(content_type: str | None) -> None:
    with pytest.raises(WebhookRejected) as exc_info:
        decode_body(content_type, b"{}")
    rejected(exc_info, 415)


def test_peek_repository() -> None:
    assert peek_repository(fixture_bytes("gitlab_push.json")) == "acme/shop"
    assert peek_repository(b"{broken") is None
    assert peek_repository(b'{"project": {"path_with_namespace": 5}}') is None
    assert peek_repository(b'{"project": null}') is None


# --- parse_event ------------------------------------------------------------------------


def gl_headers(event: str, delivery: str = "idem-1") -> dict[str, str]:
    return {"X-Gitlab-Event": event, "Idempotency-Key": delivery}


def test_push_hook() -> None:
    event = parse_event(gl_headers("Push Hook"), fixture("gitlab_push.json"))
    assert event == Push(
        forge="gitlab",
        repo="acme/shop",
        ref="refs/heads/main",
        branch="main",
        sha="da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        before="95790bf891e76fee5e1747ab589903a6a1f80f22",
        deleted=False,
        pusher="jsmith",
        delivery_id="idem-1",
        is_tag=False,
        project_id=15,
    )


def test_push_hook_without_checkout_sha_deploys_after() -> None:
    payload = fixture("gitlab_push.json")
    del payload["checkout_sha"]
    payload["after"] = "1111111111111111111111111111111111111111"
    event = parse_event(gl_headers("Push Hook"), payload)
    assert isinstance(event, Push)
    assert event.sha == "1111111111111111111111111111111111111111"
    assert event.deleted is False


def test_push_hook_that_deletes_a_branch() -> None:
    payload = fixture("gitlab_push.json")
    payload.update(after=ZERO, checkout_sha=None, commits=[], total_commits_count=0)
    event = parse_event(gl_headers("Push Hook"), payload)
    assert isinstance(event, Push)
    assert event.deleted is True and event.sha == ZERO


def test_push_hook_with_null_checkout_sha_is_a_delete() -> None:
    payload = fixture("gitlab_push.json")
    payload["checkout_sha"] = None
    event = parse_event(gl_headers("Push Hook"), payload)
    assert isinstance(event, Push) and event.deleted is True


def test_tag_push_hook_is_a_tag_push_of_the_tagged_commit() -> None:
    event = parse_event(gl_headers("Tag Push Hook"), fixture("gitlab_tag_push.json"))
    assert isinstance(event, Push)
    assert (event.ref, event.branch, event.is_tag) == ("refs/tags/v1.0.0", None, True)
    # an annotated tag: `after` is the tag object, checkout_sha the commit it points at
    assert event.sha == "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
    assert event.deleted is False


@pytest.mark.parametrize("path", ["project.path_with_namespace", "ref", "after", "user_username"])
def test_push_hook_missing_a_field_is_400_naming_it(path: str) -> None:
    payload = fixture("gitlab_push.json")
    *parents, leaf = path.split(".")
    node = payload
    for key in parents:
        node = node[key]
    del node[leaf]
    with pytest.raises(WebhookRejected) as exc_info:
        parse_event(gl_headers("Push Hook"), payload)
    assert path in rejected(exc_info, 400).public_message


def test_push_hook_with_a_bad_checkout_sha_is_400() -> None:
    payload = fixture("gitlab_push.json")
    payload["checkout_sha"] = "-c core.sshCommand=evil"
    with pytest.raises(WebhookRejected) as exc_info:
        parse_event(gl_headers("Push Hook"), payload)
    assert "checkout_sha" in rejected(exc_info, 400).public_message


def test_event_header_that_contradicts_object_kind_is_400() -> None:
    # Headers are not signed: a tag push relabelled as a branch push must not pass as one.
    with pytest.raises(WebhookRejected) as exc_info:
        parse_event(gl_headers("Push Hook"), fixture("gitlab_tag_push.json"))
    assert "object_kind" in rejected(exc_info, 400).public_message


def test_note_hook_on_a_commit() -> None:
    event = parse_event(gl_headers("Note Hook", "idem-2"), fixture("gitlab_note_commit.json"))
    assert event == CommentCommand(
        forge="gitlab",
        repo="acme/shop",
        sha="da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        body="/rollback",
        author="root",
        author_id=1,
        comment_id=1243,
        delivery_id="idem-2",
        installation_id=None,
        project_id=15,
    )


def test_note_hook_without_action_counts_as_created() -> None:
    payload = fixture("gitlab_note_commit.json")
    del payload["object_attributes"]["action"]
    event = parse_event(gl_headers("Note Hook"), payload)
    assert isinstance(event, CommentCommand) and event.comment_id == 1243


def test_note_hook_takes_the_commit_from_object_attributes_without_a_commit_object() -> None:
    payload = fixture("gitlab_note_commit.json")
    del payload["commit"]
    payload["object_attributes"]["commit_id"] = "2222222222222222222222222222222222222222"
    event = parse_event(gl_headers("Note Hook"), payload)
    assert isinstance(event, CommentCommand)
    assert event.sha == "2222222222222222222222222222222222222222"


def test_note_hook_without_any_commit_is_400() -> None:
    payload = fixture("gitlab_note_commit.json")
    del payload["commit"]
    del payload["object_attributes"]["commit_id"]
    with pytest.raises(WebhookRejected) as exc_info:
        parse_event(gl_headers("Note Hook"), payload)
    assert "commit_id" in rejected(exc_info, 400).public_message


@pytest.mark.parametrize(
    ("changes", "reason_word"),
    [
        ({"noteable_type": "MergeRequest"}, "MergeRequest"),
        ({"action": "update"}, "update"),
        ({"system": True}, "system"),
    ],
)
def test_note_hooks_that_are_not_new_commit_comments_are_ignored(
    changes: dict[str, Any], reason_word: str
) -> None:
    payload = fixture("gitlab_note_commit.json")
    payload["object_attributes"].update(changes)
    event = parse_event(gl_headers("Note Hook"), payload)
    assert isinstance(event, Ignored)
    assert event.event_name == "Note Hook" and reason_word in event.reason


@pytest.mark.parametrize("path", ["user.username", "user.id", "object_attributes.id"])
def test_note_hook_missing_a_field_is_400_naming_it(path: str) -> None:
    payload = fixture("gitlab_note_commit.json")
    parent, leaf = path.split(".")
    del payload[parent][leaf]
    with pytest.raises(WebhookRejected) as exc_info:
        parse_event(gl_headers("Note Hook"), payload)
    assert path in rejected(exc_info, 400).public_message


@pytest.mark.parametrize("name", ["System Hook", "Merge Request Hook", "Deployment Hook"])
def test_other_hooks_are_ignored(name: str) -> None:
    # A system hook's push has object_kind "push" too; it still is not a project push.
    event = parse_event(gl_headers(name, "idem-3"), fixture("gitlab_push.json"))
    assert isinstance(event, Ignored)
    assert (event.forge, event.delivery_id, event.event_name) == ("gitlab", "idem-3", name)


def test_missing_event_header_is_400() -> None:
    with pytest.raises(WebhookRejected) as exc_info:
        parse_event({"Idempotency-Key": "idem"}, fixture("gitlab_push.json"))
    assert "X-Gitlab-Event" in rejected(exc_info, 400).public_message


def test_missing_delivery_id_is_400() -> None:
    with pytest.raises(WebhookRejected) as exc_info:
        parse_event({"X-Gitlab-Event": "Push Hook"}, fixture("gitlab_push.json"))
    rejected(exc_info, 400)


# --- bytes that are not UTF-8, text that is not Unicode -------------------------------------

NOT_UTF8 = b"\xff\xa0".decode("utf-8", "surrogateescape")  # as aiohttp hands such a header over


def test_a_token_header_that_is_not_utf8_is_refused_not_a_crash() -> None:
    with pytest.raises(WebhookRejected) as exc_info:
        verify(
            {"X-Gitlab-Token": TOKEN + NOT_UTF8}, b"{}", token=TOKEN, signing_token=None, now=NOW
        )
    assert exc_info.value.status in (400, 401)
    with pytest.raises(WebhookRejected) as exc_info:
        verify_token(TOKEN + NOT_UTF8, TOKEN)
    rejected(exc_info, 401)


@pytest.mark.parametrize("name", ["webhook-id", "webhook-signature", "webhook-timestamp"])
def test_signing_headers_that_are_not_utf8_are_refused_not_a_crash(name: str) -> None:
    body = fixture_bytes("gitlab_push.json")
    hdrs = {**signed_headers(body), name: "v1," + NOT_UTF8}
    with pytest.raises(WebhookRejected) as exc_info:
        verify_signing(hdrs, body, SIGNING_TOKEN, NOW)
    assert exc_info.value.status in (400, 401)


def test_a_signature_that_is_not_ascii_is_refused_with_401() -> None:
    body = fixture_bytes("gitlab_push.json")
    hdrs = signed_headers(body, sig="v1,é" + signature(body).partition(",")[2])
    with pytest.raises(WebhookRejected) as exc_info:
        verify_signing(hdrs, body, SIGNING_TOKEN, NOW)
    rejected(exc_info, 401)


@pytest.mark.parametrize("name", ["Idempotency-Key", "X-Gitlab-Event"])
def test_a_delivery_or_event_header_that_is_not_utf8_is_a_400(name: str) -> None:
    hdrs = {**gl_headers("Push Hook"), name: "x" + NOT_UTF8}
    with pytest.raises(WebhookRejected) as exc_info:
        parse_event(hdrs, fixture("gitlab_push.json"))
    assert "is not UTF-8 text" in rejected(exc_info, 400).public_message


def test_a_lone_surrogate_in_the_user_name_is_a_400() -> None:
    payload = fixture("gitlab_push.json")
    payload["user_username"] = "a\ud800"
    with pytest.raises(WebhookRejected) as exc_info:
        parse_event(gl_headers("Push Hook"), payload)
    assert "is not valid Unicode text" in rejected(exc_info, 400).public_message


@pytest.mark.parametrize(
    ("name", "fixture_name"),
    [("Pipeline Hook", "gitlab_pipeline.json"), ("Job Hook", "gitlab_job.json")],
)
def test_pipeline_and_job_hooks_say_which_commits_checks_changed(
    name: str, fixture_name: str
) -> None:
    event = parse_event(gl_headers(name, "idem-9"), fixture(fixture_name))
    assert event == ChecksChanged(
        forge="gitlab",
        repo="acme/shop",
        sha="bcbb5ec396a2c0f828686f14fac9b80b780504f2",
        delivery_id="idem-9",
        event_name=name,
        project_id=15,
    )


def test_a_pipeline_hook_whose_object_kind_is_not_pipeline_is_400() -> None:
    with pytest.raises(WebhookRejected):
        parse_event(gl_headers("Pipeline Hook", "idem-10"), fixture("gitlab_push.json"))
