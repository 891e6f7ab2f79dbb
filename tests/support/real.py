"""The real things tests and benchmarks run against: the sample app in a git repository, a
private nginx, free loopback ports, and stopping a process by its PID."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_APP = ROOT / "scripts" / "sample-app"
BUSYBOX = Path("/bin/busybox")


class SampleRepo:
    """The sample app (scripts/sample-app, with a static busybox beside it) in a bare
    repository that gatebot clones over file://, and a work tree that commits and pushes."""

    def __init__(self, root: Path, *, who: str = "gatebot-dev") -> None:
        self.bare = root / "remote.git"
        self.work = root / "work"
        self.who = who
        shutil.copytree(SAMPLE_APP, self.work)
        shutil.copy2(BUSYBOX, self.work / "busybox")
        self.git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)
        self.git("init", "-q", "-b", "main")
        self.git("remote", "add", "origin", str(self.bare))

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def git(self, *args: str, cwd: Path | None = None) -> str:
        identity = ["-c", f"user.name={self.who}", "-c", f"user.email={self.who}@example.com"]
        result = subprocess.run(  # noqa: S603 - an argument list, no shell
            ["git", *identity, *args],  # noqa: S607
            cwd=cwd or self.work,
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout.strip()

    def commit(
        self,
        version: str,
        *,
        healthy: bool = True,
        start_script: str | None = None,
        push: bool = True,
    ) -> str:
        """Commit the app answering `version` at /version (and /health unless not `healthy`,
        started by `start_script` if given); push it; return the SHA."""
        www = self.work / "www"
        (www / "version").write_text(version + "\n")
        health = www / "health"
        if healthy:
            health.write_text("ok\n")
        elif health.exists():
            health.unlink()
        if start_script is not None:
            (self.work / "start.sh").write_text(start_script)
        else:
            shutil.copy2(SAMPLE_APP / "start.sh", self.work / "start.sh")
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", f"sample app {version}")
        if push:
            self.git("push", "-q", "origin", "main")
        return self.git("rev-parse", "HEAD")


@dataclass
class Nginx:
    """A real nginx with its own prefix (config, pid, logs, temp files), including PREFIX/gatebot.d
    as gatebot's conf_dir; for the tests and the benchmarks."""

    prefix: Path
    workers: int = 1
    conf_dir: Path = field(init=False)
    conf: Path = field(init=False)

    def __post_init__(self) -> None:
        self.conf_dir = self.prefix / "gatebot.d"
        self.conf = self.prefix / "nginx.conf"
        for sub in ("logs", "gatebot.d", "tmp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(nginx_conf(self.prefix, workers=self.workers))

    @property
    def base_cmd(self) -> list[str]:
        return ["nginx", "-p", str(self.prefix), "-c", str(self.conf)]

    @property
    def test_cmd(self) -> list[str]:
        return [*self.base_cmd, "-t", "-q"]

    @property
    def reload_cmd(self) -> list[str]:
        return [*self.base_cmd, "-s", "reload"]

    def start(self) -> Nginx:
        subprocess.run(self.base_cmd, check=True, capture_output=True)  # noqa: S603
        return self

    def reload(self) -> None:
        subprocess.run(self.reload_cmd, check=True, capture_output=True)  # noqa: S603

    def master_pid(self) -> int:
        return int((self.prefix / "nginx.pid").read_text().strip())

    def worker_pids(self) -> set[int]:
        """The master's child processes (its workers), from /proc."""
        master = self.master_pid()
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return {int(pid) for pid in children}

    def stop(self) -> None:
        """Stop by the master's PID (a signal through `nginx -s` would need a valid config)."""
        try:
            pid = int((self.prefix / "nginx.pid").read_text().strip())
        except (OSError, ValueError):
            return
        stop_pid(pid, signal.SIGQUIT, 10.0)


def stop_pid(pid: int, sig: signal.Signals = signal.SIGTERM, seconds: float = 10.0) -> None:
    """Send `sig`, wait up to `seconds` for the process to go, then SIGKILL it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


_random = random.Random()  # noqa: S311 - picking ports, not secrets


def free_port() -> int:
    """A free port to listen on, below the ephemeral range like the slots' (see
    free_port_pair), drawn at random so that runs side by side rarely pick the same one."""
    low = _ephemeral_low()
    for _ in range(1000):
        port = _random.randrange(10000, low)
        if port_is_free(port):
            return port
    raise RuntimeError(f"no free port on 127.0.0.1 below {low}")


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_pair(avoid: set[int] | None = None) -> int:
    """A free port whose successor is free too: a project's blue and green slots. Both lie
    below the kernel's ephemeral range (ip_local_port_range): a port in it can be taken at any
    moment by an outgoing connection (nginx's to the live slot, a load's), and the slot's app
    then fails to bind it (connect() prefers even ports, bind(0) odd ones: the green slot after
    a bind(0) port was the usual victim)."""
    avoid = avoid if avoid is not None else set()
    low = _ephemeral_low()
    for _ in range(500):
        base = _random.randrange(10000, low - 1)
        if {base, base + 1} & avoid or not (port_is_free(base) and port_is_free(base + 1)):
            continue
        avoid.update({base, base + 1})
        return base
    raise RuntimeError(f"no two consecutive free ports on 127.0.0.1 below {low}")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def nginx_conf(prefix: Path, *, user: str = "root", workers: int = 1) -> str:
    """An nginx.conf whose every path is under `prefix` and that includes PREFIX/gatebot.d."""
    temp = prefix / "tmp"
    return f"""user {user};
worker_processes {workers};
daemon on;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {prefix}/gatebot.d/*.conf;
}}
"""
