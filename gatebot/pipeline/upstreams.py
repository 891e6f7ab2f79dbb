"""Upstreams that follow the tasks: where a slot answers can change without a deploy (a
swarm node fails and its tasks are rescheduled, a node comes back). Every
[swarm] refresh_interval `gatebot serve` asks each project's runtime where its slots answer
now and rewrites the project's upstreams when that changed (nginx tested and reloaded then
only). The route marker, and so the live color, is never touched; a slot that answers
nowhere keeps the servers it had (see proxy/nginx.py `choose_servers`).

On one host a slot always answers on 127.0.0.1 and its port, so nothing ever changes there.
"""

from __future__ import annotations

import asyncio
import logging

from gatebot.pipeline.engine import Engine

log = logging.getLogger("gatebot.upstreams")


async def refresh_upstreams(engine: Engine) -> list[str]:
    """Rewrite the upstreams of projects whose slots moved; the projects whose files did."""
    changed = await engine.ensure_files(engine.settings.projects)
    for name in changed:
        log.info("upstreams follow the tasks of %s", name, extra={"project": name})
    return changed


async def keep_upstreams_fresh(engine: Engine, interval: float) -> None:
    """`refresh_upstreams` every `interval` seconds until cancelled; a failed round (Docker or
    nginx not answering) is logged and the next one tries again."""
    while True:
        await asyncio.sleep(interval)
        try:
            await refresh_upstreams(engine)
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            log.warning("could not refresh the upstreams: %s", exc)
