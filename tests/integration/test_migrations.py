"""Migrations that change what is already stored, from the revision before them, on both databases."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import FERNET_KEY, create_pg_database, drop_pg_database
from orders import service_create
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from bridge.domain.events import OrderEvent
from bridge.store import tables as t
from bridge.store.crypto import SecretBox
from bridge.store.database import create_engine, migrate
from bridge.store.intake import store_event
from bridge.store.types import utcnow


@pytest.fixture(params=["sqlite", "pg"])
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database with no schema yet."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
        return
    name = f"bridge_migration_{uuid.uuid4().hex[:8]}"
    yield await create_pg_database(name)
    await drop_pg_database(name)


async def test_attempts_that_shared_a_number_are_numbered_again_and_never_share_one_after(empty_url: str) -> None:
    await migrate(empty_url, "0002")
    engine = create_engine(empty_url)
    try:
        event = OrderEvent.model_validate(service_create())
        await store_event(engine, SecretBox([FERNET_KEY]), "msg_old", event)
        async with engine.begin() as conn:
            first, second = (await conn.execute(select(t.steps.c.id).order_by(t.steps.c.id).limit(2))).scalars()
            now = utcnow()
            # The old bug: a held-back attempt and the next one both numbered 2.
            await conn.execute(
                insert(t.attempts),
                [
                    {"step_id": first, "number": n, "started_at": now, "outcome": outcome}
                    for n, outcome in ((1, "retryable"), (2, "breaker_open"), (2, "retryable"), (3, "succeeded"))
                ]
                + [{"step_id": second, "number": 1, "started_at": now, "outcome": "succeeded"}],
            )
        await migrate(empty_url)
        async with engine.connect() as conn:
            numbered = (
                await conn.execute(
                    select(t.attempts.c.step_id, t.attempts.c.number, t.attempts.c.outcome).order_by(t.attempts.c.id)
                )
            ).all()
        assert [tuple(row) for row in numbered] == [
            (first, 1, "retryable"),
            (first, 2, "breaker_open"),
            (first, 3, "retryable"),
            (first, 4, "succeeded"),
            (second, 1, "succeeded"),
        ]
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(insert(t.attempts).values(step_id=first, number=4, started_at=utcnow()))
    finally:
        await engine.dispose()
