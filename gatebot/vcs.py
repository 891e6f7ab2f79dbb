"""git behind an async interface: clone on first use, fetch afterwards, check out an exact SHA;
ask a remote for a branch head without cloning (polling); tell whether one commit descends from
another (a deploy never moves a project backwards).

gitpython blocks, so every call runs in a thread. Errors never carry credentials: URLs in
messages are passed through `redact_url` first.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import git

from gatebot.errors import SourceError

_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]{0,31}://)[^/@\s]{1,512}@")
_SHA = re.compile(r"^[0-9a-fA-F]{7,64}$")


def redact_url(text: str) -> str:
    """Hide ``user:password@`` in every URL inside `text`."""
    return _CREDENTIALS.sub(r"\g<scheme>***@", text)


@dataclass(frozen=True)
class Checkout:
    path: Path
    sha: str
    message: str


class GitSource:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def path(self, project: str) -> Path:
        return self.workdir / project

    async def checkout(self, project: str, url: str, branch: str, sha: str | None) -> Checkout:
        """Bring the project's working copy to `sha` (or the head of `branch`)."""
        if sha is not None and not _SHA.match(sha):
            raise SourceError(f"{sha!r} is not a commit SHA (7 to 64 hex digits)")
        return await asyncio.to_thread(self._checkout, project, url, branch, sha)

    async def fetch(self, project: str, url: str, branch: str, sha: str | None) -> str:
        """Bring the branch (and `sha`, if it is elsewhere) into the project's working copy
        without checking anything out; the full SHA of `sha` (or of the branch head)."""
        if sha is not None and not _SHA.match(sha):
            raise SourceError(f"{sha!r} is not a commit SHA (7 to 64 hex digits)")

        def run() -> str:
            try:
                return self._fetch(self.path(project), url, branch, sha)[1].hexsha
            except git.GitCommandError as exc:
                raise SourceError(f"git fetch failed: {redact_url(_stderr(exc))}") from None

        return await asyncio.to_thread(run)

    def _fetch(
        self, path: Path, url: str, branch: str, sha: str | None
    ) -> tuple[git.Repo, git.Commit]:
        repo = self._open_or_clone(path, url)
        repo.git.fetch("--prune", "origin", f"+refs/heads/{branch}:refs/remotes/origin/{branch}")
        target = sha or f"refs/remotes/origin/{branch}"
        try:
            return repo, repo.commit(target)
        except (git.BadName, ValueError):
            if sha is None:
                raise SourceError(f"branch {branch!r} not found in the repository") from None
            # Not on the branch (force-pushed away, or another ref): ask for it directly.
            try:
                repo.git.fetch("origin", sha)
                return repo, repo.commit(sha)
            except (git.GitCommandError, git.BadName, ValueError):
                raise SourceError(f"commit {sha} not found in the repository") from None

    def _checkout(self, project: str, url: str, branch: str, sha: str | None) -> Checkout:
        path = self.path(project)
        try:
            repo, commit = self._fetch(path, url, branch, sha)
            repo.git.checkout("--force", "--detach", commit.hexsha)
            repo.git.clean("-ffdx")
            message = str(commit.message).strip().splitlines()[0] if commit.message else ""
            return Checkout(path=path, sha=commit.hexsha, message=message)
        except git.GitCommandError as exc:
            detail = redact_url(_stderr(exc))
            raise SourceError(
                f"git {exc.command[1] if exc.command else ''} failed: {detail}"
            ) from None

    async def remote_head(self, url: str, branch: str) -> str | None:
        """The commit at the head of `branch` in the repository at `url`, asked with
        ``git ls-remote`` (no clone); None when the branch does not exist."""
        return await asyncio.to_thread(self._remote_head, url, branch)

    def _remote_head(self, url: str, branch: str) -> str | None:
        ref = f"refs/heads/{branch}"
        try:
            out = git.Git().ls_remote(url, ref)
        except git.GitCommandError as exc:
            raise SourceError(f"git ls-remote failed: {redact_url(_stderr(exc))}") from None
        for line in str(out).splitlines():
            sha, _, name = line.partition("\t")
            if name.strip() == ref:
                return sha.strip()
        return None

    async def is_ancestor(self, project: str, ancestor: str, descendant: str) -> bool:
        """Whether `ancestor` is `descendant` or one of its ancestors, by ``git merge-base
        --is-ancestor`` in the project's checkout (both commits must have been fetched)."""
        for sha in (ancestor, descendant):
            if not _SHA.match(sha):
                raise SourceError(f"{sha!r} is not a commit SHA (7 to 64 hex digits)")
        return await asyncio.to_thread(self._is_ancestor, project, ancestor, descendant)

    def _is_ancestor(self, project: str, ancestor: str, descendant: str) -> bool:
        try:
            git.Repo(self.path(project)).git.merge_base("--is-ancestor", ancestor, descendant)
        except git.GitCommandError as exc:
            if exc.status == 1:
                return False
            raise SourceError(f"git merge-base failed: {redact_url(_stderr(exc))}") from None
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise SourceError(f"no checkout of {project} yet") from None
        return True

    def _open_or_clone(self, path: Path, url: str) -> git.Repo:
        if (path / ".git").is_dir():
            try:
                repo = git.Repo(path)
                if repo.remotes.origin.url != url:
                    repo.remotes.origin.set_url(url)
                return repo
            except (
                git.InvalidGitRepositoryError,
                git.NoSuchPathError,
                AttributeError,
                ValueError,
                IndexError,
            ):
                pass  # broken (an interrupted clone, say): start again below
        if path.exists():
            shutil.rmtree(path)  # a half-made clone from an interrupted first run
        path.parent.mkdir(parents=True, exist_ok=True)
        return git.Repo.clone_from(url, path, no_checkout=True)


def _stderr(exc: git.GitCommandError) -> str:
    """git's own message, without gitpython's ``stderr: '...'`` wrapping."""
    text = str(exc.stderr or exc).strip()
    match = re.match(r"^stderr: '(.*)'$", text, flags=re.S)
    return (match.group(1) if match else text).strip()
