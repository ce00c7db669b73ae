"""The admin API under ``/admin/api/`` (CONTRACT.md §5): thin handlers over
:mod:`bridge.store.admin_ops`, every one behind the bearer-token check.

Answers are JSON. 401 and 429 come before anything is looked up; refusals of
the store map to 404/409/422; an unreachable database (or a missing
BRIDGE_SECRET_KEY when a password must be stored) is 503.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bridge.admin import job_actions
from bridge.admin.auth import api_denial
from bridge.admin.params import BadJson, checked_job_id, failed_job_filter, job_filter, json_object
from bridge.store import admin_ops
from bridge.store.admin_errors import AdminError
from bridge.store.crypto import SecretsUnavailable
from bridge.store.errors import DATABASE_UNAVAILABLE
from bridge.web.keys import RUNTIME

if TYPE_CHECKING:
    from bridge.bootstrap import Runtime

log = logging.getLogger("bridge.admin")

API_PREFIX = "/admin/api"
Endpoint = Callable[[web.Request, "Runtime"], Awaitable[web.Response]]


def error_answer(exc: AdminError) -> web.Response:
    body: dict[str, Any] = {"error": str(exc)}
    if exc.field:
        body["fields"] = [{"loc": exc.field, "msg": str(exc).partition(": ")[2] or str(exc)}]
    return web.json_response(body, status=exc.status)


def admin_endpoint(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Authenticate, run, and turn every refusal into its JSON answer."""

    @functools.wraps(endpoint)
    async def handler(request: web.Request) -> web.Response:
        denial = api_denial(request)
        if denial is not None:
            return denial
        try:
            return await endpoint(request, request.app[RUNTIME])
        except AdminError as exc:
            return error_answer(exc)
        except BadJson as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except SecretsUnavailable as exc:
            log.error("admin %s %s: %s", request.method, request.path, exc)
            return web.json_response(
                {"error": "the bridge cannot store secrets right now (BRIDGE_SECRET_KEY)"}, status=503
            )
        except DATABASE_UNAVAILABLE as exc:
            log.error("admin %s %s: database unavailable (%s)", request.method, request.path, type(exc).__name__)
            return web.json_response({"error": "the database is unavailable; try again later"}, status=503)

    return handler


def _job_id(request: web.Request) -> str:
    return checked_job_id(request.match_info["job_id"])


async def _body(request: web.Request, *allowed: str) -> dict[str, Any]:
    return json_object(await request.read(), allowed)


@admin_endpoint
async def list_jobs(request: web.Request, runtime: Runtime) -> web.Response:
    jobs, next_cursor = await admin_ops.list_jobs(runtime.engine, **job_filter(request.query).as_kwargs())
    return web.json_response({"jobs": jobs, "next_cursor": next_cursor})


@admin_endpoint
async def show_job(request: web.Request, runtime: Runtime) -> web.Response:
    return web.json_response(await admin_ops.get_job(runtime.engine, _job_id(request)))


@admin_endpoint
async def retry_job(request: web.Request, runtime: Runtime) -> web.Response:
    body = await _body(request, "account")
    job = await admin_ops.retry_job(runtime.engine, runtime.box, _job_id(request), body.get("account"))
    runtime.wake_all()
    log.info("admin retried job %s", job["job_id"], extra={"job_id": job["job_id"]})
    return web.json_response(job, status=202)


@admin_endpoint
async def retry_failed_jobs(request: web.Request, runtime: Runtime) -> web.Response:
    await _body(request)
    outcome = await job_actions.retry_failed_jobs(runtime, failed_job_filter(request.query))
    return web.json_response(outcome, status=202)


@admin_endpoint
async def cancel_job(request: web.Request, runtime: Runtime) -> web.Response:
    await _body(request)
    job = await job_actions.cancel_job(runtime, _job_id(request))
    runtime.wake_all()
    log.info("admin cancelled job %s (%s)", job["job_id"], job["status"], extra={"job_id": job["job_id"]})
    # 200: cancelled now; 202: a worker finishes its current step first, then cancels.
    return web.json_response(job, status=200 if job["status"] == "cancelled" else 202)


@admin_endpoint
async def resolve_compensation(request: web.Request, runtime: Runtime) -> web.Response:
    body = await _body(request, "status")
    status = body.get("status", "done")
    if not isinstance(status, str):
        status = ""
    record = await admin_ops.resolve_compensation(runtime.engine, int(request.match_info["id"]), status)
    return web.json_response(record)


@admin_endpoint
async def resend_callback(request: web.Request, runtime: Runtime) -> web.Response:
    await _body(request)
    callback = await admin_ops.resend_last_callback(
        runtime.engine, _job_id(request), policy=runtime.records.callback_policy
    )
    runtime.wake_all()
    return web.json_response(callback, status=202)


def add_api_routes(app: web.Application) -> None:
    router = app.router
    router.add_get(f"{API_PREFIX}/jobs", list_jobs)
    # Before the routes under a job's id, so that it is never read as one.
    router.add_post(f"{API_PREFIX}/jobs/retry-failed", retry_failed_jobs)
    router.add_get(f"{API_PREFIX}/jobs/{{job_id}}", show_job)
    router.add_post(f"{API_PREFIX}/jobs/{{job_id}}/retry", retry_job)
    router.add_post(f"{API_PREFIX}/jobs/{{job_id}}/cancel", cancel_job)
    router.add_post(f"{API_PREFIX}/jobs/{{job_id}}/callbacks/resend", resend_callback)
    # At most 9 digits: anything longer cannot be an id (and would overflow the column).
    router.add_post(f"{API_PREFIX}/compensations/{{id:\\d{{1,9}}}}/resolve", resolve_compensation)
