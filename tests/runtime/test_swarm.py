"""SwarmRuntime against a real 2-node swarm (tests/support/swarm.py): services across both
nodes, answering on each node's address; failures reported with their log lines; scale to 0
and back; a node's dockerd killed."""

from __future__ import annotations

import urllib.request

import pytest

from tests.support.swarm import Swarm

pytestmark = pytest.mark.swarm


def test_the_test_swarm_has_two_ready_nodes_a_registry_and_an_overlay(swarm: Swarm) -> None:
    client = swarm.client()
    try:
        nodes = client.nodes.list()
        assert sorted(n.attrs["Description"]["Hostname"] for n in nodes) == ["n1", "n2"]
        assert {n.attrs["Status"]["State"] for n in nodes} == {"ready"}
        assert len({n.attrs["Description"]["Engine"]["EngineVersion"] for n in nodes}) == 1
        network = client.networks.get(swarm.network)
        assert network.attrs["Driver"] == "overlay"
        assert network.attrs["IPAM"]["Config"][0]["Subnet"].startswith("10.213.")
    finally:
        client.close()
    with urllib.request.urlopen(f"http://{swarm.registry}/v2/", timeout=2) as answer:
        assert answer.status == 200
