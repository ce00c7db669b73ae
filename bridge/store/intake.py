"""Storing an accepted event: event, job, planned steps and the outbox row in ONE transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

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
    existing = await find_job_for_webhook(engine, webhook_id)
    if existing is not None:
        return StoredEvent(existing, duplicate=True)
    now = utcnow()
    job_id = str(uuid.uuid4())
    data = event.data
    payload = box.encrypt_fields(event.model_dump(mode="json"))
    try:
        async with engine.begin() as conn:
            event_pk = (
                await conn.execute(
                    insert(t.events)
                    .values(webhook_id=webhook_id, type=event.type, payload=payload, received_at=now)
                    .returning(t.events.c.id)
                )
            ).scalar_one()
            job_pk = (
                await conn.execute(
                    insert(t.jobs)
                    .values(
                        public_id=job_id,
                        event_id=event_pk,
                        webhook_id=webhook_id,
                        type=event.type,
                        service_id=data.service_id,
                        panel=data.panel,
                        domain=data.domain,
                        account_username=data.account.username,
                        account_password=box.encrypt(data.account.password),
                        callback_url=data.callback_url,
                        status=JobStatus.ACCEPTED,
                        next_run_at=now,
                        enqueued_at=now,
                        cancel_requested=False,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(t.jobs.c.id)
                )
            ).scalar_one()
            await conn.execute(
                insert(t.steps),
                [
                    {
                        "job_id": job_pk,
                        "position": position,
                        "kind": step.kind,
                        "params": box.encrypt_fields(step.params),
                        "status": StepStatus.PENDING,
                        "attempts": 0,
                        "in_flight": False,
                        "updated_at": now,
                    }
                    for position, step in enumerate(plan(event))
                ],
            )
            await conn.execute(insert(t.outbox).values(job_public_id=job_id, delay_s=0.0, created_at=now))
    except IntegrityError:
        existing = await find_job_for_webhook(engine, webhook_id)
        if existing is None:
            raise
        return StoredEvent(existing, duplicate=True)
    return StoredEvent(job_id, duplicate=False)


async def find_job_for_webhook(engine: AsyncEngine, webhook_id: str) -> str | None:
    async with engine.connect() as conn:
        found = await conn.execute(select(t.jobs.c.public_id).where(t.jobs.c.webhook_id == webhook_id))
        return found.scalar_one_or_none()
