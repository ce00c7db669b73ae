"""A job as the admin API and the callbacks show it (CONTRACT.md §3–§5). Secrets masked."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from bridge.domain.jobs import DEFERRABLE_KINDS, JobStatus, StepStatus
from bridge.domain.masking import mask
from bridge.store import tables as t


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def step_document(row: Any, *, detail: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": row.kind,
        "status": row.status,
        "attempts": row.attempts,
        "result": row.result,
        "error": row.error,
    }
    if detail:
        doc.update(
            position=row.position,
            params=mask(row.params),
            next_attempt_at=_iso(row.next_attempt_at),
            in_flight=row.in_flight,
        )
    return doc


def deferred_kinds(job_status: str, steps: list[Any]) -> list[str]:
    """Steps still waiting on their own schedule after the job succeeded (CONTRACT.md §3)."""
    if job_status != JobStatus.SUCCEEDED:
        return []
    return [s.kind for s in steps if s.kind in DEFERRABLE_KINDS and s.status == StepStatus.WAITING_RETRY]


async def _rows(conn: AsyncConnection, table: Any, where: Any, order: Any) -> list[Any]:
    return list((await conn.execute(select(table).where(where).order_by(order))).all())


async def job_document(conn: AsyncConnection, job_pk: int, *, detail: bool = False) -> dict[str, Any]:
    job = (await conn.execute(select(t.jobs).where(t.jobs.c.id == job_pk))).one()
    steps = await _rows(conn, t.steps, t.steps.c.job_id == job_pk, t.steps.c.position)
    comps = await _rows(conn, t.compensations, t.compensations.c.job_id == job_pk, t.compensations.c.id)
    deferred = deferred_kinds(job.status, steps)
    doc: dict[str, Any] = {
        "job_id": job.public_id,
        "event_id": job.webhook_id,
        "type": job.type,
        "service_id": job.service_id,
        "panel": job.panel,
        "domain": job.domain,
        "account": job.account_username,
        "status": job.status,
        "steps": [step_document(s, detail=detail) for s in steps],
        "deferred": deferred,
        "error": job.error,
        "compensations": [
            {"id": c.id, "step": c.step, "action": c.action, "status": c.status, "resolved_at": _iso(c.resolved_at)}
            for c in comps
        ],
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "finished_at": _iso(job.finished_at),
    }
    if detail:
        doc["callbacks"] = await _callbacks(conn, job_pk)
        doc["attempts"] = await _attempts(conn, [s.id for s in steps], {s.id: s.kind for s in steps})
        doc["panel_calls"] = await _panel_calls(conn, job_pk)
        doc["next_run_at"] = _iso(job.next_run_at)
        doc["lease_owner"] = job.lease_owner
        doc["cancel_requested"] = job.cancel_requested
    return doc


async def _callbacks(conn: AsyncConnection, job_pk: int) -> list[dict[str, Any]]:
    rows = await _rows(conn, t.callbacks, t.callbacks.c.job_id == job_pk, t.callbacks.c.id)
    ids = [r.id for r in rows]
    tries = await _rows(conn, t.callback_attempts, t.callback_attempts.c.callback_id.in_(ids), t.callback_attempts.c.id)
    return [
        {
            "id": r.public_id,
            "type": r.type,
            "url": r.url,
            "status": r.status,
            "attempts": r.attempts,
            "next_attempt_at": _iso(r.next_attempt_at),
            "delivered_at": _iso(r.delivered_at),
            "last_error": r.last_error,
            "deliveries": [
                {
                    "at": _iso(a.attempted_at),
                    "http_status": a.http_status,
                    "error": a.error,
                    "duration_ms": round(a.duration_ms, 1),
                }
                for a in tries
                if a.callback_id == r.id
            ],
        }
        for r in rows
    ]


async def _attempts(conn: AsyncConnection, step_ids: list[int], kinds: dict[int, str]) -> list[dict[str, Any]]:
    rows = await _rows(conn, t.attempts, t.attempts.c.step_id.in_(step_ids), t.attempts.c.id)
    return [
        {
            "id": a.id,
            "step": kinds[a.step_id],
            "number": a.number,
            "worker": a.worker,
            "started_at": _iso(a.started_at),
            "finished_at": _iso(a.finished_at),
            "outcome": a.outcome,
            "message": a.message,
        }
        for a in rows
    ]


async def _panel_calls(conn: AsyncConnection, job_pk: int) -> list[dict[str, Any]]:
    rows = await _rows(conn, t.panel_calls, t.panel_calls.c.job_id == job_pk, t.panel_calls.c.id)
    return [
        {
            "attempt_id": c.attempt_id,
            "call": c.call,
            "request": mask(c.request),
            "http_status": c.http_status,
            "response": c.response,
            "outcome": c.outcome,
            "message": c.message,
            "duration_ms": round(c.duration_ms, 1),
            "at": _iso(c.created_at),
        }
        for c in rows
    ]


def callback_body(doc: dict[str, Any], event_type: str) -> dict[str, Any]:
    """The callback's JSON (CONTRACT.md §4): the job document without admin-only detail."""
    keep = (
        "job_id",
        "event_id",
        "service_id",
        "domain",
        "account",
        "status",
        "steps",
        "deferred",
        "error",
        "compensations",
    )
    data = {key: doc[key] for key in keep}
    data["compensations"] = [{k: c[k] for k in ("id", "step", "action", "status")} for c in doc["compensations"]]
    return {"type": event_type, "data": data}
