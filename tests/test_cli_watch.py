"""`gatebot deploy` through the watch window, as a real process: progress, and the exit code
(0 the release stayed, 1 it was reverted)."""

from __future__ import annotations

from tests.support.cli import config_file, gatebot
from tests.support.setup import Setup

# Healthy at first, then its health page goes away 1.5 s after the container started.
BREAKS_LATER = (
    "#!/bin/sh\n"
    "(sleep 1.5; rm /www/health) &\n"
    'exec httpd -f -v -p "${PORT:-3000}" -h /www\n'
)


def test_deploy_prints_the_window_and_exits_1_when_it_reverts(setup: Setup) -> None:
    path = config_file(setup, watch_seconds=4, watch_failures=2, health={"interval": 0.2})
    setup.repo.commit("v1")
    kept = gatebot("-c", str(path), "deploy", setup.name)
    assert kept.returncode == 0, kept.stderr
    assert "  watch    watching " in kept.stdout
    assert "quiet for 4s: " in kept.stdout
    assert f"{setup.name}: v1 " in kept.stdout

    setup.repo.commit("v2", start_script=BREAKS_LATER)
    reverted = gatebot("-c", str(path), "deploy", setup.name)
    assert reverted.returncode == 1, reverted.stdout
    assert "revert: 2 failed health checks " in reverted.stdout
    assert "v1 live again on blue" in reverted.stdout
    last = reverted.stderr.strip().splitlines()[-1]
    assert last.startswith("gatebot: watch failed: 2 failed health checks "), reverted.stderr
    history = gatebot("-c", str(path), "history", setup.name)
    assert "v2    FAILED" in history.stdout and "watch: 2 failed health checks" in history.stdout
    assert "v1    ACTIVE" in history.stdout
