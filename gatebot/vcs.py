"""git behind an async interface: clone on first use, fetch afterwards, check out an exact SHA;
ask a remote for a branch head without cloning (polling); tell whether one commit descends from
another (a deploy never moves a project backwards).

gitpython blocks, so every call runs in a thread. Errors never carry credentials: URLs in
messages are passed through `redact_url` first.

Credentials in an http(s) repository URL never reach the checkout's ``.git/config`` (which a
build context or a backup could carry away): the remote is stored without them, and each
fetch gets them from a credential helper given on its own command line that reads them from
the git process's environment (not visible to other users, unlike arguments).
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import git

from gatebot.errors import SourceError
from gatebot.redact import redact_url
from gatebot.source import Checkout

_SHA = re.compile(r"^[0-9a-fA-F]{7,64}$")


_USER_ENV, _PASSWORD_ENV = "GATEBOT_GIT_USERNAME", "GATEBOT_GIT_PASSWORD"  # noqa: S105
# The first, empty value drops every helper configured elsewhere (none may store the
# credentials); the second answers git's question from the environment.
_HELPERS = [
    "credential.helper=",
    'credential.helper=!f() { test "$1" = get || exit 0; '
    f'echo "username=${{{_USER_ENV}}}"; echo "password=${{{_PASSWORD_ENV}}}"; }}; f',
]


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def split_credentials(url: str) -> tuple[str, Credentials | None]:
    """(the URL without ``user:password@``, the credentials) for an http(s) URL that has them;
    any other URL comes back as it is, with None (ssh keeps its user: it is not a secret)."""
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:
        return url, None
    if parts.scheme.lower() not in ("http", "https") or (user is None and password is None):
        return url, None
    host = parts.netloc.rpartition("@")[2]
    clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return clean, Credentials(unquote(user or ""), unquote(password or ""))


class GitSource:
    """A `Source` over git (see gatebot/source.py)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def path(self, project: str) -> Path:
        return self.workdir / project

    async def checkout(self, project: str, url: str, branch: str, sha: str | None) -> Checkout:
        """Bring the project's working copy to `sha` (or the head of `branch`)."""
        _check_sha(sha)
        return await asyncio.to_thread(self._checkout, project, url, branch, sha)

    async def fetch(self, project: str, url: str, branch: str, sha: str | None) -> str:
        """Bring the branch (and `sha`, if it is elsewhere) into the project's working copy
        without checking anything out; the full SHA of `sha` (or of the branch head)."""
        _check_sha(sha)

        def run() -> str:
            try:
                return self._fetch(self.path(project), url, branch, sha)[1].hexsha
            except git.GitCommandError as exc:
                detail = redact_url(_stderr(exc))
                raise SourceError(f"git {_subcommand(exc.command)} failed: {detail}") from None

        return await asyncio.to_thread(run)

    def _fetch(
        self, path: Path, url: str, branch: str, sha: str | None
    ) -> tuple[git.Repo, git.Commit]:
        clean_url, credentials = split_credentials(url)
        repo, fresh = self._open_or_init(path, clean_url)
        # A new working copy fetches every branch, as a clone would; later only `branch`.
        wanted = "*" if fresh else branch
        with _credentials(repo, credentials) as remote:
            remote.fetch("--prune", "origin", f"+refs/heads/{wanted}:refs/remotes/origin/{wanted}")
        target = sha or f"refs/remotes/origin/{branch}"
        try:
            return repo, repo.commit(target)
        except (git.BadName, ValueError):
            if sha is None:
                raise SourceError(f"branch {branch!r} not found in the repository") from None
            # Not on the branch (force-pushed away, or another ref): ask for it directly.
            try:
                with _credentials(repo, credentials) as remote:
                    remote.fetch("origin", sha)
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
            raise SourceError(f"git {_subcommand(exc.command)} failed: {detail}") from None

    async def remote_head(self, url: str, branch: str) -> str | None:
        """The commit at the head of `branch` in the repository at `url`, asked with
        ``git ls-remote`` (no clone; credentials through the helper, never as arguments);
        None when the branch does not exist."""
        return await asyncio.to_thread(self._remote_head, url, branch)

    def _remote_head(self, url: str, branch: str) -> str | None:
        ref = f"refs/heads/{branch}"
        clean_url, credentials = split_credentials(url)
        command = git.Git()
        try:
            if credentials is None:
                out = command.ls_remote(clean_url, ref)
            else:
                with command.custom_environment(**_credential_env(credentials)):
                    out = command(c=_HELPERS).ls_remote(clean_url, ref)
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
            _check_sha(sha)
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

    def _open_or_init(self, path: Path, url: str) -> tuple[git.Repo, bool]:
        """The working copy at `path` with `url` (no credentials) as its origin; a new, empty
        one (fetched into next) when there is none or it is broken; and whether it is new."""
        if (path / ".git").is_dir():
            try:
                repo = git.Repo(path)
                if repo.remotes.origin.url != url:
                    repo.remotes.origin.set_url(url)
                return repo, False
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
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        repo = git.Repo.init(path)
        repo.create_remote("origin", url)
        return repo, True


def _check_sha(sha: str | None) -> None:
    if sha is not None and not _SHA.fullmatch(sha):
        raise SourceError(f"{sha!r} is not a commit SHA (7 to 64 hex digits)")


def _credential_env(credentials: Credentials) -> dict[str, str]:
    return {
        _USER_ENV: credentials.username,
        _PASSWORD_ENV: credentials.password,
        "GIT_TERMINAL_PROMPT": "0",
    }


@contextmanager
def _credentials(repo: git.Repo, credentials: Credentials | None) -> Iterator[git.Git]:
    """repo.git for one command, given `credentials` by the helper above when there are any."""
    if credentials is None:
        yield repo.git
        return
    with repo.git.custom_environment(**_credential_env(credentials)):
        yield repo.git(c=_HELPERS)


def _subcommand(command: object) -> str:
    """``fetch`` in ``git -c a=b -c c=d fetch --prune ...``."""
    words = [str(w) for w in command] if isinstance(command, list | tuple) else []
    skip = True  # the program itself
    for word in words:
        if skip:
            skip = False
        elif word == "-c":
            skip = True
        elif not word.startswith("-"):
            return word
    return ""


def _stderr(exc: git.GitCommandError) -> str:
    """git's own message, without gitpython's ``stderr: '...'`` wrapping."""
    text = str(exc.stderr or exc).strip()
    match = re.match(r"^stderr: '(.*)'$", text, flags=re.S)
    return (match.group(1) if match else text).strip()
