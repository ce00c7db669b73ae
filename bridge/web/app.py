"""The HTTP application: routes and the one error middleware."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from bridge.admin.routes import add_admin_routes
from bridge.web import health
from bridge.web.keys import RUNTIME
from bridge.webhooks.intake import MAX_BODY_BYTES, receive_order

if TYPE_CHECKING:
    from bridge.bootstrap import Runtime

log = logging.getLogger("bridge.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error answer is JSON with an ``error`` field; nothing a client sends gives a 5xx."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        reason = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 413:
            reason = f"body: larger than {MAX_BODY_BYTES} bytes"
        return web.json_response({"error": reason}, status=exc.status, headers=_passthrough(exc))
    except web.RequestPayloadError:
        # A body that does not decode as its Content-Encoding says, or broken chunked framing.
        return web.json_response({"error": "body: cannot be read (broken Content-Encoding or chunking)"}, status=400)
    except Exception:
        log.exception("unexpected error handling %s %s", request.method, request.path)
        return web.json_response({"error": "internal error; see the bridge's log"}, status=500)


def _passthrough(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def create_app(runtime: Runtime, *, extra_routes: Callable[[web.Application], None] | None = None) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=MAX_BODY_BYTES + 1)
    app[RUNTIME] = runtime
    app.router.add_post("/webhooks/orders", receive_order)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/metrics", health.metrics)
    add_admin_routes(app)
    if extra_routes is not None:
        extra_routes(app)
    return app


def create_worker_app(runtime: Runtime) -> web.Application:
    """``bridge worker``'s small server: what the worker counted, and whether it lives."""
    app = web.Application(middlewares=[json_errors])
    app[RUNTIME] = runtime
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/metrics", health.process_metrics)
    return app
