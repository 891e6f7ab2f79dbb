"""A dockerd of a test's own, for tests that kill and restart their engine: the suite's private
dockerd must stay up (every other test uses it). Started as scripts/lib.sh starts that one (own
socket, data root, exec root and pidfile; no bridge, no iptables), in the root network
namespace, so containers with host networking answer on 127.0.0.1. The process helpers are the
test swarm's (tests/support/swarm.py), whose nodes are dockerds too.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support import swarm

START_SECONDS = 30.0


class Dockerd:
    def __init__(self) -> None:
        # A short folder: containerd's sockets live under the exec root (108 bytes at most).
        folder = tempfile.mkdtemp(prefix="gb-dockerd.", dir="/tmp")
        self.node = swarm.Node("dockerd", "", "", folder)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return self.node.socket

    def start(self) -> None:
        """Start (or start again, on the same roots) and wait until it answers."""
        folder = Path(self.node.dir)
        with open(folder / "dockerd.log", "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - an argument list
                [
                    "dockerd",
                    "--host",
                    self.host,
                    "--data-root",
                    f"{folder}/data",
                    "--exec-root",
                    self.node.exec_root,
                    "--pidfile",
                    f"{folder}/docker.pid",
                    "--bridge=none",
                    "--iptables=false",
                    "--ip6tables=false",
                    "--ip-masq=false",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.node.pid = self.process.pid
        swarm._wait(
            lambda: swarm._answers(self.host), START_SECONDS, "a test's dockerd", self.node,
            self.process,
        )

    def kill(self) -> None:
        """SIGKILL, as a crash would: its containers keep running, without an engine, until
        the next start finds them (and stops them: exit 143)."""
        swarm._signal(self.node.pid, signal.SIGKILL)
        swarm._wait(lambda: not swarm._alive(self.node.pid), 10, "a test's dockerd to die")
        # Its containerd dies with it, and stays a zombie until PID 1 reaps it, which here may
        # take seconds: the next dockerd would take it for alive and wait for it in vain.
        pidfile = Path(self.node.exec_root) / "containerd" / "containerd.pid"
        with contextlib.suppress(OSError, ValueError):
            containerd = int(pidfile.read_text().strip())
            swarm._wait(lambda: _dead(containerd), 10, "a test's containerd to die")
            pidfile.unlink()

    def remove(self) -> None:
        """Stop it and remove everything it made: containers, shims, mounts, the folder."""
        swarm._signal(self.node.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while swarm._alive(self.node.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        swarm._signal(self.node.pid, signal.SIGKILL)
        swarm._clear_runc(self.node)
        swarm._unmount_under(Path(self.node.dir))
        shutil.rmtree(self.node.dir, ignore_errors=True)


def _dead(pid: int) -> bool:
    """Gone, or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"
