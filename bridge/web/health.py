"""Liveness, readiness and metrics endpoints."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bridge.store.database import ping
from bridge.store.stats import refresh_gauges
from bridge.web.keys import RUNTIME


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    checks = {"database": await ping(runtime.engine), "broker": await runtime.queue.ping()}
    status = 200 if all(checks.values()) else 503
    return web.json_response({"ready": status == 200, "checks": checks}, status=status)


async def metrics(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    await refresh_gauges(runtime.engine, runtime.metrics)
    return _prometheus(runtime.metrics.render())


async def process_metrics(request: web.Request) -> web.Response:
    """A worker's own counters; the database gauges are served by ``bridge serve``."""
    return _prometheus(request.app[RUNTIME].metrics.render(database_gauges=False))


def _prometheus(body: bytes) -> web.Response:
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
