"""The Swarm runtime's pure decisions, without a swarm: the service spec gatebot asks for,
a service's state from its tasks, its endpoints, node addresses, log lines."""

from __future__ import annotations

from typing import Any

from gatebot.runtime.base import LABEL_MANAGED, ContainerSpec, Endpoint
from gatebot.runtime.swarm import (
    LABEL_REPLICAS,
    Node,
    endpoints_of,
    parse_node,
    parse_task,
    service_spec,
    summarize,
    task_log_line,
)

IMAGE = "reg:5000/acme/shop:3-0123456789ab@sha256:aa"
NODES = {
    "N1": Node("N1", "n1", "10.0.0.11", ready=True),
    "N2": Node("N2", "n2", "10.0.0.12", ready=True),
}


def spec(**overrides: Any) -> ContainerSpec:
    values: dict[str, Any] = {
        "name": "gatebot-shop-green",
        "image": "reg:5000/acme/shop:3-0123456789ab",
        "labels": {LABEL_MANAGED: "true"},
        "env": {"DATABASE_URL": "postgres://db"},
        "network": "bridge",
        "host_port": 3101,
        "container_port": 3000,
        "replicas": 2,
        "placement": ("node.labels.tier == web",),
        "stop_timeout": 7,
    }
    return ContainerSpec(**{**values, **overrides})


def service(replicas: int = 2, force: int = 4, image: str = IMAGE) -> dict[str, Any]:
    return {
        "ID": "S1",
        "Spec": {
            "Name": "gatebot-shop-green",
            "Labels": {LABEL_MANAGED: "true", LABEL_REPLICAS: "2"},
            "Mode": {"Replicated": {"Replicas": replicas}},
            "TaskTemplate": {"ContainerSpec": {"Image": image}, "ForceUpdate": force},
        },
    }


def task(
    node: str, state: str, desired: str = "running", force: int = 4, image: str = IMAGE,
    created: str = "2026-01-01T00:00:01Z", exit_code: int = 0,
) -> Any:  # fmt: skip
    return parse_task(
        {
            "ID": f"T-{node}-{state}-{created}",
            "NodeID": node,
            "DesiredState": desired,
            "CreatedAt": created,
            "Spec": {"ContainerSpec": {"Image": image}, "ForceUpdate": force},
            "Status": {"State": state, "Err": "", "ContainerStatus": {"ExitCode": exit_code}},
        }
    )


def test_the_service_spec_publishes_the_slot_port_in_host_mode_with_dnsrr() -> None:
    args = service_spec(spec(), "gatebot", IMAGE, force_update=5)
    assert args["name"] == "gatebot-shop-green"
    assert args["mode"] == {"Replicated": {"Replicas": 2}}
    assert args["labels"][LABEL_REPLICAS] == "2"
    assert args["endpoint_spec"] == {
        "Mode": "dnsrr",
        "Ports": [
            {"Protocol": "tcp", "TargetPort": 3000, "PublishedPort": 3101, "PublishMode": "host"}
        ],
    }
    template = args["task_template"]
    container = template["ContainerSpec"]
    assert container["Image"] == IMAGE
    assert container["Init"] is True
    assert container["StopGracePeriod"] == 7_000_000_000  # nanoseconds
    assert sorted(container["Env"]) == ["DATABASE_URL=postgres://db", "PORT=3000"]
    assert template["Networks"] == [{"Target": "gatebot"}]
    assert template["Placement"] == {"Constraints": ["node.labels.tier == web"]}
    assert template["ForceUpdate"] == 5
    assert template["RestartPolicy"]["Delay"] == 1_000_000_000


def test_the_project_env_may_set_its_own_port() -> None:
    args = service_spec(spec(env={"PORT": "8080"}), "gatebot", IMAGE, 0)
    assert args["task_template"]["ContainerSpec"]["Env"] == ["PORT=8080"]


def test_converged_when_every_replica_runs_the_current_spec() -> None:
    state = summarize(service(), [task("N1", "running"), task("N2", "running")], NODES)
    assert (state.running, state.status, state.restart_count) == (True, "running", 0)
    assert state.image == "reg:5000/acme/shop:3-0123456789ab"  # the tag, not the digest


def test_not_converged_while_a_replica_starts() -> None:
    state = summarize(service(), [task("N1", "preparing"), task("N2", "preparing")], NODES)
    assert (state.running, state.status, state.degraded) == (False, "starting", False)


def test_degraded_while_some_replicas_run_and_others_do_not() -> None:
    state = summarize(service(), [task("N1", "running"), task("N2", "preparing")], NODES)
    assert (state.running, state.status, state.degraded) == (False, "degraded", True)


def test_tasks_of_an_earlier_spec_count_neither_way() -> None:
    tasks = [
        task("N1", "running", force=3),  # the previous try, still running
        task("N2", "failed", desired="shutdown", force=3, exit_code=1),
        task("N1", "running"),
    ]
    state = summarize(service(), tasks, NODES)
    assert (state.running, state.restart_count) == (False, 0)


def test_a_task_that_ended_is_a_failure_with_its_exit_code() -> None:
    tasks = [
        task("N1", "running"),
        task("N2", "failed", desired="shutdown", exit_code=3, created="2026-01-01T00:00:01Z"),
        task("N2", "complete", desired="shutdown", exit_code=0, created="2026-01-01T00:00:00Z"),
        task("N2", "starting", created="2026-01-01T00:00:02Z"),
    ]
    state = summarize(service(), tasks, NODES)
    assert (state.running, state.status, state.restart_count, state.exit_code) == (
        False,
        "degraded",  # N1 still answers
        2,
        3,
    )
    state = summarize(service(), tasks[1:], NODES)
    assert (state.running, state.status, state.restart_count) == (False, "failed", 2)


def test_a_task_on_a_node_that_is_down_is_not_running() -> None:
    nodes = {**NODES, "N2": Node("N2", "n2", "10.0.0.12", ready=False)}
    tasks = [task("N1", "running"), task("N2", "running")]
    assert not summarize(service(), tasks, nodes).running
    assert endpoints_of(tasks, nodes, 3101) == [Endpoint("10.0.0.11", 3101, "n1")]


def test_scaled_down_service() -> None:
    state = summarize(service(replicas=0), [task("N1", "shutdown", desired="shutdown")], NODES)
    assert (state.running, state.status, state.retired) == (False, "scaled-down", True)
    assert state.labels[LABEL_REPLICAS] == "2"


def test_endpoints_are_the_nodes_running_a_task_sorted_once_each() -> None:
    tasks = [
        task("N2", "running"),
        task("N1", "running"),
        task("N1", "shutdown", desired="shutdown"),
        task("N2", "pending"),
    ]
    assert endpoints_of(tasks, NODES, 3100) == [
        Endpoint("10.0.0.11", 3100, "n1"),
        Endpoint("10.0.0.12", 3100, "n2"),
    ]


def test_a_manager_reporting_0_0_0_0_gets_its_raft_address() -> None:
    node = parse_node(
        {
            "ID": "N1",
            "Description": {"Hostname": "n1"},
            "Status": {"State": "ready", "Addr": "0.0.0.0"},
            "ManagerStatus": {"Addr": "10.0.0.11:2377"},
        }
    )
    assert node == Node("N1", "n1", "10.0.0.11", ready=True)


def test_log_lines_name_their_node() -> None:
    line = (
        "com.docker.swarm.node.id=N2,com.docker.swarm.service.id=S1,"
        "com.docker.swarm.task.id=T1 fatal: no database"
    )
    assert task_log_line(line, {"N2": "n2"}) == "[n2] fatal: no database"
    assert task_log_line("plain line", {}) == "plain line"
