"""Real-browser fixtures: Debian's chromium, headless, driven by Playwright for Python.

Playwright's own browser downloads are not used (`playwright install` is never run): the
browser is /usr/bin/chromium, which scripts/test installs. Without it the browser tests are
skipped, saying so. Screenshots of every page a test visits go to $GATEBOT_SCREENSHOTS (by
default a new /tmp/gatebot-screenshots-* folder, which pytest's clean-up of its own temporary
folders leaves alone); the run's summary prints where.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_shots: dict[str, Path] = {}


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """The folder screenshots go to: $GATEBOT_SCREENSHOTS, or a new one in /tmp."""
    chosen = os.environ.get("GATEBOT_SCREENSHOTS")
    folder = Path(chosen) if chosen else Path(tempfile.mkdtemp(prefix="gatebot-screenshots-"))
    folder.mkdir(parents=True, exist_ok=True)
    _shots["folder"] = folder
    return folder


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if shutil.which(str(CHROMIUM)) is None:
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (scripts/test does)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[test]'")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    folder = _shots.get("folder")
    if folder is not None:
        terminalreporter.write_line(f"dashboard screenshots: {folder}")
