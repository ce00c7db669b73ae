"""Which other job of a service made what a step meets on the panel, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

from conftest import FERNET_KEY
from cryptography.fernet import Fernet
from orders import DB_PASSWORD, service_create
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.domain.events import parse_event
from bridge.domain.jobs import StepKind
from bridge.store import tables as t
from bridge.store.crypto import SecretBox
from bridge.store.intake import store_event
from bridge.store.service_effects import made_by_another_job
from bridge.store.types import utcnow

BOX = SecretBox([FERNET_KEY])
DATABASE = {"name": "wp", "user": "wpuser", "password": DB_PASSWORD}


async def made_a_database(engine: AsyncEngine, **order: Any) -> int:
    """A job whose create_database step succeeded and recorded its undo; the job's row id."""
    event = parse_event(service_create(databases=[DATABASE], **order))
    job_id = (await store_event(engine, BOX, f"msg_{uuid.uuid4().hex}", event)).job_id
    now = utcnow()
    async with engine.begin() as conn:
        job_pk = (await conn.execute(select(t.jobs.c.id).where(t.jobs.c.public_id == job_id))).scalar_one()
        of_step = (t.steps.c.job_id == job_pk, t.steps.c.kind == "create_database")
        await conn.execute(update(t.steps).where(*of_step).values(status="succeeded"))
        step_id = (await conn.execute(select(t.steps.c.id).where(*of_step))).scalar_one()
        undo = {"job_id": job_pk, "step_id": step_id, "step": "create_database", "action": "drop it"}
        await conn.execute(insert(t.compensations).values(**undo, status="pending", created_at=now))
    return int(job_pk)


async def ask(engine: AsyncEngine, box: SecretBox = BOX, **where: Any) -> Any:
    mine = {**DATABASE, "password": DB_PASSWORD}
    return await made_by_another_job(
        engine,
        box,
        job_pk=0,
        **{"service_id": "4711", "panel": "default", "account": "john", **where},
        kind=StepKind.CREATE_DATABASE,
        params=mine,
    )


async def test_the_same_database_made_by_another_job_of_the_service(engine: AsyncEngine) -> None:
    await made_a_database(engine)
    earlier = await ask(engine)
    assert earlier is not None and earlier.differs == ()
    # Another service, panel or account: not the service's own.
    assert await ask(engine, service_id="4712") is None
    assert await ask(engine, panel="eu") is None
    assert await ask(engine, account="mary") is None


async def test_a_password_stored_under_a_retired_key_counts_as_different(engine: AsyncEngine) -> None:
    await made_a_database(engine)
    rotated = SecretBox([Fernet.generate_key().decode()])  # the old key dropped from BRIDGE_SECRET_KEY
    earlier = await ask(engine, rotated)
    assert earlier is not None and earlier.differs == ("password",)
