"""The scheduler: re-enqueues jobs that are due but that no message seems to be
carrying — a lost message, a delay longer than the broker keeps, or a worker that
died holding a lease. The broker only delays work; this loop guarantees it runs.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.broker.base import JobQueue, PublishError
from bridge.store import tables as t
from bridge.store.errors import DATABASE_UNAVAILABLE
from bridge.store.leases import no_earlier_unfinished_job
from bridge.store.types import utcnow
from bridge.waiting import wait_for_event

log = logging.getLogger("bridge.scheduler")


class Scheduler:
    def __init__(
        self,
        engine: AsyncEngine,
        queue: JobQueue,
        *,
        poll_s: float = 1.0,
        requeue_after_s: float = 300.0,
        batch_size: int = 500,
        volatile_queue: bool = False,
    ) -> None:
        """``requeue_after_s``: how long a due job may wait after its last wake-up before
        the scheduler assumes the message was lost. Expired leases are re-enqueued at once.
        ``volatile_queue``: the queue keeps nothing across a restart (the in-process queue),
        so a job last enqueued before this scheduler was made is carried by no message and
        is re-enqueued as soon as it is due."""
        self._engine = engine
        self._lost_before = utcnow() if volatile_queue else None
        self._queue = queue
        self._poll_s = poll_s
        self._requeue_after = timedelta(seconds=requeue_after_s)
        self._batch_size = batch_size
        self._stopping = asyncio.Event()

    async def tick(self) -> int:
        """Re-enqueue what is overdue; how many jobs were re-enqueued."""
        now = utcnow()
        cutoff = now - self._requeue_after
        enqueued = t.jobs.c.enqueued_at
        # Lost: due for a good while and nothing published for it in as long. A job that has
        # only just come due (a retry an hour off, published to a delay queue when it was
        # set) is being woken by that message right now.
        lost = and_(or_(enqueued.is_(None), enqueued < cutoff), t.jobs.c.next_run_at <= cutoff)
        if self._lost_before is not None:
            lost = or_(lost, enqueued < self._lost_before)
        async with self._engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(t.jobs.c.id, t.jobs.c.public_id)
                    .where(
                        t.jobs.c.next_run_at <= now,
                        or_(
                            # A worker held it and the lease ran out: it died or hung.
                            and_(t.jobs.c.lease_owner.is_not(None), t.jobs.c.lease_until < now),
                            # Free, due, and nothing published for it in a good while. One
                            # waiting behind an earlier job of its service is woken when that
                            # one finishes (and is this loop's again once it has).
                            and_(t.jobs.c.lease_owner.is_(None), lost, no_earlier_unfinished_job()),
                        ),
                    )
                    .order_by(t.jobs.c.next_run_at)
                    .limit(self._batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            await self._queue.publish_many([row.public_id for row in rows])
            await conn.execute(
                update(t.jobs)
                .where(t.jobs.c.id.in_([row.id for row in rows]))
                .values(
                    # Freeing an expired lease makes the job an ordinary due one: re-published
                    # again only after requeue_after, not on every tick. A worker that still
                    # thinks it holds the lease is fenced out before it sends anything.
                    enqueued_at=now,
                    lease_owner=None,
                    lease_until=None,
                )
            )
        log.info("re-enqueued %d overdue job(s)", len(rows))
        return len(rows)

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except PublishError as exc:
                log.warning("scheduler: broker unavailable: %s", exc)
            except DATABASE_UNAVAILABLE as exc:
                log.warning("scheduler: database unavailable: %s", exc.__class__.__name__)
            except Exception:  # the loop must outlive any one bad tick
                log.exception("scheduler: unexpected error; continuing")
            await wait_for_event(self._stopping, self._poll_s)

    async def stop(self) -> None:
        self._stopping.set()
