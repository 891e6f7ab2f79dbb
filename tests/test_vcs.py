"""The git source against real repositories over file://: clone, fetch, exact SHAs, errors."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gatebot import vcs
from gatebot.errors import SourceError
from gatebot.vcs import GitSource, split_credentials
from tests.support.server import wait_until

GIT = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com"]


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True)
    return result.stdout.strip()


class Remote:
    """A bare repository and a working copy that pushes to it."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "remote.git"
        self.work = root / "author"
        root.mkdir(parents=True, exist_ok=True)
        git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)
        git("init", "-q", "-b", "main", str(self.work), cwd=root)
        git("remote", "add", "origin", str(self.bare), cwd=self.work)

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def commit(self, content: str, branch: str = "main", message: str | None = None) -> str:
        (self.work / "app.txt").write_text(content + "\n")
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", message or f"app {content}\n\nlonger body", cwd=self.work)
        git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path / "remote")


@pytest.fixture
def source(tmp_path: Path) -> GitSource:
    return GitSource(tmp_path / "checkouts")


def head(path: Path) -> str:
    return git("rev-parse", "HEAD", cwd=path)


def content(path: Path) -> str:
    return (path / "app.txt").read_text().strip()


async def test_first_checkout_clones(remote: Remote, source: GitSource) -> None:
    sha = remote.commit("v1")
    assert not source.path("shop").exists()
    checkout = await source.checkout("shop", remote.url, "main", None)
    assert checkout.path == source.path("shop")
    assert (checkout.path / ".git").is_dir()
    assert checkout.sha == sha == head(checkout.path)
    assert checkout.message == "app v1", "the subject line only"
    assert content(checkout.path) == "v1"


async def test_later_checkout_fetches_new_commits(remote: Remote, source: GitSource) -> None:
    remote.commit("v1")
    await source.checkout("shop", remote.url, "main", None)
    sha2 = remote.commit("v2")
    checkout = await source.checkout("shop", remote.url, "main", None)
    assert checkout.sha == sha2 == head(checkout.path)
    assert content(checkout.path) == "v2"


async def test_new_commit_by_sha_after_the_first_clone(remote: Remote, source: GitSource) -> None:
    remote.commit("v1")
    await source.checkout("shop", remote.url, "main", None)
    sha2 = remote.commit("v2")
    checkout = await source.checkout("shop", remote.url, "main", sha2)
    assert (checkout.sha, content(checkout.path)) == (sha2, "v2")


async def test_exact_sha_that_is_not_the_branch_head(remote: Remote, source: GitSource) -> None:
    sha1 = remote.commit("v1")
    remote.commit("v2")
    checkout = await source.checkout("shop", remote.url, "main", sha1)
    assert checkout.sha == sha1 == head(checkout.path)
    assert content(checkout.path) == "v1"


async def test_short_sha(remote: Remote, source: GitSource) -> None:
    sha1 = remote.commit("v1")
    remote.commit("v2")
    checkout = await source.checkout("shop", remote.url, "main", sha1[:8])
    assert checkout.sha == sha1
    assert content(checkout.path) == "v1"


async def test_sha_on_another_branch(remote: Remote, source: GitSource) -> None:
    remote.commit("v1")
    feature = remote.commit("feature", branch="feature")
    checkout = await source.checkout("shop", remote.url, "main", feature)
    assert (checkout.sha, content(checkout.path)) == (feature, "feature")


async def test_other_branch_head(remote: Remote, source: GitSource) -> None:
    remote.commit("v1")
    staging = remote.commit("staging", branch="staging")
    checkout = await source.checkout("shop", remote.url, "staging", None)
    assert checkout.sha == staging


async def test_unknown_sha(remote: Remote, source: GitSource) -> None:
    remote.commit("v1")
    with pytest.raises(SourceError, match="commit 0123456789abcdef0123 not found"):
        await source.checkout("shop", remote.url, "main", "0123456789abcdef0123")


@pytest.mark.parametrize(
    "sha", ["--upload-pack=x", "-x", "HEAD~1", "main", "abc123", "g123456", "a" * 65, "abc1234 "]
)
async def test_bad_sha_syntax_fails_before_any_git_call(
    remote: Remote, source: GitSource, sha: str
) -> None:
    remote.commit("v1")
    with pytest.raises(SourceError, match="is not a commit SHA"):
        await source.checkout("shop", remote.url, "main", sha)
    assert not source.path("shop").exists(), "nothing was cloned"
    assert not source.workdir.exists()


async def test_missing_branch(remote: Remote, source: GitSource) -> None:
    remote.commit("v1")
    with pytest.raises(SourceError) as caught:
        await source.checkout("shop", remote.url, "release", None)
    assert "release" in str(caught.value)


async def test_local_changes_are_discarded(remote: Remote, source: GitSource) -> None:
    remote.commit("v1")
    checkout = await source.checkout("shop", remote.url, "main", None)
    (checkout.path / "app.txt").write_text("edited by hand\n")
    (checkout.path / "stray.log").write_text("left behind\n")
    (checkout.path / "build").mkdir()
    again = await source.checkout("shop", remote.url, "main", None)
    assert content(again.path) == "v1"
    assert sorted(p.name for p in again.path.iterdir()) == [".git", "app.txt"]


async def test_changed_url_is_followed(remote: Remote, source: GitSource, tmp_path: Path) -> None:
    remote.commit("v1")
    await source.checkout("shop", remote.url, "main", None)
    moved = Remote(tmp_path / "moved")
    sha = moved.commit("moved")
    checkout = await source.checkout("shop", moved.url, "main", None)
    assert checkout.sha == sha
    assert git("remote", "get-url", "origin", cwd=checkout.path) == moved.url


async def test_half_made_checkout_without_git_is_replaced(
    remote: Remote, source: GitSource
) -> None:
    sha = remote.commit("v1")
    leftover = source.path("shop")
    (leftover / "partial").mkdir(parents=True)
    (leftover / "partial" / "junk").write_text("x")
    checkout = await source.checkout("shop", remote.url, "main", None)
    assert checkout.sha == sha
    assert not (leftover / "partial").exists()
    assert content(checkout.path) == "v1"


async def test_half_made_clone_with_git_but_no_origin_is_replaced(
    remote: Remote, source: GitSource
) -> None:
    sha = remote.commit("v1")
    leftover = source.path("shop")
    leftover.mkdir(parents=True)
    git("init", "-q", cwd=leftover)
    checkout = await source.checkout("shop", remote.url, "main", None)
    assert checkout.sha == sha


# --- credentials ----------------------------------------------------------------------------


async def test_clone_failure_does_not_reveal_credentials(source: GitSource) -> None:
    url = "https://user:s3cret@127.0.0.1:9/x.git"  # nothing listens on port 9
    with pytest.raises(SourceError) as caught:
        await source.checkout("shop", url, "main", None)
    message = str(caught.value)
    assert message.startswith("git fetch failed:")
    assert "127.0.0.1" in message
    assert "s3cret" not in message
    assert "s3cret" not in repr(caught.value)
    assert caught.value.__cause__ is None


class _AuthHandler(SimpleHTTPRequestHandler):
    """Serves a bare repository over git's "dumb" HTTP protocol to one user and password."""

    expected = ""

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_remote(remote: Remote) -> Iterator[tuple[Remote, str]]:
    """`remote` served at http://127.0.0.1:PORT/remote.git, for user "deploy" with a password
    that holds a raw "@" (as people write them)."""
    password = "pa@ss-w0rd-s3cret"
    handler = functools.partial(_AuthHandler, directory=str(remote.bare.parent))
    _AuthHandler.expected = "Basic " + base64.b64encode(f"deploy:{password}".encode()).decode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield remote, f"http://deploy:{password}@127.0.0.1:{port}/remote.git"
    finally:
        server.shutdown()
        server.server_close()


def publish(remote: Remote, content: str) -> str:
    sha = remote.commit(content)
    git("update-server-info", cwd=remote.bare)  # what the dumb protocol reads
    return sha


async def test_credentials_never_reach_the_checkouts_git_folder(
    http_remote: tuple[Remote, str], source: GitSource
) -> None:
    remote, url = http_remote
    first = publish(remote, "v1")
    checkout = await source.checkout("shop", url, "main", None)
    assert checkout.sha == first and content(checkout.path) == "v1"
    second = publish(remote, "v2")
    assert (await source.checkout("shop", url, "main", None)).sha == second
    origin = git("remote", "get-url", "origin", cwd=checkout.path)
    assert origin == url.replace("deploy:pa@ss-w0rd-s3cret@", "")
    for path in (checkout.path / ".git").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"s3cret" not in data and b"pa%40ss" not in data, path


async def test_a_checkout_made_with_credentials_in_its_config_loses_them(
    http_remote: tuple[Remote, str], source: GitSource
) -> None:
    remote, url = http_remote
    publish(remote, "v1")
    old = source.path("shop")
    old.parent.mkdir(parents=True)
    encoded = url.replace("pa@ss", "pa%40ss")  # git itself needs the "@" encoded
    git("clone", "-q", "--no-checkout", encoded, str(old), cwd=old.parent)  # as gatebot did
    assert "s3cret" in (old / ".git" / "config").read_text()
    await source.checkout("shop", url, "main", None)
    assert "s3cret" not in (old / ".git" / "config").read_text()


async def test_wrong_credentials_fail_clearly_without_showing_them(
    http_remote: tuple[Remote, str], source: GitSource
) -> None:
    remote, url = http_remote
    publish(remote, "v1")
    with pytest.raises(SourceError) as caught:
        await source.checkout("shop", url.replace("s3cret", "wr0ng"), "main", None)
    assert str(caught.value).startswith("git fetch failed:")
    assert "wr0ng" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "clean", "user", "password"),
    [
        ("https://u:p%40ss@host/x.git", "https://host/x.git", "u", "p@ss"),
        ("https://tok3n@host:8443/x.git", "https://host:8443/x.git", "tok3n", ""),
        ("http://u:a@b@host/x", "http://host/x", "u", "a@b"),
    ],
)
def test_split_credentials(url: str, clean: str, user: str, password: str) -> None:
    found, credentials = split_credentials(url)
    assert found == clean
    assert credentials is not None
    assert (credentials.username, credentials.password) == (user, password)


@pytest.mark.parametrize(
    "url", ["https://host/x.git", "ssh://git@host/x.git", "git@host:x.git", "file:///srv/x.git"]
)
def test_urls_without_http_credentials_stay_as_they_are(url: str) -> None:
    assert split_credentials(url) == (url, None)


# --- git's processes and the checkout's lock --------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers: a git fetch from it hangs."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def gits_for(port: int) -> list[int]:
    """The pids of processes (git and its helpers) whose command line names the port."""
    marker = f"127.0.0.1:{port}".encode()
    found = []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


async def eventually(predicate: Callable[[], bool]) -> None:
    async def holds() -> bool:
        return predicate()

    await wait_until(holds, timeout=10)


async def test_a_cancelled_checkout_kills_git_and_its_helpers(
    source: GitSource, silent_server: int
) -> None:
    url = f"http://127.0.0.1:{silent_server}/x.git"
    task = asyncio.create_task(source.checkout("shop", url, "main", None))
    await eventually(lambda: len(gits_for(silent_server)) >= 2)  # git and git-remote-http
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: not gits_for(silent_server))


async def test_a_git_left_by_a_killed_gatebot_keeps_the_checkout_locked(
    source: GitSource, silent_server: int, remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{silent_server}/x.git"
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from gatebot.vcs import GitSource\n"
        f"asyncio.run(GitSource(Path({str(source.workdir)!r})).checkout('shop', {url!r}, 'main',"
        " None))\n"
    )
    gatebot = subprocess.Popen([sys.executable, "-c", script])
    try:
        await eventually(lambda: len(gits_for(silent_server)) >= 3)  # gatebot, git, a helper
        helpers = [p for p in gits_for(silent_server) if p not in (gatebot.pid, os.getpgid(p))]
        for pid in helpers:  # caught in the middle of writing: they outlive gatebot
            os.kill(pid, signal.SIGSTOP)
    finally:
        gatebot.kill()  # SIGKILL: nothing of gatebot runs to clean up
        gatebot.wait()
    # git itself, its group's leader, dies with gatebot (the kernel's parent-death signal);
    # the helpers left behind hold the checkout's lock: the next checkout does not write
    # beside them.
    try:
        await eventually(lambda: sorted(gits_for(silent_server)) == sorted(helpers))
        monkeypatch.setattr(vcs, "CHECKOUT_WAIT_SECONDS", 0.5)
        with pytest.raises(SourceError, match="the checkout of shop stayed locked for 0.5s"):
            await source.checkout("shop", remote.url, "main", None)
    finally:
        for pid in helpers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    await eventually(lambda: not gits_for(silent_server))
    sha = remote.commit("v1")
    assert (await source.checkout("shop", remote.url, "main", None)).sha == sha
