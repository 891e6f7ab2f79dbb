"""The /rollback comment grammar and project choice (pure)."""

from __future__ import annotations

import pytest

from gatebot.commands import CommandError, RollbackCommand, choose_project, parse_comment


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("/rollback", RollbackCommand(None, None)),
        ("  /rollback  \nbecause the checkout page is broken", RollbackCommand(None, None)),
        ("/rollback shop", RollbackCommand("shop", None)),
        ("/rollback to v3", RollbackCommand(None, "v3")),
        ("/rollback to 3", RollbackCommand(None, "3")),
        ("/rollback shop to abc1234", RollbackCommand("shop", "abc1234")),
        ("/ROLLBACK TO 12", RollbackCommand(None, "12")),
    ],
)
def test_commands_are_understood(body: str, expected: RollbackCommand) -> None:
    assert parse_comment(body) == expected


@pytest.mark.parametrize(
    "body", ["looks good", "", "   ", "please /rollback", "/rollbacks", "LGTM\n/rollback"]
)
def test_other_comments_are_no_command(body: str) -> None:
    assert parse_comment(body) is None


@pytest.mark.parametrize(
    "body",
    [
        "/rollback shop now",
        "/rollback to",
        "/rollback to v3 please",
        "/rollback Shop!",
        "/rollback to main",
        "/rollback shop to ../etc",
    ],
)
def test_malformed_commands_get_the_usage(body: str) -> None:
    result = parse_comment(body)
    assert isinstance(result, CommandError)
    assert "usage: `/rollback [PROJECT] [to VERSION|SHA]`" in result.message


def test_project_choice() -> None:
    assert choose_project(RollbackCommand(None, None), ["shop"]) == "shop"
    assert choose_project(RollbackCommand("api", None), ["shop", "api"]) == "api"
    several = choose_project(RollbackCommand(None, None), ["shop", "api"])
    assert isinstance(several, CommandError) and "`/rollback api`" in several.message
    unknown = choose_project(RollbackCommand("web", None), ["shop"])
    assert isinstance(unknown, CommandError) and "'web'" in unknown.message
