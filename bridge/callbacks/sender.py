"""Delivers status callbacks: signed the Standard Webhooks way, only to allowed
origins, redirects not followed, retried on a fixed schedule over more than a day,
every attempt recorded."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import timedelta
from typing import Any

import aiohttp
from sqlalchemy import Row, exists, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.metrics import Metrics
from bridge.store import tables as t
from bridge.store.callback_rows import CallbackPolicy, refusal_reason
from bridge.store.driver import driver_connection
from bridge.store.errors import DATABASE_UNAVAILABLE
from bridge.store.types import utcnow
from bridge.waiting import wait_for_event
from bridge.webhooks.signature import sign

log = logging.getLogger("bridge.callbacks")

_SETTLED_COLUMNS = ("status", "attempts", "last_error", "delivered_at", "next_attempt_at")
_ATTEMPT_COLUMNS = ("attempted_at", "http_status", "error", "duration_ms")
# A callback that reaches a final state makes the next one of its job, waiting behind it, due.
_SETTLE = """
    WITH settled AS (
        UPDATE callbacks SET status = $2, attempts = $3, last_error = $4, delivered_at = $5, next_attempt_at = $6
        WHERE id = $1
    ), woken AS (
        UPDATE callbacks SET next_attempt_at = $7
        WHERE $2 <> 'pending' AND status = 'pending' AND next_attempt_at IS NULL
          AND id = (SELECT min(id) FROM callbacks WHERE job_id = $11 AND id > $1 AND status = 'pending')
    )
    INSERT INTO callback_attempts (callback_id, attempted_at, http_status, error, duration_ms)
    VALUES ($1, $7, $8, $9, $10)
"""

# Seconds before retry n (Svix-like): about 27 hours in all, before scaling.
RETRY_SCHEDULE_S: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
CLAIM_S = 120.0
_earlier = t.callbacks.alias("earlier")


def _behind_another() -> Any:
    """An earlier callback of the same job is still pending."""
    return exists().where(
        _earlier.c.job_id == t.callbacks.c.job_id,
        _earlier.c.id < t.callbacks.c.id,
        _earlier.c.status == "pending",
    )


class CallbackSender:
    def __init__(
        self,
        engine: AsyncEngine,
        metrics: Metrics,
        *,
        secret: str,
        allowed_origins: list[str],
        delay_scale: float = 1.0,
        timeout_s: float = 10.0,
        poll_s: float = 0.5,
        concurrency: int = 8,
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self._secret = secret
        # The same rule that decided, when the row was written, whether it may be sent at all;
        # checked again here because the settings may have changed since.
        self._policy = CallbackPolicy(allowed_origins, bool(secret))
        self._scale = delay_scale
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._poll_s = poll_s
        self._concurrency = concurrency
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._session: aiohttp.ClientSession | None = None

    def wake(self) -> None:
        self._wakeup.set()

    async def deliver_due(self) -> int:
        """Claim and attempt every due callback once; how many were attempted.

        One job's callbacks go out in the order they were written (a receiver must not see
        job.started after job.succeeded): a due callback with an earlier one of its job still
        pending is set waiting (no next attempt) until that one is settled, so it is not
        looked at again on every round, however long the earlier one is retried.
        """
        now = utcnow()
        due = (t.callbacks.c.status == "pending", t.callbacks.c.next_attempt_at <= now)
        async with self._engine.begin() as conn:
            await conn.execute(update(t.callbacks).where(*due, _behind_another()).values(next_attempt_at=None))
            rows = (
                await conn.execute(
                    select(t.callbacks)
                    .where(*due, ~_behind_another())
                    .order_by(t.callbacks.c.id)
                    .limit(self._concurrency * 4)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            # Claimed: no other sender takes them until the claim runs out.
            await conn.execute(
                update(t.callbacks)
                .where(t.callbacks.c.id.in_([r.id for r in rows]))
                .values(next_attempt_at=now + timedelta(seconds=CLAIM_S))
            )
        semaphore = asyncio.Semaphore(self._concurrency)

        async def one(row: Row[Any]) -> None:
            async with semaphore:
                await self._attempt(row)

        await asyncio.gather(*(one(r) for r in rows))
        return len(rows)

    async def _attempt(self, r: Row[Any]) -> None:
        started = time.monotonic()
        http_status: int | None = None
        error: str | None = None
        refused = refusal_reason(r.url, self._policy)
        if refused is not None:
            await self._settle(r, "refused", None, refused, 0.0)
            return
        body = json.dumps(r.body, separators=(",", ":")).encode()
        headers = sign(self._secret, r.public_id, int(time.time()), body)
        headers["Content-Type"] = "application/json"
        headers["User-Agent"] = "provisioning-bridge"
        try:
            session = self._get_session()
            async with session.post(r.url, data=body, headers=headers, allow_redirects=False) as response:
                http_status = response.status
                await response.read()
                if not 200 <= response.status < 300:
                    error = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{exc.__class__.__name__}: {exc}"[:500]
        except Exception as exc:
            # Anything else is recorded as a failed attempt too: escaping here would leave the
            # callback claimed with no attempt recorded, and the job's later callbacks behind it.
            log.exception("callback %s: unexpected error while sending", r.public_id)
            error = f"unexpected {exc.__class__.__name__}: {exc}"[:500]
        duration_ms = (time.monotonic() - started) * 1000
        if error is None:
            await self._settle(r, "delivered", http_status, None, duration_ms)
            self._metrics.callbacks.labels("delivered").inc()
        else:
            self._metrics.callbacks.labels("failed_attempt").inc()
            await self._settle(r, None, http_status, error, duration_ms)

    async def _settle(
        self, r: Row[Any], status: str | None, http_status: int | None, error: str | None, ms: float
    ) -> None:
        now = utcnow()
        attempts = r.attempts + 1
        values: dict[str, Any] = {
            "status": r.status,
            "attempts": attempts,
            "last_error": error,
            "delivered_at": r.delivered_at,
            "next_attempt_at": None,
        }
        if status == "delivered":
            values.update(status="delivered", delivered_at=now)
        elif status == "refused":
            values.update(status="refused")
        elif attempts > len(RETRY_SCHEDULE_S):
            values.update(status="failed")
            log.warning("callback %s gave up after %d attempts: %s", r.public_id, attempts, error)
        else:
            values.update(next_attempt_at=now + timedelta(seconds=RETRY_SCHEDULE_S[attempts - 1] * self._scale))
        attempt = {
            "attempted_at": now,
            "http_status": http_status,
            "error": error,
            "duration_ms": ms,
        }
        if self._engine.dialect.name == "postgresql":
            # Two callbacks per order: on PostgreSQL the outcome and its record are one statement.
            async with driver_connection(self._engine) as driver:
                await driver.execute(
                    _SETTLE,
                    r.id,
                    *(values[name] for name in _SETTLED_COLUMNS),
                    *(attempt[name] for name in _ATTEMPT_COLUMNS),
                    r.job_id,
                )
            return
        async with self._engine.begin() as conn:
            await conn.execute(update(t.callbacks).where(t.callbacks.c.id == r.id).values(**values))
            await conn.execute(insert(t.callback_attempts).values(callback_id=r.id, **attempt))
            if values["status"] != "pending":
                following = (
                    select(func.min(_earlier.c.id))
                    .where(_earlier.c.job_id == r.job_id, _earlier.c.id > r.id, _earlier.c.status == "pending")
                    .scalar_subquery()
                )
                await conn.execute(
                    update(t.callbacks)
                    .where(t.callbacks.c.id == following, t.callbacks.c.next_attempt_at.is_(None))
                    .values(next_attempt_at=now)
                )

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def run(self) -> None:
        while not self._stopping:
            try:
                while await self.deliver_due():
                    pass
            except DATABASE_UNAVAILABLE as exc:
                log.warning("callbacks: database unavailable (%s); will retry", exc.__class__.__name__)
            except Exception:  # the sender must outlive any one bad batch
                log.exception("callbacks: unexpected error; will retry")
            await wait_for_event(self._wakeup, self._poll_s)
            self._wakeup.clear()
        if self._session is not None:
            await self._session.close()

    async def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
