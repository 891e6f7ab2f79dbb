"""Token authentication in the store: odd presented values are unknown tokens, never errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gatebot.store import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "state" / "gatebot.db")
    yield opened
    await opened.close()


async def test_a_live_token_authenticates(store: Store) -> None:
    token, secret = await store.tokens.create("ci", "read")
    found = await store.tokens.authenticate(secret)
    assert found is not None and found.id == token.id


@pytest.mark.parametrize(
    "suffix",
    [
        "\n",  # a trailing newline once matched the pattern's "$"
        "\udca0",  # the byte 0xa0 as aiohttp decodes a header that is not UTF-8
        "\ud800",  # a lone surrogate from anywhere else
        "\xa0",
    ],
)
async def test_odd_variants_of_a_token_are_unknown_not_a_crash(store: Store, suffix: str) -> None:
    _, secret = await store.tokens.create("ci", "read")
    assert await store.tokens.authenticate(secret + suffix) is None
    assert await store.tokens.authenticate("gb_x" + suffix) is None


async def test_a_token_name_with_a_trailing_newline_is_refused(store: Store) -> None:
    from gatebot.store.tokens import TokenError

    with pytest.raises(TokenError, match="not a valid token name"):
        await store.tokens.create("ci\n", "read")

