"""The worker service: consumes wake-ups with a bounded prefetch and hands each to the runner.

On shutdown it stops taking messages, lets running steps finish within the grace
period, and then lets go. A step cut off by the grace period stays ``in_flight``
under an expiring lease: the next worker reconciles it, never repeats it blindly.
Cut-off handlers are cancelled before the process closes its panel connections:
otherwise the dropped connection would be recorded as an "unknown" outcome and
the job released at once, letting another worker read the panel back while it
may still be carrying out the call.
"""

from __future__ import annotations

import asyncio
import logging

from bridge.broker.base import Consumer, JobQueue
from bridge.waiting import wait_for_event
from bridge.worker.runner import JobRunner

log = logging.getLogger("bridge.worker")


class WorkerService:
    def __init__(self, queue: JobQueue, runner: JobRunner, *, prefetch: int, grace_s: float) -> None:
        self._queue = queue
        self._runner = runner
        self._prefetch = prefetch
        self._grace_s = grace_s
        self._consumer: Consumer | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self._handling: set[asyncio.Task[object]] = set()

    async def run(self) -> None:
        while self._consumer is None and not self._stopping:
            try:
                consumer = await self._queue.consume(self._handle, self._prefetch)
            except Exception as exc:  # the broker may be down at start: keep trying
                log.warning("cannot consume yet (%s); retrying", exc)
                await wait_for_event(self._stopped, 2.0)
                continue
            if self._stopping:
                # stop() came while subscribing and found no consumer: nobody else would end
                # this one, which would take (and hold) messages until the connection closes.
                await self._let_go(consumer)
                break
            self._consumer = consumer
        await self._stopped.wait()

    async def _handle(self, job_id: str) -> None:
        # Each delivery runs in a task of its own; remember it so stop() can cut it off.
        task = asyncio.current_task()
        assert task is not None
        self._handling.add(task)
        try:
            await self._runner.handle(job_id)
        finally:
            self._handling.discard(task)

    async def stop(self) -> None:
        self._stopping = True
        self._runner.stop()
        try:
            if self._consumer is not None:
                await self._let_go(self._consumer)
        finally:
            self._stopped.set()  # run() returns, whatever happened

    async def _let_go(self, consumer: Consumer) -> None:
        """Stop ``consumer``, its running steps given the grace period."""
        stopping = asyncio.ensure_future(consumer.stop())
        done, _ = await asyncio.wait({stopping}, timeout=self._grace_s)
        if not done:
            log.warning("grace period over: steps still running are left to their lease and reconciled later")
            # Cancelled, nothing is recorded and the message is not acked: the step stays in
            # flight under its lease, which outlasts the panel call.
            for task in list(self._handling):
                task.cancel()
        try:
            await stopping
        except Exception as exc:
            # Logged, not raised: the rest of the shutdown goes on, and closing the connection ends it.
            log.warning("the consumer could not be stopped cleanly: %s: %s", exc.__class__.__name__, exc)
