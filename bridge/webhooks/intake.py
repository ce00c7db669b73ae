"""``POST /webhooks/orders``: verify, parse, store in one transaction, answer.

Nothing slow happens here: no broker, no panel. A 2xx means the event is committed.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from bridge.domain.events import parse_event
from bridge.store.crypto import SecretsUnavailable
from bridge.store.errors import DATABASE_UNAVAILABLE
from bridge.store.intake import IntakeUnavailable
from bridge.web import json_body
from bridge.web.keys import RUNTIME
from bridge.webhooks.signature import InvalidSignature

log = logging.getLogger("bridge.webhooks")

MAX_BODY_BYTES = 64 * 1024

# What the store raises when the event is NOT stored: the answer is a 503.
NOT_STORED: tuple[type[BaseException], ...] = (IntakeUnavailable, *DATABASE_UNAVAILABLE)

_FIELD_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*): (.*)$", re.DOTALL)


def error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def read_limited(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """The body, or None when it is larger than ``limit`` (checked before and while reading)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    # read(n) returns what has arrived so far, not n bytes: a body that comes in several
    # TCP segments needs reading until its end.
    body = b""
    while len(body) <= limit:
        chunk = await request.content.read(limit + 1 - len(body))
        if not chunk:
            break
        body += chunk
    return None if len(body) > limit else body


def validation_fields(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic's errors as ``{"loc": "data.domain", "msg": ...}``, naming the field precisely.

    Our checks put the field's name in front of their message ("domain: ...", or for a
    check on a whole object "databases.0.name: ..."): that name is moved into ``loc``.
    """
    fields = []
    for problem in exc.errors(include_url=False, include_input=False):
        loc = [str(part) for part in problem["loc"]]
        msg = str(problem["msg"]).removeprefix("Value error, ")
        match = _FIELD_PREFIX.match(msg)
        if match:
            named, msg = match.groups()
            parts = named.split(".")
            if loc and loc[-1] == parts[0]:
                loc = loc[:-1]
            if not loc and parts[0] != "data":
                parts = ["data", *parts]
            loc = [*loc, *parts]
        fields.append({"loc": ".".join(loc) or "body", "msg": msg})
    return fields


async def receive_order(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    metrics = runtime.metrics
    body = await read_limited(request)
    if body is None:
        metrics.webhooks.labels("too_large").inc()
        return error(413, f"body: larger than {MAX_BODY_BYTES} bytes")
    try:
        webhook_id = runtime.verifier.verify(body, request.headers)
    except InvalidSignature as exc:
        metrics.webhooks.labels("unauthorized").inc()
        return error(401, str(exc))
    try:
        decoded = json_body.loads(body)
    except json_body.DuplicateField as exc:
        metrics.webhooks.labels("invalid").inc()
        return error(422, str(exc), fields=[{"loc": exc.where, "msg": str(exc).partition(": ")[2]}])
    except (ValueError, RecursionError) as exc:  # nesting deep enough exhausts the parser
        metrics.webhooks.labels("bad_json").inc()
        return error(400, f"body: not valid JSON ({exc.__class__.__name__}: {exc})")
    if not isinstance(decoded, dict):
        metrics.webhooks.labels("invalid").inc()
        return error(422, "body: must be a JSON object", fields=[{"loc": "body", "msg": "must be a JSON object"}])
    try:
        event = parse_event(decoded)
    except ValidationError as exc:
        metrics.webhooks.labels("invalid").inc()
        fields = validation_fields(exc)
        summary = "; ".join(f"{f['loc']}: {f['msg']}" for f in fields[:5])
        return error(422, summary, fields=fields)
    if runtime.settings.panel(event.data.panel) is None:
        metrics.webhooks.labels("invalid").inc()
        msg = f"unknown panel {event.data.panel!r}; configured: {', '.join(runtime.panel_names) or 'none'}"
        return error(422, f"data.panel: {msg}", fields=[{"loc": "data.panel", "msg": msg}])
    try:
        stored = await runtime.intake.store(webhook_id, event)
    except SecretsUnavailable as exc:
        metrics.webhooks.labels("unavailable").inc()
        log.error("cannot store an order: %s", exc)
        return error(503, "the bridge cannot store secrets right now (BRIDGE_SECRET_KEY)")
    except NOT_STORED as exc:
        metrics.webhooks.labels("unavailable").inc()
        log.error("database unavailable, order not stored: %s", exc.__class__.__name__)
        return error(503, "the database is unavailable; the event was NOT stored, send it again later")
    if stored.duplicate:
        metrics.webhooks.labels("duplicate").inc()
        return web.json_response(
            {"job_id": stored.job_id, "status": "accepted", "duplicate": True, "job_status": stored.job_status},
            status=200,
        )
    metrics.webhooks.labels("accepted").inc()
    runtime.wake_relay()
    log.info("order accepted", extra={"job_id": stored.job_id, "event_id": webhook_id})
    return web.json_response({"job_id": stored.job_id, "status": "accepted", "duplicate": False}, status=202)
