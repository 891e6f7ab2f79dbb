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
