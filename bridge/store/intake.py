"""Storing an accepted event: event, job, planned steps and the outbox row in ONE transaction.

On PostgreSQL the four inserts are one statement (data-modifying CTEs, so one implicit
transaction and one round trip), sent straight through asyncpg on a small pool of the
intake's own: the webhook's hot path pays for no statement building, no connection
churn and no pool bookkeeping beyond asyncpg's. Events arriving together share one
such statement (see intake_batches). Elsewhere (SQLite) they are four statements in
one SQLAlchemy transaction.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bridge.domain.events import OrderEvent
from bridge.domain.jobs import StepStatus
from bridge.store import tables as t
from bridge.store.crypto import SecretBox
from bridge.store.intake_batches import IntakeBatches
from bridge.store.intake_rows import IntakeRows, StoredEvent

__all__ = ["EventIntake", "IntakeRows", "IntakeUnavailable", "StoredEvent", "store_event"]

# How long a request waits for one of the intake's connections before answering 503.
ACQUIRE_TIMEOUT_S = 5.0


# Everything asyncpg raises of its own: server errors, a connection gone, a protocol
# out of step. None of them leaves the event stored.
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)


class IntakeUnavailable(Exception):
    """The database did not take the event: it is NOT stored."""


class EventIntake:
    """Stores accepted events; on PostgreSQL through an asyncpg pool of its own.

    The pool connects lazily (a database that is down at start only makes requests
    answer 503) and holds at most ``pool_size`` connections, which requests share in
    turn instead of opening and closing connections under load.
    """

    def __init__(self, engine: AsyncEngine, box: SecretBox, *, pool_size: int = 10) -> None:
        self._engine = engine
        self._box = box
        self._pool: asyncpg.Pool | None = None
        self._batches: IntakeBatches | None = None
        if engine.dialect.name == "postgresql":
            self._pool = asyncpg.create_pool(
                min_size=0,
                max_size=pool_size,
                timeout=5,
                command_timeout=60,
                reset=_no_session_state,
                **asyncpg_connect_args(engine),
            )
            self._batches = IntakeBatches(self._connection, store_on_postgresql)

    async def start(self) -> None:
        if self._pool is not None:
            await self._pool  # min_size=0: makes no connection yet

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def store(self, webhook_id: str, event: OrderEvent) -> StoredEvent:
        """Commit the event and its job, or find the job of an earlier copy of the same ``webhook_id``.

        Raises :class:`IntakeUnavailable` (or one of ``DATABASE_UNAVAILABLE``) when
        the event could not be stored.
        """
        rows = IntakeRows.build(self._box, webhook_id, event)
        if self._batches is None:
            return await _store_in_transaction(self._engine, rows)
        try:
            return await self._batches.store(rows)
        except _DRIVER_ERRORS as exc:
            raise IntakeUnavailable(f"{exc.__class__.__name__}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        assert self._pool is not None
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            try:
                yield conn
            except BaseException:
                # The connection is in a state nobody knows (dropped by the server,
                # cancelled mid-statement): close it, the pool opens a fresh one.
                conn.terminate()
                raise


def asyncpg_connect_args(engine: AsyncEngine) -> dict[str, Any]:
    """What asyncpg.connect needs to reach the database ``engine`` is configured for.

    SQLAlchemy's own options in the URL are translated: ``prepared_statement_cache_size``
    (0 behind a transaction-pooling PgBouncer) becomes asyncpg's ``statement_cache_size``.
    """
    _, kwargs = engine.dialect.create_connect_args(engine.url)
    kwargs.pop("async_creator_fn", None)
    kwargs.pop("prepared_statement_name_func", None)
    if "prepared_statement_cache_size" in kwargs:
        kwargs["statement_cache_size"] = int(kwargs.pop("prepared_statement_cache_size"))
    return dict(kwargs)


async def _no_session_state(conn: asyncpg.Connection) -> None:
    # The intake's connections run one autocommitted statement and a look-up: no
    # transaction, lock, LISTEN or SET outlives a request, so the pool's reset query
    # (a round trip on every release) would clear nothing. asyncpg still rolls back
    # a transaction left open, without a query when there is none.
    return None


async def store_event(engine: AsyncEngine, box: SecretBox, webhook_id: str, event: OrderEvent) -> StoredEvent:
    """:meth:`EventIntake.store` on one of ``engine``'s connections (for tools and tests)."""
    rows = IntakeRows.build(box, webhook_id, event)
    if engine.dialect.name != "postgresql":
        return await _store_in_transaction(engine, rows)
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        return await store_on_postgresql(raw.driver_connection, rows)


# A single statement is a transaction of its own: the event, job, steps and outbox row are
# committed together or not at all. A copy of an earlier webhook_id inserts nothing (the
# conflict waits for a concurrent copy to commit or roll back), and then finds that job.
STORE_ONE_STATEMENT = """
    WITH new_event AS (
        INSERT INTO events (webhook_id, type, payload, received_at)
        VALUES ($1, $2, $3::jsonb, $4)
        ON CONFLICT (webhook_id) DO NOTHING
        RETURNING id
    ), new_job AS (
        INSERT INTO jobs (public_id, event_id, webhook_id, type, service_id, panel, domain,
                          account_username, account_password, callback_url, status, next_run_at,
                          enqueued_at, cancel_requested, created_at, updated_at)
        SELECT $5, new_event.id, $1, $2, $6, $7, $8, $9, $10, $11, $12, $4, $4, false, $4, $4
        FROM new_event
        RETURNING id
    ), new_steps AS (
        INSERT INTO steps (job_id, position, kind, params, status, attempts, in_flight, updated_at)
        SELECT new_job.id, step.position, step.kind, step.params, $13, 0, false, $4
        FROM new_job CROSS JOIN jsonb_to_recordset($14::jsonb) AS step(position integer, kind text, params jsonb)
    ), new_outbox AS (
        INSERT INTO outbox (job_public_id, delay_s, created_at)
        SELECT $5, 0.0, $4 FROM new_job
    )
    SELECT id FROM new_job
"""

JOB_FOR_WEBHOOK = "SELECT public_id, status FROM jobs WHERE webhook_id = $1"


async def store_on_postgresql(conn: asyncpg.Connection, rows: IntakeRows) -> StoredEvent:
    # Outside any transaction block: the one statement commits by itself, no BEGIN/COMMIT.
    job = rows.job
    inserted = await conn.fetchval(
        STORE_ONE_STATEMENT,
        rows.webhook_id,
        job["type"],
        json.dumps(rows.event["payload"]),
        rows.now,
        rows.job_id,
        job["service_id"],
        job["panel"],
        job["domain"],
        job["account_username"],
        job["account_password"],
        job["callback_url"],
        job["status"],
        StepStatus.PENDING.value,
        json.dumps(rows.steps),
    )
    if inserted is not None:
        return StoredEvent(rows.job_id, duplicate=False)
    existing = await conn.fetchrow(JOB_FOR_WEBHOOK, rows.webhook_id)
    if existing is None:
        raise LookupError(f"webhook {rows.webhook_id!r} has an event but no job")
    return StoredEvent(existing["public_id"], duplicate=True, job_status=existing["status"])


async def _store_in_transaction(engine: AsyncEngine, rows: IntakeRows) -> StoredEvent:
    try:
        async with engine.begin() as conn:
            existing = await _job_for_webhook(conn, rows.webhook_id)
            if existing is not None:
                return existing
            event_pk = (await conn.execute(insert(t.events).values(rows.event).returning(t.events.c.id))).scalar_one()
            job_pk = (
                await conn.execute(insert(t.jobs).values(event_id=event_pk, **rows.job).returning(t.jobs.c.id))
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
                        "updated_at": rows.now,
                    }
                    for row in rows.steps
                ],
            )
            await conn.execute(insert(t.outbox).values(job_public_id=rows.job_id, delay_s=0.0, created_at=rows.now))
    except IntegrityError:
        existing = await find_job_for_webhook(engine, rows.webhook_id)
        if existing is None:
            raise
        return existing
    return StoredEvent(rows.job_id, duplicate=False)


async def find_job_for_webhook(engine: AsyncEngine, webhook_id: str) -> StoredEvent | None:
    async with engine.connect() as conn:
        return await _job_for_webhook(conn, webhook_id)


async def _job_for_webhook(conn: AsyncConnection, webhook_id: str) -> StoredEvent | None:
    found = await conn.execute(select(t.jobs.c.public_id, t.jobs.c.status).where(t.jobs.c.webhook_id == webhook_id))
    row = found.one_or_none()
    return None if row is None else StoredEvent(row.public_id, duplicate=True, job_status=row.status)
