"""A gatebot server built by the real app factory over real Docker, nginx, git and SQLite."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gatebot.app import create_app
from gatebot.settings import Settings, parse_settings
from tests.conftest import Setup
from tests.deliveries import GITHUB_SECRET, GITLAB_TOKEN

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def server_settings(
    setup: Setup,
    *,
    queue: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    gitlab: dict[str, Any] | None = None,
    **project: Any,
) -> Settings:
    raw = setup.settings().model_dump(mode="json")
    raw["projects"] = [setup.project(forge_repo=f"acme/{setup.name}", **project)]
    raw["github"] = {"webhook_secret": GITHUB_SECRET}
    raw["gitlab"] = gitlab if gitlab is not None else {"webhook_token": GITLAB_TOKEN}
    raw["queue"] = {**raw.get("queue", {}), **(queue or {})}
    raw["server"] = {**raw["server"], **(server or {})}
    _drop_none(raw)
    return parse_settings(raw, source=setup.data_dir / "gatebot.toml")


def _drop_none(value: Any) -> None:
    if isinstance(value, dict):
        for key in [k for k, v in value.items() if v is None]:
            del value[key]
        for v in value.values():
            _drop_none(v)
    elif isinstance(value, list):
        for v in value:
            _drop_none(v)


@pytest.fixture
def start_server(aiohttp_client: Any, setup: Setup) -> ClientFactory:
    """Start gatebot (app factory, cleanup context and all) with settings for `setup`."""

    async def start(settings: Settings | None = None, **overrides: Any) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = await aiohttp_client(
            create_app(settings or server_settings(setup, **overrides))
        )
        return client

    return start
