"""Group commit for the webhook on PostgreSQL: events that arrive while a write is in
flight are stored together by the next one.

Each request still gets its answer only after the statement holding its event has
committed (a 2xx means stored). The first event after a quiet spell is written at
once, alone; under load, the events that queued up during a write go in the next one,
so the database runs one statement (and one commit) for many events. If a batch
fails for a reason other than the connection, each of its events is written on its
own, so one event cannot make the others fail.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from bridge.domain.jobs import StepStatus
from bridge.store.intake_rows import IntakeRows, StoredEvent

# One statement for a batch: the same rows as the single-event statement, for every
# event of the batch that is new. A webhook_id already stored inserts nothing.
STORE_BATCH = """
    WITH input AS (
        SELECT * FROM jsonb_to_recordset($1::jsonb) AS i(
            n integer, webhook_id text, type text, payload jsonb, received_at timestamptz,
            public_id text, service_id text, panel text, domain text, account_username text,
            account_password text, callback_url text, status text, steps jsonb)
    ), new_events AS (
        INSERT INTO events (webhook_id, type, payload, received_at)
        SELECT webhook_id, type, payload, received_at FROM input ORDER BY n
        ON CONFLICT (webhook_id) DO NOTHING
        RETURNING id, webhook_id
    ), new_jobs AS (
        INSERT INTO jobs (public_id, event_id, webhook_id, type, service_id, panel, domain,
                          account_username, account_password, callback_url, status, next_run_at,
                          enqueued_at, cancel_requested, created_at, updated_at)
        SELECT i.public_id, e.id, i.webhook_id, i.type, i.service_id, i.panel, i.domain,
               i.account_username, i.account_password, i.callback_url, i.status, i.received_at,
               i.received_at, false, i.received_at, i.received_at
        FROM new_events AS e JOIN input AS i ON i.webhook_id = e.webhook_id
        ORDER BY i.n
        RETURNING id, public_id, webhook_id, created_at
    ), new_steps AS (
        INSERT INTO steps (job_id, position, kind, params, status, attempts, in_flight, updated_at)
        SELECT j.id, s.position, s.kind, s.params, $2, 0, false, j.created_at
        FROM new_jobs AS j JOIN input AS i ON i.webhook_id = j.webhook_id
        CROSS JOIN jsonb_to_recordset(i.steps) AS s(position integer, kind text, params jsonb)
    ), new_outbox AS (
        INSERT INTO outbox (job_public_id, delay_s, created_at)
        SELECT public_id, 0.0, created_at FROM new_jobs
    )
    SELECT webhook_id FROM new_jobs
"""

JOBS_FOR_WEBHOOKS = "SELECT webhook_id, public_id, status FROM jobs WHERE webhook_id = ANY($1::text[])"

CONNECTION_LOST = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError, TimeoutError)

Pending = tuple[IntakeRows, "asyncio.Future[StoredEvent]"]


class IntakeBatches:
    def __init__(
        self,
        acquire: Callable[[], Any],
        store_one: Callable[[asyncpg.Connection, IntakeRows], Awaitable[StoredEvent]],
        *,
        max_batch: int = 64,
        writers: int = 2,
    ) -> None:
        """``acquire()``: a connection from the intake's pool (an async context manager);
        ``store_one``: the single-event write, for events of a batch that failed."""
        self._acquire = acquire
        self._store_one = store_one
        self._max_batch = max_batch
        self._writers = writers
        self._writing = 0
        self._queue: list[Pending] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def store(self, rows: IntakeRows) -> StoredEvent:
        future: asyncio.Future[StoredEvent] = asyncio.get_running_loop().create_future()
        self._queue.append((rows, future))
        self._start_writers()
        # A request that goes away does not cancel the batch it is in.
        stored: StoredEvent = await asyncio.shield(future)
        return stored

    def _start_writers(self) -> None:
        while self._queue and self._writing < self._writers:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            self._writing += 1
            task = asyncio.create_task(self._write(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write(self, batch: list[Pending]) -> None:
        try:
            await self._write_batch(batch)
        except BaseException as exc:  # every waiting request gets an answer
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else ConnectionError("stopped"))
        finally:
            self._writing -= 1
            self._start_writers()

    async def _write_batch(self, batch: list[Pending]) -> None:
        # Copies of one webhook_id within the batch: the first is written, the others are its duplicates.
        first: dict[str, IntakeRows] = {}
        for rows, _ in batch:
            first.setdefault(rows.webhook_id, rows)
        async with self._acquire() as conn:
            try:
                inserted = await self._insert(conn, list(first.values()))
            except CONNECTION_LOST:
                raise
            except asyncpg.PostgresError:
                await self._one_by_one(conn, batch)
                return
            missing = [webhook_id for webhook_id in first if webhook_id not in inserted]
            found = {r["webhook_id"]: r for r in await conn.fetch(JOBS_FOR_WEBHOOKS, missing)} if missing else {}
        for rows, future in batch:
            if future.done():
                continue
            if first[rows.webhook_id] is rows and rows.webhook_id in inserted:
                future.set_result(StoredEvent(rows.job_id, duplicate=False))
            elif rows.webhook_id in inserted:
                future.set_result(StoredEvent(first[rows.webhook_id].job_id, duplicate=True))
            elif (existing := found.get(rows.webhook_id)) is not None:
                future.set_result(StoredEvent(existing["public_id"], duplicate=True, job_status=existing["status"]))
            else:
                future.set_exception(LookupError(f"webhook {rows.webhook_id!r} has an event but no job"))

    async def _insert(self, conn: asyncpg.Connection, events: list[IntakeRows]) -> set[str]:
        payload = json.dumps([_input_row(n, rows) for n, rows in enumerate(events)])
        return {r["webhook_id"] for r in await conn.fetch(STORE_BATCH, payload, StepStatus.PENDING.value)}

    async def _one_by_one(self, conn: asyncpg.Connection, batch: list[Pending]) -> None:
        for rows, future in batch:
            if future.done():
                continue
            try:
                future.set_result(await self._store_one(conn, rows))
            except Exception as exc:
                future.set_exception(exc)


def _input_row(n: int, rows: IntakeRows) -> dict[str, Any]:
    job = rows.job
    return {
        "n": n,
        "webhook_id": rows.webhook_id,
        "type": job["type"],
        "payload": rows.event["payload"],
        "received_at": rows.now.isoformat(),
        "public_id": rows.job_id,
        "service_id": job["service_id"],
        "panel": job["panel"],
        "domain": job["domain"],
        "account_username": job["account_username"],
        "account_password": job["account_password"],
        "callback_url": job["callback_url"],
        "status": job["status"],
        "steps": rows.steps,
    }
