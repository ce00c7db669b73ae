"""``GET /openapi.json``: the OpenAPI 3.1 document of the webhook, the health and
metrics endpoints, this document itself and the admin API.

The admin web pages (``/admin/`` outside ``/admin/api/``) are left out on purpose:
they are HTML for people, not an API. A test keeps the document and the router
in step in both directions (:func:`documented_operations`, :func:`routed_operations`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bridge.domain.events import OrderEvent
from bridge.domain.jobs import JobStatus

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_ADMIN_DENIALS = {
    "401": _error("missing or invalid admin token (the same answer for both)"),
    "429": {
        **_error("too many failed attempts from this address"),
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}},
    },
    "503": _error("the database is unavailable"),
}

_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _admin(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "tags": ["admin"],
        "summary": summary,
        "security": [{"adminToken": []}],
        "responses": {**responses, **_ADMIN_DENIALS},
        **extra,
    }


def _optional_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": False, "content": {"application/json": {"schema": schema}}}


def _schemas() -> dict[str, Any]:
    event = OrderEvent.model_json_schema(ref_template=_REF)
    schemas: dict[str, Any] = dict(event.pop("$defs", {}))
    schemas["OrderEvent"] = event
    nullable_str = {"type": ["string", "null"]}
    schemas.update(
        {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {"type": "string"},
                    "fields": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"loc": {"type": "string"}, "msg": {"type": "string"}},
                        },
                    },
                },
            },
            "Accepted": {
                "type": "object",
                "required": ["job_id", "status", "duplicate"],
                "properties": {
                    "job_id": {"type": "string"},
                    "status": {"const": "accepted"},
                    "duplicate": {"type": "boolean"},
                },
            },
            "JobSummary": {
                "type": "object",
                "properties": {
                    "job_id": {"type": "string"},
                    "event_id": {"type": "string"},
                    "type": {"type": "string"},
                    "service_id": {"type": "string"},
                    "panel": {"type": "string"},
                    "domain": nullable_str,
                    "account": {"type": "string"},
                    "status": {"enum": [s.value for s in JobStatus]},
                    "error": nullable_str,
                    "cancel_requested": {"type": "boolean"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "updated_at": {"type": "string", "format": "date-time"},
                    "finished_at": {"type": ["string", "null"], "format": "date-time"},
                },
            },
            "JobList": {
                "type": "object",
                "required": ["jobs", "next_cursor"],
                "properties": {
                    "jobs": {"type": "array", "items": _ref("JobSummary")},
                    "next_cursor": {
                        **nullable_str,
                        "description": "pass as `cursor` for the next page; null on the last page",
                    },
                },
            },
            "RetriedJobs": {
                "type": "object",
                "required": ["retried", "skipped", "more", "next_cursor"],
                "properties": {
                    "retried": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "the ids of the jobs queued again, oldest first",
                    },
                    "skipped": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["job_id", "error"],
                            "properties": {"job_id": {"type": "string"}, "error": {"type": "string"}},
                        },
                        "description": "failed jobs not retried, and why (a later order replaces it, a later job "
                        "of the service is running, or the job is no longer failed)",
                    },
                    "more": {
                        "type": "boolean",
                        "description": "more failed jobs match than this call tried: call again for the next ones",
                    },
                    "next_cursor": {
                        "type": ["string", "null"],
                        "description": "with more: the cursor of the next call, which goes on past the jobs this "
                        "one tried; null otherwise",
                    },
                },
            },
            "Job": {
                "type": "object",
                "description": "A job with every detail (secrets masked); extra fields may be added.",
                "required": ["job_id", "status", "steps", "compensations"],
                "properties": {
                    "job_id": {"type": "string"},
                    "event_id": {"type": "string"},
                    "type": {"type": "string"},
                    "service_id": {"type": "string"},
                    "status": {"type": "string"},
                    "error": nullable_str,
                    "steps": {"type": "array", "items": {"type": "object"}},
                    "deferred": {"type": "array", "items": {"type": "string"}},
                    "attempts": {"type": "array", "items": {"type": "object"}},
                    "panel_calls": {"type": "array", "items": {"type": "object"}},
                    "compensations": {"type": "array", "items": _ref("Compensation")},
                    "callbacks": {"type": "array", "items": {"type": "object"}},
                    "cancel_requested": {"type": "boolean"},
                },
            },
            "Compensation": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "job_id": {"type": "string"},
                    "step": {"type": "string"},
                    "action": {"type": "string"},
                    "status": {"enum": ["pending", "done", "not_needed"]},
                    "resolved_at": {"type": ["string", "null"], "format": "date-time"},
                },
            },
            "Callback": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "job_id": {"type": "string"},
                    "type": {"type": "string"},
                    "url": {"type": "string"},
                    "status": {"enum": ["pending", "refused"]},
                    "copy_of": {"type": "string"},
                    "last_error": nullable_str,
                },
            },
        }
    )
    return schemas


def _webhook() -> dict[str, Any]:
    header = {"in": "header", "required": True, "schema": {"type": "string"}}
    return {
        "post": {
            "tags": ["orders"],
            "summary": "Receive a signed order event (Standard Webhooks)",
            "parameters": [
                {**header, "name": "webhook-id", "description": "the event's identity; a repeat is a duplicate"},
                {**header, "name": "webhook-timestamp", "description": "Unix seconds; 5 minutes tolerance"},
                {
                    **header,
                    "name": "webhook-signature",
                    "description": 'space-separated "v1,<base64 HMAC-SHA256 of id.timestamp.body>"',
                },
            ],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("OrderEvent")}}},
            "responses": {
                "202": _json(_ref("Accepted"), "accepted and durably stored"),
                "200": _json(_ref("Accepted"), "the same webhook-id again: the same job, duplicate true"),
                "400": _error("not JSON"),
                "401": _error("missing or invalid signature, or a stale timestamp"),
                "413": _error("body over 64 KiB"),
                "422": _error("well-formed but invalid; `fields` names each problem"),
                "503": _error("the database cannot take it; the event was not stored"),
            },
        }
    }


def _query_parameter(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema or {"type": "string"},
        "description": description,
    }


def _admin_paths() -> dict[str, Any]:
    job_or_404 = {"404": _error("no such job")}
    text_query = [
        ("status", "accepted, running, succeeded, failed or cancelled"),
        ("service_id", "exact billing service id"),
        ("domain", "part of the domain, any case"),
        ("q", "service id (exact) or part of the domain"),
        ("from", "created at or after (ISO 8601)"),
        ("to", "created before (ISO 8601)"),
        ("cursor", "next_cursor of the previous page"),
    ]
    parameters = [_query_parameter(name, desc) for name, desc in text_query]
    parameters.append(
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}}
    )
    retry_parameters = [
        _query_parameter("status", "failed, or left out: only failed jobs are retried", {"enum": ["failed"]}),
        *(p for p in parameters if p["name"] not in ("status", "cursor")),
        _query_parameter("cursor", "next_cursor of the previous call: go on past the jobs it tried"),
    ]
    account = {
        "type": "object",
        "properties": {
            "account": {
                "type": "object",
                "required": ["username", "password"],
                "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
            }
        },
    }
    return {
        "/admin/api/jobs": {
            "get": _admin(
                "List jobs, newest first",
                {
                    "200": _json(_ref("JobList"), "a page of jobs"),
                    "422": _error("a bad or unknown query parameter (named)"),
                },
                parameters=parameters,
            )
        },
        "/admin/api/jobs/retry-failed": {
            "post": _admin(
                "Retry the failed jobs that match, oldest first, each from its first unfinished step",
                {
                    "202": _json(_ref("RetriedJobs"), "retried as far as each job allowed"),
                    "422": _error("a bad, empty or unknown query parameter (named), or a body field"),
                },
                parameters=retry_parameters,
            )
        },
        "/admin/api/jobs/{job_id}": {
            "get": _admin("One job with every detail", {"200": _json(_ref("Job"), "the job"), **job_or_404}),
            "parameters": [_JOB_ID],
        },
        "/admin/api/jobs/{job_id}/retry": {
            "post": _admin(
                "Resume a failed job from its first unfinished step",
                {
                    "202": _json(_ref("Job"), "queued again"),
                    **job_or_404,
                    "409": _error("the job is not failed, or a later job of its service is running or leased"),
                    "422": _error("bad body (the username must be the job's account)"),
                },
                requestBody=_optional_body(account),
            ),
            "parameters": [_JOB_ID],
        },
        "/admin/api/jobs/{job_id}/cancel": {
            "post": _admin(
                "Cancel a job that has not finished",
                {
                    "200": _json(_ref("Job"), "cancelled"),
                    "202": _json(_ref("Job"), "a worker finishes its current step, then cancels"),
                    **job_or_404,
                    "409": _error("the job has finished"),
                },
            ),
            "parameters": [_JOB_ID],
        },
        "/admin/api/jobs/{job_id}/callbacks/resend": {
            "post": _admin(
                "Send the job's most recent callback again",
                {
                    "202": _json(_ref("Callback"), "queued (or refused by the callback policy)"),
                    **job_or_404,
                    "409": _error("the job has no callback URL or no callback yet"),
                },
            ),
            "parameters": [_JOB_ID],
        },
        "/admin/api/compensations/{id}/resolve": {
            "post": _admin(
                "Mark a compensation record done (undone on the panel: a retry of the job does that step "
                "again) or not needed (left as it is)",
                {
                    "200": _json(_ref("Compensation"), "resolved"),
                    "404": _error("no such compensation record"),
                    "422": _error("status is not done or not_needed"),
                },
                requestBody=_optional_body(
                    {"type": "object", "properties": {"status": {"enum": ["done", "not_needed"], "default": "done"}}}
                ),
            ),
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
        },
    }


def _operations_paths() -> dict[str, Any]:
    return {
        "/healthz": {"get": {"tags": ["operations"], "summary": "Process alive", "responses": {"200": _ok()}}},
        "/readyz": {
            "get": {
                "tags": ["operations"],
                "summary": "Database and broker reachable",
                "responses": {"200": _ok(), "503": {"description": "not ready; `checks` says what is down"}},
            }
        },
        "/metrics": {
            "get": {
                "tags": ["operations"],
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "text format", "content": {"text/plain": {}}}},
            }
        },
        "/openapi.json": {
            "get": {
                "tags": ["operations"],
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
            }
        },
    }


def _ok() -> dict[str, Any]:
    return _json({"type": "object"}, "ok")


def openapi_document() -> dict[str, Any]:
    """The whole document (built on each call: it is small, and never stale)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Provisioning bridge",
            "version": "1",
            "description": "Signed order events in, exactly-once provisioning on the hosting panel, "
            "an admin API to inspect, retry and cancel jobs.",
        },
        "paths": {"/webhooks/orders": _webhook(), **_operations_paths(), **_admin_paths()},
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
    }


HTTP_METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (METHOD, path) the document describes."""
    return {
        (method.upper(), path) for path, item in document["paths"].items() for method in item if method in HTTP_METHODS
    }


def is_documented_route(path: str) -> bool:
    """False for the admin web pages, which are left out of the document."""
    return not (path.startswith("/admin") and not path.startswith("/admin/api/"))


def routed_operations(app: web.Application) -> set[tuple[str, str]]:
    """Every (METHOD, path) the app's router serves and the document should describe.

    HEAD (added by aiohttp beside each GET) and the admin web pages are left out.
    """
    found = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method == "HEAD" or not is_documented_route(path):
            continue
        found.add((route.method, path))
    return found


async def serve_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
