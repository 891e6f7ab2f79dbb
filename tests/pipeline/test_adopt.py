"""Adoption's pure decisions: what release a running container carries, which one is live.
(The whole of it, a deleted database and `reconcile --adopt`, is in tests/faults.)"""

from __future__ import annotations

from gatebot.model import Color, Slot, Status
from gatebot.pipeline.adopt import choose_live, release_of
from gatebot.runtime.base import ContainerState
from gatebot.settings import ProjectSettings
from gatebot.store.deployments import AdoptedRelease

SHOP = ProjectSettings(name="shop", repo="https://github.com/acme/shop.git", base_port=3100)
SHA = "0123456789abcdef0123456789abcdef01234567"


def container(color: str, deployment: str, image: str) -> ContainerState:
    labels = {
        "gatebot.managed": "true",
        "gatebot.project": "shop",
        "gatebot.deployment": deployment,
        "gatebot.commit": SHA,
        "gatebot.color": color,
    }
    return ContainerState(
        name=f"gatebot-shop-{color}",
        status="running",
        running=True,
        exit_code=0,
        restart_count=0,
        labels=labels,
        image=image,
    )


def test_a_container_gives_its_release_from_labels_and_image_tag() -> None:
    release = release_of(SHOP, container("green", "17", f"gatebot/shop:4-{SHA[:12]}"))
    assert release == AdoptedRelease(
        id=17,
        project="shop",
        version=4,
        commit_sha=SHA,
        image=f"gatebot/shop:4-{SHA[:12]}",
        slot=Slot(container="gatebot-shop-green", color=Color.GREEN, port=3101),
        status=Status.ROLLED_BACK,
    )


def test_a_container_that_is_not_gatebots_build_is_not_adopted() -> None:
    assert "is not one gatebot built" in str(release_of(SHOP, container("blue", "3", "nginx:1")))
    no_label = release_of(SHOP, container("blue", "", f"gatebot/shop:1-{SHA[:12]}"))
    assert no_label == "gatebot-shop-blue: no deployment or color label"


def test_the_routed_release_is_live_else_the_newest() -> None:
    blue = release_of(SHOP, container("blue", "1", f"gatebot/shop:1-{SHA[:12]}"))
    green = release_of(SHOP, container("green", "2", f"gatebot/shop:2-{SHA[:12]}"))
    assert isinstance(blue, AdoptedRelease) and isinstance(green, AdoptedRelease)

    def live(route: Color | None) -> list[int]:
        return [r.version for r in choose_live([blue, green], route) if r.status is Status.ACTIVE]

    assert live(Color.BLUE) == [1]
    assert live(Color.GREEN) == [2]
    assert live(None) == [2]
    assert choose_live([], Color.BLUE) == []
