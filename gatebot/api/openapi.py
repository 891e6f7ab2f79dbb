"""The OpenAPI 3 description of /api/v1, served at /api/v1/openapi.json.

Written by hand next to the handlers (gatebot/api/v1.py) and the shapes (gatebot/api/views.py);
tests/api/test_openapi.py generates requests from it and checks every answer against it, so
the document and the server cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

from gatebot import __version__
from gatebot.model import PROJECT_NAME_PATTERN, Color, JobKind, JobState, Status

PROJECT_NAME = f"^{PROJECT_NAME_PATTERN}$"
JOB_STATES = [str(s) for s in JobState]
MAX_ID = 2**63 - 1
STATUSES = [str(s) for s in Status]
COLORS = [str(c) for c in Color]
JOB_KINDS = [str(k) for k in JobKind]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def obj(properties: dict[str, Any], *, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": [k for k in properties if k not in optional],
    }


STRING: dict[str, Any] = {"type": "string"}
INTEGER: dict[str, Any] = {"type": "integer"}
ID: dict[str, Any] = {"type": "integer", "minimum": 0}
TIME: dict[str, Any] = {"type": "string", "description": "ISO 8601, UTC"}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error(description: str) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{description}"}


ERRORS = {
    "BadRequest": "The body, a field or a query parameter is malformed; the message says how.",
    "Unauthorized": "No token, or an unknown or revoked one.",
    "Forbidden": "The token's scope does not allow this (read tokens cannot deploy).",
    "NotFound": "No such project, deployment, job or route.",
    "Conflict": "The project is deploying or rolling back now (the body names the job or "
    "process holding it), or the job can no longer be cancelled.",
    "TooLarge": "The body is over 64 KiB.",
    "Unprocessable": "There is no release to roll back to.",
    "Unavailable": "The Docker engine does not answer.",
}


def responses(ok: dict[str, dict[str, Any]], *errors: str) -> dict[str, Any]:
    return {**ok, **{CODE[e]: error(e) for e in ("Unauthorized", "Forbidden", *errors)}}


CODE = {
    "BadRequest": "400",
    "Unauthorized": "401",
    "Forbidden": "403",
    "NotFound": "404",
    "Conflict": "409",
    "TooLarge": "413",
    "Unprocessable": "422",
    "Unavailable": "503",
}

PATH_ID = {"name": "id", "in": "path", "required": True, "schema": {**ID, "maximum": MAX_ID}}
PATH_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "the project's name, as in the configuration",
    "schema": {"type": "string", "pattern": PROJECT_NAME},
}
PAGING = [
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
    },
    {
        "name": "offset",
        "in": "query",
        "schema": {"type": "integer", "minimum": 0, "maximum": 1_000_000_000, "default": 0},
    },
]

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "properties": {
            "error": {
                "type": "string",
                "description": "a short code: bad_request, unauthorized, forbidden, not_found, "
                "conflict, too_large, unprocessable, ...",
            },
            "message": {"type": "string", "description": "what went wrong, for a person"},
            "job": nullable({**INTEGER, "description": "409: the job holding the project"}),
            "holder": nullable({**STRING, "description": "409: who holds the project's lock"}),
        },
        "required": ["error", "message"],
    },
    "Job": obj(
        {
            "id": ID,
            "project": STRING,
            "kind": {"type": "string", "enum": JOB_KINDS},
            "state": {"type": "string", "enum": JOB_STATES},
            "sha": nullable(STRING),
            "target": nullable({**STRING, "description": "rollback: the version brought back"}),
            "trigger": {
                "type": "string",
                "description": "who asked: token:NAME, push:USER, comment:USER, cli:USER",
            },
            "delivery": nullable({**STRING, "description": "the webhook delivery, if any"}),
            "deployment": nullable(ID),
            "error": nullable(STRING),
            "supersededBy": nullable(ID),
            "retryOf": nullable(ID),
            "createdAt": TIME,
            "updatedAt": TIME,
            "startedAt": nullable(TIME),
            "finishedAt": nullable(TIME),
            "gate": nullable(ref("Gate")),
        }
    ),
    "Gate": {
        **obj(
            {
                "required": {
                    "description": 'the check names waited for, or "all"',
                    "oneOf": [
                        {"type": "array", "items": STRING},
                        {"type": "string", "enum": ["all"]},
                    ],
                },
                "pending": {"type": "array", "items": STRING},
                "failed": {"type": "array", "items": STRING, "description": "lint (failure)"},
                "passed": {"type": "array", "items": STRING},
                "reason": STRING,
                "checkedAt": nullable({**TIME, "description": "when the forge was last asked"}),
            }
        ),
        "description": "What a gated job waits (or waited) for: its commit's checks.",
    },
    "Deployment": obj(
        {
            "id": ID,
            "project": STRING,
            "version": INTEGER,
            "status": {"type": "string", "enum": STATUSES},
            "commit": nullable(STRING),
            "commitMessage": nullable(STRING),
            "image": nullable(STRING),
            "container": nullable(STRING),
            "color": nullable({"type": "string", "enum": COLORS}),
            "port": nullable(INTEGER),
            "trigger": STRING,
            "error": nullable(STRING),
            "failedStage": nullable(STRING),
            "createdAt": TIME,
            "updatedAt": TIME,
            "activatedAt": nullable(TIME),
            "finishedAt": nullable(TIME),
            "page": {**STRING, "description": "the deployment's page (HTML)"},
            "logs": {**STRING, "description": "the deployment's log"},
        }
    ),
    "Step": obj(
        {
            "id": ID,
            "at": TIME,
            "stage": STRING,
            "message": STRING,
            "duration": nullable({"type": "number", "description": "seconds, for a stage"}),
        }
    ),
    "DeploymentDetail": {
        "allOf": [
            ref("Deployment"),
            obj(
                {
                    "steps": {"type": "array", "items": ref("Step")},
                    "tasks": {
                        "type": "array",
                        "items": ref("Task"),
                        "description": "a live swarm release's tasks; empty otherwise",
                    },
                }
            ),
        ]
    },
    "Task": obj(
        {
            "node": {**STRING, "description": "the swarm node's hostname"},
            "address": STRING,
            "state": {**STRING, "description": "running, starting, failed, ..."},
            "desired": STRING,
            "error": nullable(STRING),
        }
    ),
    "Active": obj(
        {
            "deployment": ID,
            "version": INTEGER,
            "commit": nullable(STRING),
            "color": nullable({"type": "string", "enum": COLORS}),
            "port": nullable(INTEGER),
            "since": nullable(TIME),
            "trigger": STRING,
            "tasks": {
                "type": "array",
                "items": ref("Task"),
                "description": "where a swarm release's tasks run; empty on one host",
            },
        }
    ),
    "Busy": obj(
        {
            "job": nullable(ID),
            "kind": nullable({"type": "string", "enum": JOB_KINDS}),
            "deployment": nullable(ID),
            "by": nullable({**STRING, "description": "who holds the project's lock"}),
        }
    ),
    "Project": obj(
        {
            "name": STRING,
            "repo": {**STRING, "description": "credentials redacted"},
            "branch": STRING,
            "forge": {"type": "string", "enum": ["github", "gitlab"]},
            "forgeRepo": nullable(STRING),
            "active": nullable(ref("Active")),
            "deploying": nullable(ref("Busy")),
            "queued": {**INTEGER, "description": "jobs waiting to run"},
        }
    ),
    "DeployRequest": {
        "type": "object",
        "properties": {
            "projectId": {"type": "string", "pattern": PROJECT_NAME, "example": "shop"},
            "sha": nullable(
                {
                    "type": "string",
                    "pattern": "^[0-9a-fA-F]{7,64}$",
                    "description": "the commit to deploy; default: the head of the branch",
                }
            ),
            "skipGate": {
                "type": "boolean",
                "description": "a gated project: deploy without waiting for the commit's checks",
            },
        },
        "required": ["projectId"],
        "additionalProperties": False,
    },
    "RollbackRequest": {
        "type": "object",
        "properties": {
            "to": nullable(
                {
                    "type": "string",
                    "minLength": 1,
                    "pattern": r"\S",
                    "description": "a version (3 or v3) or commit SHA of a release that was "
                    "live; default: the newest earlier release whose image exists",
                }
            ),
        },
        "additionalProperties": False,
    },
}

# Scopes are not part of OpenAPI 3.0's bearer scheme: each operation's summary says which it
# needs (changes: deploy; reads: read), and 403 answers a token without it.
READ: list[dict[str, list[str]]] = [{"bearerAuth": []}]
DEPLOY: list[dict[str, list[str]]] = [{"bearerAuth": []}]
ERROR_JSON = {"application/json": {"schema": ref("Error")}}


def _paths() -> dict[str, Any]:
    job = {"202": json_body(ref("Job"), "Queued; the job is in the body and at Location.")}
    return {
        "/api/v1/deploy": {
            "post": {
                "operationId": "deploy",
                "summary": "Queue a deploy of a commit (default: the branch head); scope deploy",
                "security": DEPLOY,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("DeployRequest")}},
                },
                "responses": responses(job, "BadRequest", "NotFound", "Conflict", "TooLarge"),
            }
        },
        "/api/v1/projects": {
            "get": {
                "operationId": "listProjects",
                "summary": "Every project: what is live, what is deploying now",
                "responses": responses(
                    {
                        "200": json_body(
                            obj({"projects": {"type": "array", "items": ref("Project")}}),
                            "The projects, in configuration order.",
                        )
                    }
                ),
            }
        },
        "/api/v1/projects/{name}": {
            "parameters": [PATH_NAME],
            "get": {
                "operationId": "getProject",
                "summary": "One project: its active release and what is deploying now",
                "responses": responses(
                    {"200": json_body(ref("Project"), "The project.")}, "NotFound"
                ),
            },
        },
        "/api/v1/projects/{name}/rollback": {
            "parameters": [PATH_NAME],
            "post": {
                "operationId": "rollback",
                "summary": "Queue a rollback to an earlier release; scope deploy",
                "security": DEPLOY,
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": ref("RollbackRequest")}},
                },
                "responses": responses(
                    job,
                    "BadRequest",
                    "NotFound",
                    "Conflict",
                    "TooLarge",
                    "Unprocessable",
                    "Unavailable",
                ),
            },
        },
        "/api/v1/projects/{name}/deployments": {
            "parameters": [PATH_NAME],
            "get": {
                "operationId": "listDeployments",
                "summary": "A project's deployments, newest first, a page at a time",
                "parameters": PAGING,
                "responses": responses(
                    {
                        "200": json_body(
                            obj(
                                {
                                    "deployments": {"type": "array", "items": ref("Deployment")},
                                    "limit": INTEGER,
                                    "offset": INTEGER,
                                    "next": nullable({**STRING, "description": "next page"}),
                                }
                            ),
                            "One page of deployments.",
                        )
                    },
                    "BadRequest",
                    "NotFound",
                ),
            },
        },
        "/api/v1/deployments/{id}": {
            "parameters": [PATH_ID],
            "get": {
                "operationId": "getDeployment",
                "summary": "One deployment with its timeline of steps",
                "responses": responses(
                    {"200": json_body(ref("DeploymentDetail"), "The deployment.")}, "NotFound"
                ),
            },
        },
        "/api/v1/deployments/{id}/logs": {
            "parameters": [PATH_ID],
            "get": {
                "operationId": "getDeploymentLogs",
                "summary": "The deployment's log; with Accept: text/event-stream, a live stream",
                "description": "As text/event-stream the answer follows a running deployment "
                "and ends when it is done, with events status (the deployment, JSON), step "
                '(a step, JSON), log (one line) and end ({"status": ...}).',
                "responses": responses(
                    {
                        "200": {
                            "description": "The log, secrets redacted.",
                            "content": {
                                "text/plain": {"schema": STRING},
                                "text/event-stream": {"schema": STRING},
                            },
                        }
                    },
                    "NotFound",
                ),
            },
        },
        "/api/v1/jobs": {
            "get": {
                "operationId": "listJobs",
                "summary": "Jobs, newest first, a page at a time",
                "parameters": [
                    *PAGING,
                    {
                        "name": "state",
                        "in": "query",
                        "schema": {"type": "string", "enum": JOB_STATES},
                    },
                    {"name": "project", "in": "query", "schema": STRING},
                ],
                "responses": responses(
                    {
                        "200": json_body(
                            obj(
                                {
                                    "jobs": {"type": "array", "items": ref("Job")},
                                    "limit": INTEGER,
                                    "offset": INTEGER,
                                    "next": nullable(STRING),
                                }
                            ),
                            "One page of jobs.",
                        )
                    },
                    "BadRequest",
                ),
            }
        },
        "/api/v1/jobs/{id}": {
            "parameters": [PATH_ID],
            "get": {
                "operationId": "getJob",
                "summary": "One job",
                "responses": responses({"200": json_body(ref("Job"), "The job.")}, "NotFound"),
            },
            "delete": {
                "operationId": "cancelJob",
                "summary": "Cancel a queued job (a running or ended one: 409); scope deploy",
                "security": DEPLOY,
                "responses": responses(
                    {"200": json_body(ref("Job"), "The job, now cancelled.")},
                    "NotFound",
                    "Conflict",
                ),
            },
        },
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The OpenAPI document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }


SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "gatebot",
        "version": __version__,
        "description": "Deploy, roll back and watch projects. Send `Authorization: Bearer "
        "<token>`; create tokens with `gatebot token create NAME --scope read|deploy`. Reads "
        "need scope read, changes scope deploy (which includes read). Every error answers "
        '`{"error": "<code>", "message": "..."}`.',
    },
    "security": READ,
    "paths": _paths(),
    "components": {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        "schemas": SCHEMAS,
        "responses": {
            name: {"description": text, "content": ERROR_JSON} for name, text in ERRORS.items()
        },
    },
}
