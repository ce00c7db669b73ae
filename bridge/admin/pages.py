"""The admin web page under ``/admin/``: the jobs table and one job's timeline,
with Retry, Cancel, Resolve and Resend buttons. Plain HTML forms, no JavaScript.

Every page needs a signed-in admin (:mod:`bridge.admin.page_auth`); every form
POST needs the session's CSRF field. Actions answer with a redirect back to the
job (post/redirect/get), so reloading a page never repeats an action.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
import jinja2
from aiohttp import web

from bridge.admin import page_auth
from bridge.admin.page_auth import PageAnswer, Viewer, message_page, render, require_form, require_viewer
from bridge.admin.params import job_filter
from bridge.domain.jobs import UNFINISHED_JOB_STATUSES, JobStatus
from bridge.store import admin_ops
from bridge.store.admin_errors import AdminError, NotFound
from bridge.store.crypto import SecretsUnavailable
from bridge.store.errors import DATABASE_UNAVAILABLE
from bridge.web.keys import RUNTIME

log = logging.getLogger("bridge.admin")

PAGE_SIZE = 25
PageHandler = Callable[[web.Request], Awaitable[web.Response]]

# Fixed texts shown after an action (the query only picks one, so nothing is echoed).
NOTICES = {
    "retried": "Retry queued: the job resumes from its first unfinished step.",
    "cancelled": "Job cancelled.",
    "cancel_requested": "Cancel requested: the step being sent finishes first, then the job stops.",
    "resolved": "Compensation record resolved.",
    "resent": "The last callback was queued again.",
}


def page_handler(handler: PageHandler) -> PageHandler:
    """Answer the checks' pages, and the store's refusals and outages, as HTML."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except PageAnswer as answer:
            return answer.response
        except NotFound as exc:
            return message_page(request, 404, "Not found", str(exc), page_auth.viewer_of(request))
        except SecretsUnavailable:
            return message_page(request, 503, "Unavailable", "The bridge cannot store secrets (BRIDGE_SECRET_KEY).")
        except DATABASE_UNAVAILABLE:
            return message_page(request, 503, "Unavailable", "The database is unavailable; try again shortly.")

    return wrapped


@page_handler
async def jobs_page(request: web.Request) -> web.Response:
    viewer = await require_viewer(request)
    runtime = request.app[RUNTIME]
    query = {k: v for k, v in request.query.items() if k in ("status", "q", "cursor") and v}
    problem = None
    try:
        filters = job_filter({**query, "limit": str(PAGE_SIZE)}, strict=False)
        jobs, next_cursor = await admin_ops.list_jobs(runtime.engine, **filters.as_kwargs())
    except AdminError as exc:
        problem, jobs, next_cursor = str(exc), [], None
    next_url = None
    if next_cursor:
        next_url = "/admin/?" + urlencode({**{k: v for k, v in query.items() if k != "cursor"}, "cursor": next_cursor})
    context = {
        "viewer": viewer,
        "jobs": jobs,
        "statuses": [s.value for s in JobStatus],
        "status": query.get("status", ""),
        "q": query.get("q", ""),
        "paged": "cursor" in query,
        "first_url": "/admin/?" + urlencode({k: v for k, v in query.items() if k != "cursor"}),
        "next_url": next_url,
        "problem": problem,
    }
    return render(request, "jobs.html", context, status=422 if problem else 200)


def _job_context(viewer: Viewer, job: dict[str, Any], notice: str | None, problem: str | None) -> dict[str, Any]:
    return {
        "viewer": viewer,
        "job": job,
        "notice": notice,
        "problem": problem,
        "refresh": job["status"] in UNFINISHED_JOB_STATUSES,
        "can_retry": job["status"] == "failed",
        "can_cancel": job["status"] in UNFINISHED_JOB_STATUSES and not job.get("cancel_requested"),
        "can_resend": bool(job.get("callbacks")),
    }


@page_handler
async def job_page(request: web.Request) -> web.Response:
    viewer = await require_viewer(request)
    job = await admin_ops.get_job(request.app[RUNTIME].engine, request.match_info["job_id"])
    notice = NOTICES.get(request.query.get("notice", ""))
    return render(request, "job.html", _job_context(viewer, job, notice, None))


async def _after_action(
    request: web.Request, viewer: Viewer, job_id: str, action: Callable[[], Awaitable[str]]
) -> web.Response:
    """Run an action; redirect to the job with its notice, or show the job with the refusal."""
    runtime = request.app[RUNTIME]
    try:
        notice = await action()
    except AdminError as exc:
        if isinstance(exc, NotFound):
            raise
        job = await admin_ops.get_job(runtime.engine, job_id)
        return render(request, "job.html", _job_context(viewer, job, None, str(exc)), status=exc.status)
    runtime.wake_all()
    raise web.HTTPSeeOther(f"/admin/jobs/{job_id}?notice={notice}")


@page_handler
async def retry_action(request: web.Request) -> web.Response:
    viewer, form = await require_form(request)
    runtime = request.app[RUNTIME]
    job_id = request.match_info["job_id"]
    password = form.get("password", "")

    async def act() -> str:
        account = None
        if password:
            current = await admin_ops.get_job(runtime.engine, job_id)
            account = {"username": current["account"], "password": password}
        await admin_ops.retry_job(runtime.engine, runtime.box, job_id, account)
        return "retried"

    return await _after_action(request, viewer, job_id, act)


@page_handler
async def cancel_action(request: web.Request) -> web.Response:
    viewer, _form = await require_form(request)
    runtime = request.app[RUNTIME]
    job_id = request.match_info["job_id"]

    async def act() -> str:
        job = await admin_ops.cancel_job(runtime.engine, job_id, policy=runtime.records.callback_policy)
        return "cancelled" if job["status"] == "cancelled" else "cancel_requested"

    return await _after_action(request, viewer, job_id, act)


@page_handler
async def resend_action(request: web.Request) -> web.Response:
    viewer, _form = await require_form(request)
    runtime = request.app[RUNTIME]
    job_id = request.match_info["job_id"]

    async def act() -> str:
        await admin_ops.resend_last_callback(runtime.engine, job_id, policy=runtime.records.callback_policy)
        return "resent"

    return await _after_action(request, viewer, job_id, act)


@page_handler
async def resolve_action(request: web.Request) -> web.Response:
    viewer, form = await require_form(request)
    runtime = request.app[RUNTIME]
    job_id = form.get("job_id", "")

    compensation_id = int(request.match_info["id"])

    async def act() -> str:
        job = await admin_ops.get_job(runtime.engine, job_id)
        if compensation_id not in {c["id"] for c in job["compensations"]}:
            raise NotFound(f"compensation record {compensation_id} is not part of job {job_id}")
        await admin_ops.resolve_compensation(runtime.engine, compensation_id, form.get("status", "done"))
        return "resolved"

    if not job_id:
        return message_page(request, 422, "Missing job", "The form did not say which job it belongs to.", viewer)
    return await _after_action(request, viewer, job_id, act)


@page_handler
async def login_page(request: web.Request) -> web.Response:
    return await page_auth.login_page(request)


@page_handler
async def login(request: web.Request) -> web.Response:
    return await page_auth.login(request)


@page_handler
async def logout(request: web.Request) -> web.Response:
    return await page_auth.logout(request)


async def admin_root(request: web.Request) -> web.Response:
    raise web.HTTPMovedPermanently("/admin/")


def _compact_json(value: Any) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)


def setup_templates(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("bridge.admin", "templates"),
        autoescape=True,  # every template is HTML: escape everything, always
        undefined=jinja2.StrictUndefined,
    )
    env.filters["compact_json"] = _compact_json


def add_page_routes(app: web.Application) -> None:
    setup_templates(app)
    router = app.router
    router.add_get("/admin", admin_root)
    router.add_get("/admin/", jobs_page)
    router.add_get("/admin/login", login_page)
    router.add_post("/admin/login", login)
    router.add_post("/admin/logout", logout)
    router.add_get("/admin/jobs/{job_id}", job_page)
    router.add_post("/admin/jobs/{job_id}/retry", retry_action)
    router.add_post("/admin/jobs/{job_id}/cancel", cancel_action)
    router.add_post("/admin/jobs/{job_id}/callbacks/resend", resend_action)
    router.add_post("/admin/compensations/{id:\\d{1,9}}/resolve", resolve_action)
