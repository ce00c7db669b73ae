"""Storing an accepted event: event, job, planned steps and the outbox row in ONE transaction.

On PostgreSQL the four inserts are one statement (data-modifying CTEs, so one implicit
transaction and one round trip); elsewhere they are four statements in one transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import DateTime

from bridge.domain.events import OrderEvent
from bridge.domain.jobs import JobStatus, StepStatus, plan
from bridge.store import tables as t
from bridge.store.crypto import SecretBox
from bridge.store.types import utcnow


@dataclass(frozen=True)
class StoredEvent:
    job_id: str
    duplicate: bool


async def store_event(engine: AsyncEngine, box: SecretBox, webhook_id: str, event: OrderEvent) -> StoredEvent:
    """Commit the event and its job, or find the job of an earlier copy of the same ``webhook_id``.

    The unique ``webhook_id`` makes concurrent copies race safely: exactly one insert
    wins, the others find its job.
    """
    now = utcnow()
    job_id = str(uuid.uuid4())
    data = event.data
    event_row = {
        "webhook_id": webhook_id,
        "type": event.type,
        "payload": box.encrypt_fields(event.model_dump(mode="json")),
        "received_at": now,
    }
    job_row = {
        "public_id": job_id,
        "webhook_id": webhook_id,
        "type": event.type,
        "service_id": data.service_id,
        "panel": data.panel,
        "domain": data.domain,
        "account_username": data.account.username,
        "account_password": box.encrypt(data.account.password),
        "callback_url": data.callback_url,
        "status": JobStatus.ACCEPTED.value,
        "next_run_at": now,
        "enqueued_at": now,
        "cancel_requested": False,
        "created_at": now,
        "updated_at": now,
    }
    step_rows = [
        {"position": position, "kind": step.kind.value, "params": box.encrypt_fields(step.params)}
        for position, step in enumerate(plan(event))
    ]
    if engine.dialect.name == "postgresql":
        return await _store_in_one_statement(engine, event_row, job_row, step_rows, now)
    try:
        async with engine.begin() as conn:
            existing = await _job_for_webhook(conn, webhook_id)
            if existing is not None:
                return StoredEvent(existing, duplicate=True)
            event_pk = (await conn.execute(insert(t.events).values(event_row).returning(t.events.c.id))).scalar_one()
            job_pk = (
                await conn.execute(insert(t.jobs).values(event_id=event_pk, **job_row).returning(t.jobs.c.id))
            ).scalar_one()
            await conn.execute(
                insert(t.steps),
                [
                    {
                        **row,
                        "job_id": job_pk,
                        "status": StepStatus.PENDING,
                        "attempts": 0,
                        "in_flight": False,
                        "updated_at": now,
                    }
                    for row in step_rows
                ],
            )
            await conn.execute(insert(t.outbox).values(job_public_id=job_id, delay_s=0.0, created_at=now))
    except IntegrityError:
        existing = await find_job_for_webhook(engine, webhook_id)
        if existing is None:
            raise
        return StoredEvent(existing, duplicate=True)
    return StoredEvent(job_id, duplicate=False)


# A single statement is a transaction of its own: the event, job, steps and outbox row are
# committed together or not at all. A copy of an earlier webhook_id inserts nothing (the
# conflict waits for a concurrent copy to commit or roll back), and then finds that job.
_STORE_ONE_STATEMENT = text(
    """
    WITH new_event AS (
        INSERT INTO events (webhook_id, type, payload, received_at)
        VALUES (:webhook_id, :type, :payload, :now)
        ON CONFLICT (webhook_id) DO NOTHING
        RETURNING id
    ), new_job AS (
        INSERT INTO jobs (public_id, event_id, webhook_id, type, service_id, panel, domain,
                          account_username, account_password, callback_url, status, next_run_at,
                          enqueued_at, cancel_requested, created_at, updated_at)
        SELECT :public_id, new_event.id, :webhook_id, :type, :service_id, :panel, :domain,
               :account_username, :account_password, :callback_url, :status, :now,
               :now, false, :now, :now
        FROM new_event
        RETURNING id
    ), new_steps AS (
        INSERT INTO steps (job_id, position, kind, params, status, attempts, in_flight, updated_at)
        SELECT new_job.id, step.position, step.kind, step.params, :step_status, 0, false, :now
        FROM new_job CROSS JOIN jsonb_to_recordset(:steps) AS step(position integer, kind text, params jsonb)
    ), new_outbox AS (
        INSERT INTO outbox (job_public_id, delay_s, created_at)
        SELECT :public_id, 0.0, :now FROM new_job
    )
    SELECT id FROM new_job
    """
).bindparams(
    bindparam("payload", type_=JSONB),
    bindparam("steps", type_=JSONB),
    bindparam("now", type_=DateTime(timezone=True)),
)


async def _store_in_one_statement(
    engine: AsyncEngine,
    event_row: dict[str, Any],
    job_row: dict[str, Any],
    step_rows: list[dict[str, Any]],
    now: Any,
) -> StoredEvent:
    params = {
        "webhook_id": event_row["webhook_id"],
        "type": event_row["type"],
        "payload": event_row["payload"],
        "now": now,
        "public_id": job_row["public_id"],
        "service_id": job_row["service_id"],
        "panel": job_row["panel"],
        "domain": job_row["domain"],
        "account_username": job_row["account_username"],
        "account_password": job_row["account_password"],
        "callback_url": job_row["callback_url"],
        "status": job_row["status"],
        "step_status": StepStatus.PENDING.value,
        "steps": step_rows,
    }
    async with engine.connect() as conn:
        # No BEGIN/COMMIT round trips: the one statement commits by itself.
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        inserted = (await conn.execute(_STORE_ONE_STATEMENT, params)).scalar_one_or_none()
        if inserted is not None:
            return StoredEvent(job_row["public_id"], duplicate=False)
        existing = await _job_for_webhook(conn, event_row["webhook_id"])
    if existing is None:
        raise LookupError(f"webhook {event_row['webhook_id']!r} has an event but no job")
    return StoredEvent(existing, duplicate=True)


async def find_job_for_webhook(engine: AsyncEngine, webhook_id: str) -> str | None:
    async with engine.connect() as conn:
        return await _job_for_webhook(conn, webhook_id)


async def _job_for_webhook(conn: AsyncConnection, webhook_id: str) -> str | None:
    found = await conn.execute(select(t.jobs.c.public_id).where(t.jobs.c.webhook_id == webhook_id))
    return found.scalar_one_or_none()
