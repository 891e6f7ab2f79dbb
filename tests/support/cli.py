"""Running gatebot's command line as an operator does: a config file, a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.settings import write_config
from tests.support.setup import Setup


def gatebot(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatebot", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def config_file(setup: Setup, **overrides: Any) -> Path:
    return write_config(
        setup.tmp_path / "gatebot.toml",
        setup.data_dir,
        [setup.project(**overrides)],
        nginx=setup.nginx,
    )
