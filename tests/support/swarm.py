"""A real 2-node Docker Swarm on this one machine, for the tests of gatebot's Swarm runtime.

Each node is a dockerd in a network namespace of its own; the nodes' veths hang on a bridge in
a third namespace, on 10.213.N.0/24 (N picked free per run), with no default route: nothing
leaves the machine. A last veth of that bridge comes out in the root namespace with the
address 10.213.N.1, so the tests (and nginx, later) reach the nodes' addresses directly; that
address belongs to the test's own network. Node 1 is the manager and also runs Debian's
`docker-registry` on 10.213.N.11:5000 (plain http, listed in every node's
insecure-registries); an overlay network with a 10.213.x subnet is created for services.

The registry asks for a password made up per run (`registry_user`, `registry_password` in the
state), so pushes and pulls go through gatebot's handling of registry credentials.

Everything lives under one folder (/tmp/gatebot-swarm.*); `swarm.json` there records what was
made as it is made, so `down` cleans up after a partial set-up, a failed test run or a killed
dockerd: runc leftovers, shims, mounts (deepest first), then the namespaces.

    python -m tests.support.swarm up DIR      # prints the state file
    python -m tests.support.swarm down DIR

Needs root, iproute2, util-linux (nsenter, unshare), docker.io and docker-registry. Imports
neither pytest nor gatebot, so scripts can use it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import docker
import docker.types

from gatebot.runtime.base import LABEL_PROJECT

NODES = ("n1", "n2")
REGISTRY_PORT = 5000
NETWORK = "gatebot-test"
STATE = "swarm.json"
_HOSTNAME_THEN_EXEC = 'hostname "$0" && exec "$@"'


@dataclass
class Node:
    name: str
    netns: str
    address: str
    dir: str
    pid: int = 0

    @property
    def socket(self) -> str:
        return f"unix://{self.dir}/docker.sock"

    @property
    def exec_root(self) -> str:
        return f"{self.dir}/exec"


@dataclass
class Swarm:
    dir: str
    octet: int
    bridge_netns: str
    host_address: str
    nodes: list[Node] = field(default_factory=list)
    registry: str = ""  # host:port, as nodes and the tests reach it
    registry_user: str = "gatebot"
    registry_password: str = ""  # made up per run; the registry asks for it (htpasswd)
    registry_pid: int = 0
    network: str = ""  # the overlay network services attach to
    netns_made: list[str] = field(default_factory=list)

    @property
    def manager(self) -> Node:
        return self.nodes[0]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def save(self) -> None:
        path = Path(self.dir) / STATE
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> Swarm:
        raw = json.loads((Path(folder) / STATE).read_text())
        raw["nodes"] = [Node(**n) for n in raw["nodes"]]
        return cls(**raw)

    def client(self, node: str | None = None) -> docker.DockerClient:
        target = self.node(node) if node else self.manager
        return docker.DockerClient(base_url=target.socket, timeout=30)

    def remove_services(self, project: str) -> None:
        """Remove the services of `project` (a test's clean-up), by gatebot's project label."""
        client = self.client()
        try:
            for service in client.services.list(filters={"label": f"{LABEL_PROJECT}={project}"}):
                service.remove()
        finally:
            client.close()

    def local_pool(self, node: Node) -> str:
        return f"10.213.{192 + self.octet * 2 + self.nodes.index(node)}.0/24"

    # --- nodes ---------------------------------------------------------------------------

    def start_node(self, node: Node) -> None:
        """Start (or restart, on its kept data root) the node's dockerd in its namespace."""
        folder = Path(node.dir)
        config = folder / "daemon.json"
        config.write_text(
            json.dumps(
                {
                    "insecure-registries": [self.registry],
                    "deprecated-key-path": str(folder / "key.json"),  # an engine ID of its own
                    # docker_gwbridge and any local network: 10.213.x too
                    "default-address-pools": [{"base": self.local_pool(node), "size": 24}],
                }
            )
        )
        log = open(folder / "dockerd.log", "ab")  # noqa: SIM115 - the child keeps it
        process = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{node.netns}",
                "--",
                "unshare",
                "--uts",
                "--",
                "sh",
                "-c",
                _HOSTNAME_THEN_EXEC,
                node.name,
                "dockerd",
                "--host",
                node.socket,
                "--data-root",
                f"{node.dir}/data",
                "--exec-root",
                node.exec_root,
                "--pidfile",
                f"{node.dir}/docker.pid",
                "--config-file",
                str(config),
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--ip-forward=false",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        node.pid = process.pid
        self.save()
        _wait(lambda: _answers(node.socket), 30, f"dockerd of {node.name}", node, process)

    def kill_node(self, name: str) -> None:
        """SIGKILL a node's dockerd, as a crash would; its containers keep running until
        `down` (or a restart) clears them."""
        node = self.node(name)
        _signal(node.pid, signal.SIGKILL)
        _wait(lambda: not _alive(node.pid), 10, f"dockerd of {name} to die")

    def restart_node(self, name: str) -> None:
        node = self.node(name)
        _clear_runc(node)
        self.start_node(node)


# --- set-up ------------------------------------------------------------------------------


def up(folder: str | Path) -> Swarm:
    """Build the swarm in `folder` (created if missing). On failure, whatever was made is
    torn down before the error propagates."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    octet = _free_octet()
    tag = f"gbs{octet}"
    swarm = Swarm(
        dir=str(folder),
        octet=octet,
        bridge_netns=f"{tag}-br",
        host_address=f"10.213.{octet}.1",
        registry=f"10.213.{octet}.11:{REGISTRY_PORT}",
    )
    for i, name in enumerate(NODES, start=1):
        node_dir = folder / name
        node_dir.mkdir(exist_ok=True)
        swarm.nodes.append(Node(name, f"{tag}-{name}", f"10.213.{octet}.{10 + i}", str(node_dir)))
    swarm.save()
    try:
        _network(swarm, tag)
        for node in swarm.nodes:
            swarm.start_node(node)
        _registry(swarm)
        _cluster(swarm)
    except BaseException:
        down(folder)
        raise
    return swarm


def _network(swarm: Swarm, tag: str) -> None:
    prefix = f"10.213.{swarm.octet}"
    for netns in [swarm.bridge_netns, *(n.netns for n in swarm.nodes)]:
        _ip("netns", "add", netns)
        swarm.netns_made.append(netns)
        swarm.save()
        _ip("-n", netns, "link", "set", "lo", "up")
    br = swarm.bridge_netns
    _ip("-n", br, "link", "add", "br0", "type", "bridge")
    _ip("-n", br, "link", "set", "br0", "up")
    for node in swarm.nodes:
        port = f"{tag}-{node.name}"
        _ip("link", "add", port, "netns", br, "type", "veth",
            "peer", "name", "eth0", "netns", node.netns)  # fmt: skip
        _ip("-n", br, "link", "set", port, "master", "br0", "up")
        _ip("-n", node.netns, "addr", "add", f"{node.address}/24", "dev", "eth0")
        _ip("-n", node.netns, "link", "set", "eth0", "up")
    host = f"{tag}-host"
    _ip("link", "add", host, "type", "veth", "peer", "name", "uplink", "netns", br)
    _ip("-n", br, "link", "set", "uplink", "master", "br0", "up")
    _ip("addr", "add", f"{prefix}.1/24", "dev", host)
    _ip("link", "set", host, "up")


def _registry(swarm: Swarm) -> None:
    folder = Path(swarm.dir) / "registry"
    (folder / "data").mkdir(parents=True, exist_ok=True)
    swarm.registry_password = secrets.token_urlsafe(16)
    htpasswd = folder / "htpasswd"
    htpasswd.write_text(f"{swarm.registry_user}:{_bcrypt(swarm.registry_password)}\n")
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"auth:\n  htpasswd:\n    realm: gatebot-test\n    path: {htpasswd}\n"
        f"http:\n  addr: {swarm.registry}\n"
    )
    log = open(folder / "registry.log", "ab")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(
        [
            "nsenter",
            f"--net=/run/netns/{swarm.manager.netns}",
            "--",
            "docker-registry",
            "serve",
            str(config),
        ],  # fmt: skip
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    swarm.registry_pid = process.pid
    swarm.save()
    url = f"http://{swarm.registry}/v2/"
    _wait(lambda: _http_status(url) == 401, 15, "the registry", None, process)


def _bcrypt(password: str) -> str:
    """The registry's htpasswd wants bcrypt; the C library makes it (few rounds: the
    registry checks it on every request)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # the standard library's until Python 3.13

    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))  # noqa: S324


def _cluster(swarm: Swarm) -> None:
    octet = swarm.octet
    manager = swarm.client()
    try:
        manager.swarm.init(
            advertise_addr=swarm.manager.address,
            listen_addr=f"{swarm.manager.address}:2377",
            default_addr_pool=[f"10.213.{64 + octet * 4}.0/22"],
            subnet_size=24,
            dispatcher_heartbeat_period=1_000_000_000,  # 1 s: a dead node shows in seconds
            task_history_retention_limit=5,
        )
        manager.swarm.reload()
        token = manager.swarm.attrs["JoinTokens"]["Worker"]
        for node in swarm.nodes[1:]:
            worker = swarm.client(node.name)
            try:
                worker.swarm.join(
                    remote_addrs=[f"{swarm.manager.address}:2377"],
                    join_token=token,
                    listen_addr=f"{node.address}:2377",
                    advertise_addr=node.address,
                )
            finally:
                worker.close()
        _wait(lambda: _ready_nodes(manager) == len(swarm.nodes), 20, "every node ready")
        manager.networks.create(
            NETWORK,
            driver="overlay",
            attachable=True,
            ipam=docker.types.IPAMConfig(
                pool_configs=[docker.types.IPAMPool(subnet=f"10.213.{64 + octet * 4 + 3}.0/24")]
            ),
        )
        swarm.network = NETWORK
        swarm.save()
    finally:
        manager.close()


# --- teardown ----------------------------------------------------------------------------


def down(folder: str | Path) -> None:
    """Stop and remove everything `up` made in `folder`; safe to call twice, or on a folder
    a half-finished `up` left."""
    folder = Path(folder)
    try:
        swarm = Swarm.load(folder)
    except (OSError, ValueError):
        shutil.rmtree(folder, ignore_errors=True)
        return
    for node in swarm.nodes:
        _signal(node.pid, signal.SIGTERM)
    _signal(swarm.registry_pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for pid in [n.pid for n in swarm.nodes] + [swarm.registry_pid]:
        while pid and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal(pid, signal.SIGKILL)
    for node in swarm.nodes:
        _clear_runc(node)
    _unmount_under(folder)
    for netns in reversed(swarm.netns_made):
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
    shutil.rmtree(folder, ignore_errors=True)


def _clear_runc(node: Node) -> None:
    """What a killed dockerd leaves: its containers (runc state under the exec root) and
    their shims, which point at the exec root's containerd socket."""
    root = f"{node.exec_root}/runtime-runc/moby"
    if Path(root).is_dir():
        listed = subprocess.run(
            ["runc", "--root", root, "list", "-q"], capture_output=True, text=True, check=False
        )
        for container in listed.stdout.split():
            subprocess.run(
                ["runc", "--root", root, "delete", "--force", container],
                capture_output=True,
                check=False,
            )
    marker = node.exec_root.encode()
    for pid in _pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline:
            _signal(pid, signal.SIGKILL)


def _unmount_under(folder: Path) -> None:
    prefix = f"{folder.resolve()}/"
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


# --- small helpers -----------------------------------------------------------------------


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _free_octet() -> int:
    routes = subprocess.run(
        ["ip", "-4", "route", "show"], capture_output=True, text=True, check=True
    ).stdout
    taken = set(
        subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    for octet in range(32):
        if f"10.213.{octet}." not in routes and f"gbs{octet}-br" not in taken:
            return octet
    raise RuntimeError("no free 10.213.N.0/24 for a test swarm (32 in use?)")


def _answers(socket: str) -> bool:
    try:
        client = docker.DockerClient(base_url=socket, timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - not yet
        return False


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - test's own
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def _ready_nodes(client: docker.DockerClient) -> int:
    return sum(1 for n in client.nodes.list() if n.attrs["Status"]["State"] == "ready")


def _wait(
    ready: object,
    seconds: float,
    what: str,
    node: Node | None = None,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    assert callable(ready)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.1)
    tail = ""
    if node is not None:
        with contextlib.suppress(OSError):
            lines = (Path(node.dir) / "dockerd.log").read_text(errors="replace").splitlines()
            tail = "\n" + "\n".join(lines[-20:])
    raise RuntimeError(f"waited {seconds:g}s for {what}{tail}")


def _alive(pid: int) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of this process counts as gone.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print("usage: python -m tests.support.swarm up|down DIR", file=sys.stderr)
        return 2
    if argv[0] == "up":
        started = time.monotonic()
        swarm = up(argv[1])
        print(json.dumps(asdict(swarm), indent=2))
        print(f"ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
    else:
        down(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
