"""The admin web page under ``/admin/``: the jobs table, with a button to retry every
failed job it lists, and one job's timeline, with Retry, Cancel, Resolve and Resend
buttons. Plain HTML forms, no JavaScript.

Every page needs a signed-in admin (:mod:`bridge.admin.page_auth`); every form
POST needs the session's CSRF field. Actions answer with a redirect back to the
job, or to the list (post/redirect/get), so reloading a page never repeats an action.
"""

from __future__ import annotations

import functools
import json
import logging
import string
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp_jinja2
import jinja2
from aiohttp import web

from bridge.admin import job_actions, page_auth
from bridge.admin.page_auth import PageAnswer, Viewer, message_page, render, require_form, require_viewer
from bridge.admin.params import checked_job_id, failed_job_filter, job_filter
from bridge.domain.jobs import UNFINISHED_JOB_STATUSES, JobStatus
from bridge.domain.validation import is_small_whole_number
from bridge.store import admin_ops, admin_queries
from bridge.store.admin_errors import AdminError, NotFound
from bridge.store.crypto import SecretsUnavailable
from bridge.store.errors import DATABASE_UNAVAILABLE
from bridge.web.keys import RUNTIME

if TYPE_CHECKING:
    from bridge.bootstrap import Runtime

log = logging.getLogger("bridge.admin")

PAGE_SIZE = 25
PageHandler = Callable[[web.Request], Awaitable[web.Response]]

# Fixed texts shown after an action (the query only picks one, so nothing is echoed but the
# counts a text names in braces, each checked to be a small whole number).
NOTICES = {
    "retried": "Retry queued: the job resumes from its first unfinished step.",
    "cancelled": "Job cancelled.",
    "cancel_requested": "Cancel requested: the step being sent finishes first, then the job stops.",
    "resolved": "Compensation record resolved.",
    "resent": "The last callback was queued again.",
    "retried_failed": "Failed jobs queued for retry: {retried}; skipped: {skipped}.",
    "retried_failed_more": "Failed jobs queued for retry: {retried}; skipped: {skipped}. "
    "More failed jobs match: press the button again for the next ones.",
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


def notice_of(query: Mapping[str, str]) -> str | None:
    """The notice the query picks, with its counts; None when it picks none or a count is not a number."""
    text = NOTICES.get(query.get("notice", ""))
    if text is None:
        return None
    counts = {name: query.get(name, "") for _, name, _, _ in string.Formatter().parse(text) if name}
    if not all(is_small_whole_number(count, 3) for count in counts.values()):
        return None
    return text.format(**counts)


@page_handler
async def jobs_page(request: web.Request) -> web.Response:
    viewer = await require_viewer(request)
    runtime = request.app[RUNTIME]
    # Blanks alone are no search (the store strips them): echoed, the retry button would refuse them.
    query = {k: v.strip() for k, v in request.query.items() if k in ("status", "q", "cursor") and v.strip()}
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
        "notice": notice_of(request.query),
        "can_retry_failed": query.get("status") == JobStatus.FAILED and bool(jobs),
        "retry_cursor": _retry_cursor(request.query),
    }
    return render(request, "jobs.html", context, status=422 if problem else 200)


def _retry_cursor(query: Mapping[str, str]) -> str | None:
    """Where the failed list's retry button goes on, after a press that left more (None: from the oldest)."""
    cursor = query.get("retry_cursor", "")
    try:
        admin_queries.decode_cursor(cursor)
    except AdminError:
        return None
    return cursor


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
    job = await admin_ops.get_job(request.app[RUNTIME].engine, checked_job_id(request.match_info["job_id"]))
    return render(request, "job.html", _job_context(viewer, job, notice_of(request.query), None))


@dataclass(frozen=True)
class JobForm:
    """A form POST about one job, past the session and CSRF checks."""

    request: web.Request
    runtime: Runtime
    job_id: str
    fields: dict[str, str]


JobAction = Callable[[JobForm], Awaitable[str]]


def job_action(act: JobAction) -> PageHandler:
    """A button on a job's page: check the form, run ``act``, then redirect to the job with
    the notice ``act`` names (post/redirect/get), or show the job with the store's refusal.

    The job is the route's ``job_id``, or the form's for routes named after something else.
    """

    @page_handler
    async def handler(request: web.Request) -> web.Response:
        viewer, fields = await require_form(request)
        job_id = request.match_info.get("job_id") or fields.get("job_id", "")
        if not job_id:
            return message_page(request, 422, "Missing job", "The form did not say which job it belongs to.", viewer)
        job_id = checked_job_id(job_id)
        runtime = request.app[RUNTIME]
        try:
            notice = await act(JobForm(request, runtime, job_id, fields))
        except NotFound:
            raise  # no job to show the refusal on: page_handler answers 404
        except AdminError as exc:
            job = await admin_ops.get_job(runtime.engine, job_id)
            return render(request, "job.html", _job_context(viewer, job, None, str(exc)), status=exc.status)
        runtime.wake_all()
        raise web.HTTPSeeOther(f"/admin/jobs/{job_id}?notice={notice}")

    return handler


@job_action
async def retry_action(form: JobForm) -> str:
    account = None
    if password := form.fields.get("password", ""):
        # The page asks only for the password; the username is the order's.
        account = {"username": await admin_queries.account_of(form.runtime.engine, form.job_id), "password": password}
    await admin_ops.retry_job(form.runtime.engine, form.runtime.box, form.job_id, account)
    return "retried"


@job_action
async def cancel_action(form: JobForm) -> str:
    job = await job_actions.cancel_job(form.runtime, form.job_id)
    return "cancelled" if job["status"] == "cancelled" else "cancel_requested"


@job_action
async def resend_action(form: JobForm) -> str:
    await admin_ops.resend_last_callback(form.runtime.engine, form.job_id, policy=form.runtime.records.callback_policy)
    return "resent"


@job_action
async def resolve_action(form: JobForm) -> str:
    compensation_id = int(form.request.match_info["id"])
    # The form names the job it was shown on: a record of another job is not resolved from it.
    await admin_queries.require_compensation_of(form.runtime.engine, compensation_id, form.job_id)
    await admin_ops.resolve_compensation(form.runtime.engine, compensation_id, form.fields.get("status", "done"))
    return "resolved"


@page_handler
async def retry_failed_action(request: web.Request) -> web.Response:
    """The button under the failed list: retry the failed jobs its search matches, then show
    the failed list again with how many were retried and skipped."""
    viewer, fields = await require_form(request)
    search = fields.get("q", "").strip()
    listed = {"status": JobStatus.FAILED.value, **({"q": search} if search else {})}
    going_on = {"cursor": fields["cursor"]} if fields.get("cursor") else {}
    try:
        outcome = await job_actions.retry_failed_jobs(request.app[RUNTIME], failed_job_filter({**listed, **going_on}))
    except AdminError as exc:
        return message_page(request, exc.status, "Not retried", str(exc), viewer)
    notice = {
        "notice": "retried_failed_more" if outcome["more"] else "retried_failed",
        "retried": len(outcome["retried"]),
        "skipped": len(outcome["skipped"]),
        **({"retry_cursor": outcome["next_cursor"]} if outcome["next_cursor"] else {}),
    }
    raise web.HTTPSeeOther("/admin/?" + urlencode({**listed, **notice}))


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
    router.add_post("/admin/jobs/retry-failed", retry_failed_action)  # before the routes under a job's id
    router.add_get("/admin/jobs/{job_id}", job_page)
    router.add_post("/admin/jobs/{job_id}/retry", retry_action)
    router.add_post("/admin/jobs/{job_id}/cancel", cancel_action)
    router.add_post("/admin/jobs/{job_id}/callbacks/resend", resend_action)
    router.add_post("/admin/compensations/{id:\\d{1,9}}/resolve", resolve_action)
