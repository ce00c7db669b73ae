"""Callback rows: written in the same transaction as the job change they report."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from bridge.callbacks.origins import origin_allowed
from bridge.store import tables as t
from bridge.store.job_view import callback_body, job_document
from bridge.store.types import utcnow


@dataclass(frozen=True)
class CallbackPolicy:
    allowed_origins: list[str] = field(default_factory=list)
    secret_configured: bool = False


def refusal_reason(url: str, policy: CallbackPolicy) -> str | None:
    """Why a callback to ``url`` must not be sent (it is recorded as refused), or None."""
    if not policy.secret_configured:
        return "BRIDGE_CALLBACK_SECRET is not set, so callbacks cannot be signed"
    if not origin_allowed(url, policy.allowed_origins):
        return "the URL's origin is not in BRIDGE_CALLBACK_ALLOWED_ORIGINS; never called"
    return None


async def enqueue_callback(
    conn: AsyncConnection, job_pk: int, url: str | None, event_type: str, policy: CallbackPolicy
) -> None:
    """Write the ``event_type`` callback of the job (whose callback URL is ``url``), if it has a URL."""
    if not url:
        return
    body = callback_body(await job_document(conn, job_pk), event_type)
    await insert_callback(conn, job_pk, event_type, url, body, policy)


@dataclass(frozen=True)
class NewCallback:
    public_id: str
    status: str  # pending, or refused (never to be sent)
    refusal: str | None


def callback_row(
    job_pk: int, event_type: str, url: str, body: dict[str, Any], policy: CallbackPolicy
) -> tuple[dict[str, Any], NewCallback]:
    """The ``callbacks`` row of one callback, pending or (when the policy forbids sending it) refused."""
    now = utcnow()
    refusal = refusal_reason(url, policy)
    new = NewCallback(f"cb_{uuid.uuid4().hex}", "pending" if refusal is None else "refused", refusal)
    row = {
        "public_id": new.public_id,
        "job_id": job_pk,
        "type": event_type,
        "url": url,
        "body": body,
        "status": new.status,
        "attempts": 0,
        "next_attempt_at": now if refusal is None else None,
        "created_at": now,
        "last_error": refusal,
    }
    return row, new


async def insert_callback(
    conn: AsyncConnection, job_pk: int, event_type: str, url: str, body: dict[str, Any], policy: CallbackPolicy
) -> NewCallback:
    """Write one callback row (see :func:`callback_row`)."""
    row, new = callback_row(job_pk, event_type, url, body, policy)
    await conn.execute(insert(t.callbacks).values(**row))
    return new
