"""How the simulated panel answers an HTTP request, in the real panel's order.

First the firewall (outside Django on the real server), then URL resolution
(HTML 404, or a 301 when only the trailing slash is missing: the POST body is
lost), then the panel's ``api_login_required`` checks (API switch, method,
headers, credentials; each failed login feeds the firewall), then latency,
injected faults and the view itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bridge.panel.config import MUTATING_CALLS
from bridge.panel.sim_state import PanelCrash, SimAccount

if TYPE_CHECKING:
    from bridge.panel.simulator import PanelSimulator

__all__ = ["dispatch", "html_page"]

_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
# Calls whose failures carry "message"; the others answer "error".
_MESSAGE_KEY_CALLS = frozenset({"add_domain", "domain_issue_ssl"})
_VIEWS = frozenset(
    {
        "add_domain",
        "domain_list",
        "domain_issue_ssl",
        "db_make",
        "database_list",
        "database_userlist",
        "cronjob_add",
        "cronjob_list",
    }
)


def html_page(status: int, title: str) -> web.Response:
    return web.Response(
        status=status,
        text=f"<!doctype html><html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>",
        content_type="text/html",
        charset="utf-8",
    )


def route(path: str) -> tuple[str, int | None] | None:
    """The view a path names (and a cron line number), or None if the panel has none."""
    if path == "/api/":
        return "account_info", None
    parts = path.split("/")
    if len(parts) == 4 and parts[1] == "api" and parts[3] == "" and parts[2] in _VIEWS:
        return parts[2], None
    if len(parts) == 5 and parts[1:3] == ["api", "cronjob_delete"] and parts[4] == "":
        return ("cronjob_delete", int(parts[3])) if parts[3].isdigit() else None
    return None


def _drop(request: web.Request) -> web.Response:
    """Close the connection without an answer; the response returned is never written."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response()


async def dispatch(sim: PanelSimulator, request: web.Request) -> web.StreamResponse:
    state = sim.state
    ip = request.remote or "unknown"
    found = route(request.path)
    if found is not None and sim.bans_next(found[0]):
        state.firewall.ban(ip)
    if state.firewall.is_banned(ip):
        return html_page(403, "403 Forbidden")
    if found is None:
        if not request.path.endswith("/") and route(request.path + "/") is not None:
            # Django's APPEND_SLASH: a redirect, and the POST body is gone.
            raise web.HTTPMovedPermanently(location=request.path + "/")
        return html_page(404, "Not Found")
    call, line = found
    state.counters[call] += 1
    if not state.api_enabled:
        return web.json_response({"error": "API is currently disabled"})
    if request.method != "POST":
        return web.json_response({"error": "POST method required"})
    username = request.headers.get("username")
    password = request.headers.get("password")
    if not username or not password:
        return web.json_response({"error": "Username and API key or password required"})
    account = state.authenticate(username, password)
    if account is None:
        state.firewall.record_failure(ip)
        return web.json_response({"error": "Invalid credentials"})
    # Django fills request.POST from form bodies only; a JSON body leaves it empty.
    form = await request.post() if request.content_type in _FORM_TYPES else {}
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    record: dict[str, Any] = {"call": call, "account": username, "time": sim.clock(), "finished": None}
    state.calls.append(record)
    # Like the real panel (Django behind a WSGI server), a call is worked through to its end even
    # when the client goes away meanwhile: a caller killed mid-call may still have had its effect.
    work = asyncio.ensure_future(_counting_mutations(sim, call, _answer(sim, request, call, account, fields, line)))
    sim.unfinished.add(work)

    def finished(_: asyncio.Future[web.StreamResponse]) -> None:
        # Until then the record shows the panel still working on this call.
        record["finished"] = sim.clock()
        sim.unfinished.discard(work)

    work.add_done_callback(finished)
    return await asyncio.shield(work)


async def _counting_mutations(
    sim: PanelSimulator, call: str, answer: Coroutine[Any, Any, web.StreamResponse]
) -> web.StreamResponse:
    """``answer``, counted among the mutations in progress when ``call`` is one."""
    if call not in MUTATING_CALLS:
        return await answer
    sim.mutations_in_flight += 1
    sim.state.max_concurrent_mutations = max(sim.state.max_concurrent_mutations, sim.mutations_in_flight)
    try:
        return await answer
    finally:
        sim.mutations_in_flight -= 1


async def _answer(
    sim: PanelSimulator,
    request: web.Request,
    call: str,
    account: SimAccount,
    fields: dict[str, str],
    line: int | None,
) -> web.StreamResponse:
    delay = sim.latency_for(call)
    if delay:
        await asyncio.sleep(delay)
    kind, _, arg = sim.next_fault(call).partition(":")
    if kind == "html500":
        return html_page(500, "Server Error (500)")
    if kind == "reset":
        return _drop(request)
    if kind == "error":
        key = "message" if call in _MESSAGE_KEY_CALLS else "error"
        return web.json_response({"success": False, key: arg})
    try:
        if call == "cronjob_delete":
            answer = sim.state.cronjob_delete(account, line or 0)
        else:
            answer = getattr(sim.state, call)(account, fields)
    except PanelCrash:
        return html_page(500, "Server Error (500)")
    if kind == "reset_after":
        return _drop(request)
    if kind == "late":
        await asyncio.sleep(float(arg))
    return web.json_response(answer)
