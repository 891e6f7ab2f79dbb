"""The Source interface: what the pipeline needs to get a project's code at an exact commit.

`GitSource` (gatebot/vcs.py) is the implementation; the engine holds a `Source`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Checkout:
    path: Path
    sha: str
    message: str


class Source(Protocol):
    async def checkout(self, project: str, url: str, branch: str, sha: str | None) -> Checkout:
        """Bring the project's working copy to `sha` (or the head of `branch`); raise
        SourceError, never showing a credential, when that cannot be done."""

    async def fetch(self, project: str, url: str, branch: str, sha: str | None) -> str:
        """Bring the branch (and `sha`) into the working copy without checking it out; the
        full SHA of `sha` (or of the branch head)."""

    async def remote_head(self, url: str, branch: str) -> str | None:
        """The commit at the head of `branch` in the repository, without a clone; None when
        the branch does not exist."""

    async def is_ancestor(self, project: str, ancestor: str, descendant: str) -> bool:
        """Whether `ancestor` is `descendant` or one of its ancestors (both fetched)."""
