"""git behind an async interface: clone on first use, fetch afterwards, check out an exact SHA;
ask a remote for a branch head without cloning (polling); tell whether one commit descends from
another (a deploy never moves a project backwards).

Every git runs as a child of the event loop (no thread), in a process group of its own, and
is killed with that group (git's own children, such as index-pack, among them) when the job
that runs it is cancelled (a job cut off at shutdown) or the source is closed; the kernel
kills it (PR_SET_PDEATHSIG) when gatebot itself dies. A project's checkout is locked (an flock
on `checkouts/<project>.lock`) while git writes into it, and each git inherits the lock, so a
git left behind by a killed gatebot still holds it: the next checkout waits for it to end
(CHECKOUT_WAIT_SECONDS) instead of writing beside it. Errors never carry credentials: URLs in
messages are passed through `redact_url` first.

Credentials in an http(s) repository URL never reach the checkout's ``.git/config`` (which a
build context or a backup could carry away): the remote is stored without them, and each
fetch gets them from a credential helper given on its own command line that reads them from
the git process's environment (not visible to other users, unlike arguments).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from gatebot.aio import flock_within
from gatebot.errors import SourceError
from gatebot.redact import redact_url
from gatebot.source import Checkout

_SHA = re.compile(r"^[0-9a-fA-F]{7,64}$")
CHECKOUT_WAIT_SECONDS = 60.0  # for another holder of a checkout's lock to let go
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


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


class GitFailed(Exception):
    """git exited non-zero: its subcommand, exit status and message (credentials still in)."""

    def __init__(self, subcommand: str, status: int, stderr: str) -> None:
        super().__init__(f"git {subcommand} failed: {stderr}")
        self.subcommand = subcommand
        self.status = status
        self.stderr = stderr

    def source_error(self) -> SourceError:
        return SourceError(f"git {self.subcommand} failed: {redact_url(self.stderr)}")


class GitSource:
    """A `Source` over git (see gatebot/source.py)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._running: set[asyncio.subprocess.Process] = set()

    def path(self, project: str) -> Path:
        return self.workdir / project

    async def close(self) -> None:
        """Kill every git still running (gatebot is stopping)."""
        for process in list(self._running):
            _kill_group(process)

    async def checkout(self, project: str, url: str, branch: str, sha: str | None) -> Checkout:
        """Bring the project's working copy to `sha` (or the head of `branch`)."""
        _check_sha(sha)
        path = self.path(project)
        async with self._locked(project) as lock:
            try:
                full, message = await self._fetch(path, url, branch, sha, lock)
                await self._git(["checkout", "--force", "--detach", full], path, lock)
                await self._git(["clean", "-ffdx"], path, lock)
            except GitFailed as exc:
                raise exc.source_error() from None
        return Checkout(path=path, sha=full, message=message)

    async def fetch(self, project: str, url: str, branch: str, sha: str | None) -> str:
        """Bring the branch (and `sha`, if it is elsewhere) into the project's working copy
        without checking anything out; the full SHA of `sha` (or of the branch head)."""
        _check_sha(sha)
        async with self._locked(project) as lock:
            try:
                return (await self._fetch(self.path(project), url, branch, sha, lock))[0]
            except GitFailed as exc:
                raise exc.source_error() from None

    async def _fetch(
        self, path: Path, url: str, branch: str, sha: str | None, lock: int
    ) -> tuple[str, str]:
        """(full SHA, subject line) of `sha` or the branch head, once fetched."""
        clean_url, credentials = split_credentials(url)
        fresh = await self._open_or_init(path, clean_url, lock)
        # A new working copy fetches every branch, as a clone would; later only `branch`.
        wanted = "*" if fresh else branch
        spec = f"+refs/heads/{wanted}:refs/remotes/origin/{wanted}"
        await self._git(["fetch", "--prune", "origin", spec], path, lock, credentials)
        target = sha or f"refs/remotes/origin/{branch}"
        found = await self._commit(path, target, lock)
        if found is not None:
            return found
        if sha is None:
            raise SourceError(f"branch {branch!r} not found in the repository")
        # Not on the branch (force-pushed away, or another ref): ask for it directly.
        try:
            await self._git(["fetch", "origin", sha], path, lock, credentials)
        except GitFailed:
            raise SourceError(f"commit {sha} not found in the repository") from None
        found = await self._commit(path, sha, lock)
        if found is None:
            raise SourceError(f"commit {sha} not found in the repository")
        return found

    async def _commit(self, path: Path, ref: str, lock: int) -> tuple[str, str] | None:
        try:
            out = await self._git(
                ["log", "-1", "--format=%H%n%B", f"{ref}^{{commit}}", "--"], path, lock
            )
        except GitFailed:
            return None
        full, _, message = out.partition("\n")
        lines = message.strip().splitlines()
        return full.strip(), (lines[0] if lines else "")

    async def remote_head(self, url: str, branch: str) -> str | None:
        """The commit at the head of `branch` in the repository at `url`, asked with
        ``git ls-remote`` (no clone; credentials through the helper, never as arguments);
        None when the branch does not exist."""
        ref = f"refs/heads/{branch}"
        clean_url, credentials = split_credentials(url)
        try:
            out = await self._git(["ls-remote", clean_url, ref], None, None, credentials)
        except GitFailed as exc:
            raise exc.source_error() from None
        for line in out.splitlines():
            sha, _, name = line.partition("\t")
            if name.strip() == ref:
                return sha.strip()
        return None

    async def is_ancestor(self, project: str, ancestor: str, descendant: str) -> bool:
        """Whether `ancestor` is `descendant` or one of its ancestors, by ``git merge-base
        --is-ancestor`` in the project's checkout (both commits must have been fetched)."""
        for sha in (ancestor, descendant):
            _check_sha(sha)
        path = self.path(project)
        if not (path / ".git").is_dir():
            raise SourceError(f"no checkout of {project} yet")
        try:
            await self._git(["merge-base", "--is-ancestor", ancestor, descendant], path, None)
        except GitFailed as exc:
            if exc.status == 1:
                return False
            raise exc.source_error() from None
        return True

    async def _open_or_init(self, path: Path, url: str, lock: int) -> bool:
        """Make `path` a working copy with `url` (no credentials) as its origin: kept when it
        is one, made new and empty (fetched into next) when there is none or it is broken (an
        interrupted first clone). Whether it is new."""
        if (path / ".git").is_dir():
            try:
                origin = (await self._git(["remote", "get-url", "origin"], path, lock)).strip()
                if origin != url:
                    await self._git(["remote", "set-url", "origin", url], path, lock)
                return False
            except GitFailed:
                pass  # broken, or no origin: start again below
        await asyncio.to_thread(_remove_tree, path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        await self._git(["init", "-q", str(path)], path.parent, lock)
        await self._git(["remote", "add", "origin", url], path, lock)
        return True

    @asynccontextmanager
    async def _locked(self, project: str) -> AsyncIterator[int]:
        """The checkout's flock, held for the block (waiting up to CHECKOUT_WAIT_SECONDS for
        another holder: a git a killed gatebot left behind); its fd, for git to inherit."""
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.workdir / f"{project}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if not await flock_within(fd, CHECKOUT_WAIT_SECONDS):
                raise SourceError(
                    f"the checkout of {project} stayed locked for "
                    f"{CHECKOUT_WAIT_SECONDS:g}s (a git still running?)"
                )
            yield fd
        finally:
            os.close(fd)

    async def _git(
        self,
        args: list[str],
        cwd: Path | None,
        lock: int | None,
        credentials: Credentials | None = None,
    ) -> str:
        """Run git with `args` in `cwd` (its own process group, the checkout's lock `lock`
        inherited); its output. Cancelled: the group is killed. Raise GitFailed."""
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        command = ["git"]
        if credentials is not None:
            env.update(_credential_env(credentials))
            command += [word for helper in _HELPERS for word in ("-c", helper)]
        process = await asyncio.create_subprocess_exec(
            *command,
            *args,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a group of its own, killed as one
            pass_fds=(lock,) if lock is not None else (),
            preexec_fn=_die_with_parent,
        )
        self._running.add(process)
        try:
            out, err = await process.communicate()
        except BaseException:  # cancelled (the job was cut off) or worse: no git left behind
            _kill_group(process)
            await asyncio.shield(process.wait())
            raise
        finally:
            self._running.discard(process)
        if process.returncode != 0:
            stderr = err.decode("utf-8", "replace").strip()
            raise GitFailed(_subcommand(command + args), process.returncode or 1, stderr)
        return out.decode("utf-8", "replace")


def _remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def _die_with_parent() -> None:
    """In the child, before git runs: SIGKILL when gatebot's process dies (Linux)."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _check_sha(sha: str | None) -> None:
    if sha is not None and not _SHA.fullmatch(sha):
        raise SourceError(f"{sha!r} is not a commit SHA (7 to 64 hex digits)")


def _credential_env(credentials: Credentials) -> dict[str, str]:
    return {
        _USER_ENV: credentials.username,
        _PASSWORD_ENV: credentials.password,
        "GIT_TERMINAL_PROMPT": "0",
    }


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
