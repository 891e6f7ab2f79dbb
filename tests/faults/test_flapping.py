"""Healthy once, then crashing (issue 11 defect 6): one passing probe is not enough to switch,
a release that dies after its health check never gets the traffic, and a live release that is
lost for good is replaced by the one before it (an automatic rollback), or a clear 503."""

from __future__ import annotations

import docker
import pytest

from gatebot.errors import StageFailed
from gatebot.model import Status
from gatebot.pipeline.deploy import deploy
from gatebot.pipeline.engine import Engine
from gatebot.pipeline.journal import JournalEvent
from gatebot.pipeline.reconcile import reconcile
from gatebot.pipeline.rollback import AUTOMATIC
from gatebot.store.deployments import Deployment
from tests.support.deploys import container_names, eventually_live, live_version
from tests.support.faults import assert_repaired
from tests.support.http import get_text
from tests.support.setup import Setup

pytestmark = pytest.mark.faults

# Answers its health page (/cgi-bin/once) 200 once, 503 afterwards, and exits a moment after
# the first answer; restarted by Docker it exits again at once: healthy once, then crashing.
HEALTHY_ONCE = """#!/bin/sh
cat > /www/cgi-bin/once <<'EOF'
#!/bin/sh
if [ -e /www/served ]; then
    printf 'HTTP/1.1 503 Service Unavailable\\r\\nContent-Type: text/plain\\r\\n\\r\\nbroken\\n'
    exit 0
fi
touch /www/served
printf 'Content-Type: text/plain\\r\\n\\r\\nok\\n'
EOF
chmod 755 /www/cgi-bin/once
httpd -f -v -p "${PORT:-3000}" -h /www &
while [ ! -e /www/served ]; do sleep 0.05; done
sleep 0.3
echo 'fatal: lost the database connection' >&2
exit 1
"""


async def test_healthy_once_then_crashing_is_refused_and_the_old_release_serves(
    engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> None:
    """The default healthy_threshold (2) needs two passes in a row; one 2xx then a failure is
    not healthy (before: one 2xx switched, and the crash loop took the traffic)."""
    page = setup.repo.work / "www" / "cgi-bin" / "once"
    page.write_text("#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok\\n'\n")
    page.chmod(0o755)
    setup.repo.commit("v1")  # its page answers 200 every time
    engine.settings = setup.settings(health={"path": "/cgi-bin/once", "interval": 0.1})
    first = await deploy(engine, setup.name, trigger="test")
    setup.repo.commit("v2", start_script=HEALTHY_ONCE)

    with pytest.raises(StageFailed) as caught:
        await deploy(engine, setup.name, trigger="test")

    assert caught.value.stage == "health"
    assert await live_version(setup) == "v1"
    active = await assert_repaired(engine.store.deployments, docker_client, setup.name)
    assert active.id == first.id
    failed = (await engine.store.deployments.history(setup.name))[0]
    assert (failed.version, failed.status, failed.failed_stage) == (2, Status.FAILED, "health")


async def test_a_release_that_breaks_just_before_the_switch_is_refused(
    engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> None:
    """It passed its health check; its health page is gone the moment the check ends: the
    last check before the switch fails it, and the route never moves."""
    setup.repo.commit("v1")
    first = await deploy(engine, setup.name, trigger="test")
    setup.repo.commit("v2")
    new_container = f"gatebot-{setup.name}-green"

    def break_after_health(event: JournalEvent) -> None:
        if event.kind == "done" and event.stage == "health":
            docker_client.containers.get(new_container).exec_run(["rm", "/www/health"])

    with pytest.raises(StageFailed) as caught:
        await deploy(engine, setup.name, trigger="test", listeners=[break_after_health])

    assert caught.value.stage == "switch"
    assert "last check before the switch: GET /health answered HTTP 404" in caught.value.reason
    assert engine.proxy.route(setup.name) == first.color
    assert await live_version(setup) == "v1"
    active = await assert_repaired(engine.store.deployments, docker_client, setup.name)
    assert active.id == first.id


async def v2_lost(
    engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> tuple[Deployment, Deployment]:
    """v1 deployed, then v2; v2 (live) lost: its container and its image gone, so it cannot
    be brought back. Returns both deployments as they were when deployed."""
    setup.repo.commit("v1")
    first = await deploy(engine, setup.name, trigger="test")
    setup.repo.commit("v2")
    second = await deploy(engine, setup.name, trigger="test")
    assert second.container and second.image and second.color and second.color != first.color
    docker_client.containers.get(second.container).remove(force=True)
    docker_client.images.remove(second.image, force=True)
    engine.settings = setup.settings(health={"retries": 3})
    return first, second


async def test_a_lost_live_release_is_replaced_by_the_one_before(
    engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> None:
    first, second = await v2_lost(engine, setup, docker_client)
    assert second.color

    report = await reconcile(engine)

    assert (report.lost, report.rolled_back) == ([second.id], [first.id])
    assert "1 rolled back automatically" in report.summary()
    assert await eventually_live(setup, "v1") == "v1"
    active = await assert_repaired(engine.store.deployments, docker_client, setup.name)
    assert active.id == first.id
    assert active.color == second.color.other  # not the lost release's slot
    lost = await engine.store.deployments.require(second.id)
    assert (lost.status, lost.failed_stage) == (Status.FAILED, "reconcile")
    notes = [s.message for s in await engine.store.deployments.steps(first.id)]
    started = (
        "automatic rollback from v2 (lost: its container could not be brought back) to v1 "
        f"started by {AUTOMATIC}"
    )
    assert started in notes
    assert any(m.startswith("v1 live again") for m in notes)
    assert "rolled back automatically to v1" in [
        s.message for s in await engine.store.deployments.steps(second.id)
    ]
    [entry] = await engine.store.audit.recent()
    assert (entry.actor, entry.action, entry.project) == (AUTOMATIC, "rollback", setup.name)
    assert "automatic" in entry.detail

    setup.repo.commit("v3")
    third = await deploy(engine, setup.name, trigger="test")
    assert await live_version(setup) == "v3"
    assert (await assert_repaired(engine.store.deployments, docker_client, setup.name)).id == (
        third.id
    )


async def test_a_lost_live_release_with_no_earlier_image_leaves_a_clear_503(
    engine: Engine, setup: Setup, docker_client: docker.DockerClient
) -> None:
    first, second = await v2_lost(engine, setup, docker_client)
    assert first.image
    docker_client.images.remove(first.image, force=True)

    report = await reconcile(engine)

    assert (report.lost, report.rolled_back) == ([second.id], [])
    assert engine.proxy.route(setup.name) is None
    assert await get_text(f"{setup.site_url}/version") == (
        503,
        f"no release of {setup.name} is live yet",
    )
    assert container_names(docker_client, setup.name) == set()
    assert await engine.store.deployments.active(setup.name) is None
