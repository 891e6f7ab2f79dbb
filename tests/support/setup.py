"""One project for a test: its name, slot ports and data folder (`Workspace`, enough for tests
that never reach Docker or nginx), or wired to a real nginx and a real repository (`Setup`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gatebot.settings import Settings
from tests.support.real import Nginx, SampleRepo, free_port, free_port_pair
from tests.support.settings import build_settings, project_config

_used: set[int] = set()


class Workspace:
    """A project named `name` in `tmp_path`; its repository URL points nowhere and no nginx
    is configured, so it serves tests whose subject ends before a deploy."""

    nginx: Nginx | None = None

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.tmp_path = tmp_path
        self.name = name
        self.base_port = free_port_pair(_used)
        self.site_port = free_port()
        self.data_dir = tmp_path / "data"

    @property
    def repo_url(self) -> str:
        return f"file://{self.tmp_path}/no-repository.git"

    def project(self, **overrides: Any) -> dict[str, Any]:
        return project_config(
            self.name, self.repo_url, self.base_port, self.site_port, **overrides
        )

    def settings(self, **overrides: Any) -> Settings:
        """Settings with this one project (keys in `overrides` change it)."""
        return build_settings(self.data_dir, [self.project(**overrides)], nginx=self.nginx)

    @property
    def site_url(self) -> str:
        return f"http://127.0.0.1:{self.site_port}"


class Setup(Workspace):
    """One project wired to a real nginx and a real repository of the sample app."""

    def __init__(self, tmp_path: Path, nginx: Nginx, repo: SampleRepo, name: str) -> None:
        super().__init__(tmp_path, name)
        self.nginx: Nginx = nginx
        self.repo = repo

    @property
    def repo_url(self) -> str:
        return self.repo.url
