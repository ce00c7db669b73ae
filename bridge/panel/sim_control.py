"""The simulator's control endpoints under ``/_sim/``, for driving it from another process.

Every endpoint takes and returns JSON and mirrors one knob of
:class:`~bridge.panel.simulator.PanelSimulator`. They have no authentication:
a simulator is a test fixture and must never face a network.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bridge.panel.sim_state import ManualClock

if TYPE_CHECKING:
    from bridge.panel.simulator import PanelSimulator

__all__ = ["add_control_routes"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _bad_request(text: str) -> web.Response:
    return web.json_response({"error": text}, status=400)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"invalid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


def add_control_routes(app: web.Application, sim: PanelSimulator) -> None:
    """Register ``/_sim/*`` on ``app`` (before the panel's catch-all route)."""

    async def state(request: web.Request) -> web.Response:
        return web.json_response(sim.snapshot())

    async def reset(request: web.Request) -> web.Response:
        sim.reset()
        return web.json_response({"ok": True})

    async def accounts(request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            sim.add_account(
                str(body["username"]),
                str(body["password"]),
                int(body.get("domain_limit", 0)),
                int(body.get("db_limit", 0)),
                int(body.get("subdomain_limit", 0)),
                bool(body.get("has_package", True)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            return _bad_request(f"expected username, password and whole-number limits ({exc})")
        return web.json_response({"ok": True})

    async def latency(request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            sim.set_latency(float(body["seconds"]), str(body.get("call", "mutating")))
        except (KeyError, TypeError, ValueError) as exc:
            return _bad_request(f"expected seconds and optionally call ({exc})")
        return web.json_response({"ok": True})

    async def faults(request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            sim.inject_fault(str(body["call"]), str(body["fault"]))
        except (KeyError, ValueError) as exc:
            return _bad_request(str(exc))
        return web.json_response({"ok": True})

    async def ssl_failures(request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            sim.fail_ssl(str(body["domain"]), int(body["attempts"]))
        except (KeyError, TypeError, ValueError) as exc:
            return _bad_request(f"expected domain and attempts ({exc})")
        return web.json_response({"ok": True})

    async def api(request: web.Request) -> web.Response:
        body = await _body(request)
        sim.set_api_enabled(bool(body.get("enabled", True)))
        return web.json_response({"ok": True})

    async def clock(request: web.Request) -> web.Response:
        if not isinstance(sim.clock, ManualClock):
            return _bad_request("this simulator runs on the real clock")
        body = await _body(request)
        try:
            sim.clock.advance(float(body["advance"]))
        except (KeyError, TypeError, ValueError) as exc:
            return _bad_request(f"expected advance in seconds ({exc})")
        return web.json_response({"now": sim.clock()})

    app.router.add_get("/_sim/state", state)
    routes: dict[str, Handler] = {
        "/_sim/reset": reset,
        "/_sim/accounts": accounts,
        "/_sim/latency": latency,
        "/_sim/faults": faults,
        "/_sim/ssl_failures": ssl_failures,
        "/_sim/api": api,
        "/_sim/clock": clock,
    }
    for path, handler in routes.items():
        app.router.add_post(path, handler)
