"""The server against its own OpenAPI document: schemathesis generates requests for every
operation (valid ones, then invalid ones) and checks each answer's status, content type and
body against the document. The queue is paused, so a deploy it asks for is only queued."""

from __future__ import annotations

import asyncio
from typing import Any

import hypothesis
import hypothesis.errors
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from gatebot.api import v1
from gatebot.api.keys import ENGINE
from tests.support.server import ClientFactory, auth
from tests.support.setup import Setup

EXAMPLES = 25  # per operation and mode: bounded, so the whole check takes seconds
# A valid request may still meet a state that refuses it: 404 (no such project or job), 409
# (busy, or a job that ended) and 422 (nothing to roll back to) are documented answers to it.
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "403", "404", "409", "422"]
            }
        }
    }
)


def check_operations(document: dict[str, Any], base_url: str, headers: dict[str, str]) -> list[str]:
    """Run schemathesis over every operation; the failures found, as text (runs in a thread:
    schemathesis talks to the server with blocking requests)."""
    schema = schemathesis.openapi.from_dict(document, config=CONFIG)
    failures: list[str] = []
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), "every operation in the document is valid"
    assert len(operations) >= 11
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                case.call_and_validate(base_url=base_url, headers=headers, timeout=30)

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                # No invalid request exists for an operation without parameters or body.
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - report them all
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    return failures


async def test_the_server_answers_as_its_openapi_document_says(
    start_server: ClientFactory, setup: Setup
) -> None:
    client = await start_server(queue={"paused": True})
    headers = await auth(client, "deploy")
    store = client.app[ENGINE].store
    await store.deployments.create(setup.name, "test")  # deployment 1 exists
    queued = await client.post("/api/v1/deploy", json={"projectId": setup.name}, headers=headers)
    assert queued.status == 202  # job 1 exists

    document = await (await client.get("/api/v1/openapi.json")).json()
    # Point the examples at this test's project, so valid requests also reach the happy paths.
    deploy = document["paths"]["/api/v1/deploy"]["post"]["requestBody"]["content"]
    deploy["application/json"]["example"] = {"projectId": setup.name}
    for path in document["paths"].values():
        for parameter in path.get("parameters", []):
            parameter["example"] = setup.name if parameter["name"] == "name" else 1

    base_url = str(client.make_url("")).rstrip("/")
    failures = await asyncio.to_thread(check_operations, document, base_url, headers)
    assert not failures, "\n\n".join(failures)
    # Its valid requests reached the happy paths: deploys were queued, and some cancelled.
    states = [job.state for job in await store.jobs.recent(limit=1000)]
    assert len(states) > 2 and "cancelled" in states, states


def test_every_api_route_is_in_the_document_and_every_operation_is_served() -> None:
    app = web.Application()
    app.add_routes(v1.routes)
    served = {
        (route.method.lower(), route.resource.canonical.replace(r"{id:\d+}", "{id}"))
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    from gatebot.api.openapi import SPEC

    documented = {
        (method, path)
        for path, item in SPEC["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert served == documented
