"""The dashboard in a real browser against a real `gatebot serve` doing real deploys: sign in,
see the project, Deploy and watch the deployment page go live without a reload, roll back,
see a busy project's 409, cancel a queued job, sign out; a read token sees no buttons, and a
commit message with <script> stays text. Every page visited is saved as a screenshot."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gatebot.pipeline.lock import ProjectLocks
from tests.browser.conftest import CHROMIUM
from tests.support.real import free_port
from tests.support.settings import config_toml
from tests.support.setup import Setup

if shutil.which(str(CHROMIUM)) is None:
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium (scripts/test does)",
        allow_module_level=True,
    )
expect = pytest.importorskip(
    "playwright.async_api", reason="playwright is not installed: pip install -e '.[test]'"
).expect
pytestmark = [pytest.mark.browser, pytest.mark.docker, pytest.mark.nginx]

EVIL = "<script>window.__xss=1</script>"
SLOW = {"start_period": 3.0, "interval": 0.1}  # each deploy takes a few seconds to watch
TIMEOUT = 60_000  # ms, for the browser's waits


class Server:
    """`gatebot serve` as a process, on a free port, with the test's configuration."""

    def __init__(self, setup: Setup, *, paused: bool = False) -> None:
        self.setup = setup
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # No webhook secret is configured, so polling would deploy the head at start-up: off,
        # the browser does the deploying here.
        project = setup.project(forge_repo=f"acme/{setup.name}", health=SLOW, poll_interval=0)
        tables: dict[str, dict[str, Any]] = {
            "server": {
                "data_dir": str(setup.data_dir),
                "listen": f"127.0.0.1:{self.port}",
                "public_url": self.base,
            },
            "nginx": {
                "conf_dir": str(setup.nginx.conf_dir),
                "test_cmd": setup.nginx.test_cmd,
                "reload_cmd": setup.nginx.reload_cmd,
            },
            "queue": {"paused": paused},
        }
        self.config = setup.tmp_path / "gatebot.toml"
        self.config.write_text(config_toml(tables, [project]))
        self.process: subprocess.Popen[str] | None = None
        self.log = setup.tmp_path / f"serve-{self.port}.log"

    def token(self, name: str, scope: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "gatebot", "-c", str(self.config), "token", "create", name,
             "--scope", scope],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        match = re.search(r"gb_[0-9a-f]{12}_[A-Za-z0-9_-]+", done.stdout)
        assert match, done.stdout
        return match.group(0)

    async def start(self) -> Server:
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gatebot", "-c", str(self.config), "serve"],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{self.base}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            assert self.process.poll() is None, self.log.read_text()
            await asyncio.sleep(0.1)
        raise AssertionError("gatebot serve did not get ready")

    def stop(self) -> float:
        """SIGTERM, then wait for the exit (SIGKILL after 60 s); the seconds it took."""
        started = time.monotonic()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return time.monotonic() - started


async def shot(page: Any, folder: Path, name: str) -> None:
    await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


async def sign_in(page: Any, base: str, token: str) -> None:
    await page.goto(f"{base}/")
    await page.get_by_label("API token").fill(token)
    async with page.expect_navigation():
        await page.keyboard.press("Enter")  # the keyboard is enough
    await page.get_by_role("button", name="Sign out").wait_for()


async def follow_to_live(page: Any) -> None:
    """On a deployment's page that is live when it loads: wait until the stream says ACTIVE
    and the stream has ended, and check that the page was never reloaded meanwhile."""
    await page.wait_for_url(re.compile(r".*/deployments/\d+$"), timeout=TIMEOUT)
    assert await page.locator("#live").get_attribute("class") == "live", "it was already over"
    await page.evaluate("window.__marker = 'not reloaded'")
    await page.locator("#live", has_text="finished").wait_for(timeout=TIMEOUT)
    assert await page.locator("#status").inner_text() == "ACTIVE"
    assert await page.evaluate("window.__marker") == "not reloaded"


async def test_the_dashboard_in_a_browser(
    setup: Setup, browser: Any, screenshots: Path, tmp_path: Path
) -> None:
    name = setup.name
    setup.repo.commit(f"v1 {EVIL}")
    server = await Server(setup).start()
    ops = server.token("ops", "deploy")
    viewer = server.token("viewer", "read")
    base = server.base
    context = await browser.new_context(viewport={"width": 1000, "height": 480})
    page = await context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    try:
        # Sign in; the overview shows the project, nothing live yet.
        await page.goto(f"{base}/projects/{name}")
        assert await page.get_by_role("heading", name="Sign in").is_visible()
        await shot(page, screenshots, "01-sign-in")
        await page.get_by_label("API token").fill("gb_wrong")
        await page.keyboard.press("Enter")
        await page.get_by_text("unknown or revoked").wait_for()
        await sign_in(page, base, ops)
        card = page.locator(f'li[data-project="{name}"]')
        await card.get_by_text("nothing live yet").wait_for()
        assert await page.locator("#queue").inner_text() == "running"

        # Deploy the branch head from the project's page, by keyboard: the browser goes to the
        # deployment's page, which follows it to the end without a reload.
        await card.get_by_role("link", name=name).click()
        await page.wait_for_url(f"{base}/projects/{name}")
        await shot(page, screenshots, "02-project-empty")
        await page.get_by_label("commit SHA to deploy").focus()
        await page.keyboard.press("Enter")
        await follow_to_live(page)
        await shot(page, screenshots, "03-deployment-followed")
        await page.reload()
        assert EVIL in await page.locator("dl").inner_text(), "the <script> is shown as text"
        await shot(page, screenshots, "04-deployment")

        # The overview updates by itself when a deploy runs (here one from the API).
        await page.goto(f"{base}/")
        await card.get_by_text("v1").first.wait_for()
        assert EVIL in await card.inner_text()
        await page.evaluate("window.__marker = 'not reloaded'")
        setup.repo.commit("v2")
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{base}/api/v1/deploy",
                json={"projectId": name},
                headers={"Authorization": f"Bearer {ops}"},
            ) as response,
        ):
            assert response.status == 202
        await card.get_by_text("Now", exact=True).wait_for(timeout=TIMEOUT)
        await shot(page, screenshots, "05-overview-deploying")
        await card.locator("dd", has_text="v2").first.wait_for(timeout=TIMEOUT)
        await card.get_by_text("Now", exact=True).wait_for(state="detached", timeout=TIMEOUT)
        assert await page.evaluate("window.__marker") == "not reloaded"
        assert "sample app v2" in await card.inner_text()
        await shot(page, screenshots, "06-overview")

        # Roll back to the previous release from the project's page.
        await page.goto(f"{base}/projects/{name}")
        await shot(page, screenshots, "07-project")
        await page.get_by_role("button", name="Roll back").click()
        await follow_to_live(page)
        assert await page.locator("h1").inner_text() == f"{name} v1"

        # A busy project (another process holds its lock): the 409's message, on the page.
        await page.goto(f"{base}/projects/{name}")
        async with ProjectLocks(setup.data_dir / "locks").hold(name, "deploy by cli:alice"):
            await page.get_by_role("button", name="Deploy").click()
            notice = page.get_by_role("alert")
            await notice.wait_for()
            assert "is busy: deploy by cli:alice" in await notice.inner_text()
            assert await page.get_by_role("button", name="Deploy").is_visible()
            await shot(page, screenshots, "08-project-busy")

        # Readable on a phone: nothing wider than the screen.
        phone = await browser.new_context(viewport={"width": 390, "height": 844})
        small = await phone.new_page()
        await sign_in(small, base, viewer)
        for path, called in (("/", "09-phone-overview"), (f"/projects/{name}", "10-phone-project")):
            await small.goto(f"{base}{path}")
            wide = await small.evaluate("document.documentElement.scrollWidth")
            assert wide <= 390, (path, wide)
            await shot(small, screenshots, called)
        # A read token sees everything, and no button.
        await small.goto(f"{base}/projects/{name}")
        assert await small.locator("#history tr").count() == 2  # the rollback made none
        for button in ("Deploy", "Roll back", "Cancel"):
            assert await small.get_by_role("button", name=button).count() == 0
        await shot(small, screenshots, "11-project-read-only")
        await phone.close()

        # Sign out.
        await page.get_by_role("button", name="Sign out").click()
        await page.wait_for_url(f"{base}/sign-in")
        await page.goto(f"{base}/")
        assert await page.get_by_role("heading", name="Sign in").is_visible()
    finally:
        await context.close()
        server.stop()

    # With the queue paused, a deploy waits: cancel it from the project's page.
    paused = await Server(setup, paused=True).start()
    context = await browser.new_context(viewport={"width": 1000, "height": 480})
    page = await context.new_page()
    try:
        await sign_in(page, paused.base, ops)
        assert await page.locator("#queue").inner_text() == "paused"
        await page.goto(f"{paused.base}/projects/{name}")
        await page.get_by_role("button", name="Deploy").click()
        await page.wait_for_url(re.compile(r".*/jobs/\d+$"))
        job_id = page.url.rsplit("/", 1)[1]
        await expect(page.locator("#state")).to_have_text("queued")  # across its reloads
        await shot(page, screenshots, "12-job-waiting")
        await page.goto(f"{paused.base}/projects/{name}")
        row = page.locator(f'tr[data-job="{job_id}"]')
        await row.get_by_role("button", name="Cancel").click()
        await page.wait_for_url(f"{paused.base}/projects/{name}")
        assert "cancelled" in await page.locator(f'tr[data-job="{job_id}"]').inner_text()
        await shot(page, screenshots, "13-project-cancelled")

        # An open overview (its stream never ends by itself) does not hold up a shutdown.
        await page.goto(f"{paused.base}/")
        await page.get_by_text("live: this page updates itself").wait_for()
        took = paused.stop()
        assert took < 5, f"shutdown took {took:.1f} s"
        assert paused.process is not None and paused.process.returncode == 0
    finally:
        await context.close()
        paused.stop()

    assert dialogs == [], "no script from a commit message ran"
    assert not [p for p in problems if "Content Security Policy" in p], problems
    assert os.listdir(screenshots)
