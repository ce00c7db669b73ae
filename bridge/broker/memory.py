"""An in-process job queue for the embedded mode (one process, no broker).

It keeps the broker's semantics the job engine relies on: delayed delivery,
at most ``prefetch`` handlers at once per consumer, redelivery of a message whose
handler raised (after a pause that grows) and dead-lettering once ``delivery_limit``
deliveries have failed. Nothing survives the process; that is acceptable because
the database is the record of truth and the scheduler re-enqueues due jobs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.broker.base import PublishError, WakeUpHandler, redelivery_pause_s

log = logging.getLogger(__name__)


@dataclass
class _Message:
    job_id: str
    deliveries: int = 0


class InProcessQueue:
    """A :class:`~bridge.broker.base.JobQueue` living in the event loop.

    ``delivery_limit`` is how many times a message whose handler raised is
    redelivered; when it fails once more it is moved to :attr:`dead_letters`
    (so at most ``delivery_limit + 1`` deliveries, as with RabbitMQ's
    ``x-delivery-limit``). ``redelivery_delay_s`` is the pause before a failed
    message is offered again, doubled for each earlier failed delivery (as the
    RabbitMQ queue does): a brief outage does not use up a message's deliveries.
    """

    def __init__(self, delivery_limit: int = 5, redelivery_delay_s: float = 0.1) -> None:
        if delivery_limit < 0:
            raise ValueError("delivery_limit must not be negative")
        self.delivery_limit = delivery_limit
        self.redelivery_delay_s = redelivery_delay_s
        self.dead_letters: list[str] = []
        self._ready: asyncio.Queue[_Message] = asyncio.Queue()
        self._timers: set[asyncio.TimerHandle] = set()
        self._consumers: set[InProcessConsumer] = set()
        # Messages queued, being handled or waiting to be redelivered; join() waits for 0.
        self._unfinished = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._started = False

    async def start(self) -> None:
        """Mark the queue usable; there is nothing to connect to."""
        self._started = True

    async def close(self) -> None:
        """Stop every consumer (waiting for running handlers) and drop pending delays."""
        self._started = False
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for consumer in list(self._consumers):
            await consumer.stop()

    async def publish(self, job_id: str, delay_s: float = 0.0) -> None:
        """Queue ``job_id`` now, or after ``delay_s`` seconds."""
        if not self._started:
            raise PublishError(f"in-process queue is not started; job {job_id} not queued")
        message = _Message(job_id)
        if delay_s > 0:
            self._later(delay_s, message)
        else:
            self._enqueue(message)

    async def publish_many(self, job_ids: Sequence[str]) -> None:
        """Queue each of ``job_ids`` now (in-process, a message per job costs nothing)."""
        for job_id in job_ids:
            await self.publish(job_id)

    async def consume(self, handler: WakeUpHandler, prefetch: int) -> InProcessConsumer:
        """Start handing queued job ids to ``handler``, at most ``prefetch`` at a time.

        Messages published before the first consumer existed are waiting for it.
        """
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        consumer = InProcessConsumer(self, handler, prefetch)
        self._consumers.add(consumer)
        return consumer

    async def ping(self) -> bool:
        """True while the queue is started."""
        return self._started

    async def join(self) -> None:
        """Wait until nothing is queued, no handler runs and no redelivery is pending.

        Messages published with a delay are not waited for until their delay has
        passed and they are queued; a test that needs them should sleep past the
        delay first. With no consumer, a queued message makes this wait forever.
        """
        await self._idle.wait()

    # Internals shared with the consumer.

    def _later(self, delay_s: float, message: _Message, *, counted: bool = False) -> None:
        """Queue ``message`` after ``delay_s``; ``counted`` if join() already waits for it."""

        def fire() -> None:
            self._timers.discard(handle)
            self._enqueue(message, counted=counted)

        handle = asyncio.get_running_loop().call_later(delay_s, fire)
        self._timers.add(handle)

    def _enqueue(self, message: _Message, *, counted: bool = False) -> None:
        if not counted:
            self._begin()
        self._ready.put_nowait(message)

    def _begin(self) -> None:
        self._unfinished += 1
        self._idle.clear()

    def _done(self) -> None:
        self._unfinished -= 1
        if self._unfinished == 0:
            self._idle.set()

    def _failed(self, message: _Message) -> None:
        """Offer a failed message again after a pause, or dead-letter it."""
        if message.deliveries > self.delivery_limit:
            log.warning(
                "job %s dead-lettered after %d failed deliveries",
                message.job_id,
                message.deliveries,
            )
            self.dead_letters.append(message.job_id)
            self._done()
        elif self._started:
            # Still counted as unfinished: join() waits for the redelivery.
            self._later(redelivery_pause_s(self.redelivery_delay_s, message.deliveries - 1), message, counted=True)
        else:
            self._done()

    def _forget(self, consumer: InProcessConsumer) -> None:
        self._consumers.discard(consumer)


class InProcessConsumer:
    """One consumer of an :class:`InProcessQueue`; ``stop()`` ends it."""

    def __init__(self, queue: InProcessQueue, handler: WakeUpHandler, prefetch: int) -> None:
        self._queue = queue
        self._handler = handler
        self._slots = asyncio.Semaphore(prefetch)
        self._running: set[asyncio.Task[None]] = set()
        self._pump = asyncio.get_running_loop().create_task(self._take_messages())

    async def _take_messages(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                # asyncio.Queue.get() loses no item when cancelled while waiting.
                message = await self._queue._ready.get()
            except asyncio.CancelledError:
                self._slots.release()
                raise
            task = asyncio.get_running_loop().create_task(self._handle(message))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _handle(self, message: _Message) -> None:
        message.deliveries += 1
        try:
            await self._handler(message.job_id)
        except Exception:
            log.warning(
                "handler failed for job %s (delivery %d)",
                message.job_id,
                message.deliveries,
                exc_info=True,
            )
            self._queue._failed(message)
        except BaseException:
            # Cancelled (the loop is shutting down): nothing will redeliver it.
            self._queue._done()
            raise
        else:
            self._queue._done()
        finally:
            self._slots.release()

    async def stop(self) -> None:
        """Stop taking messages, then wait for the handlers already running."""
        self._pump.cancel()
        # wait() rather than await: the pump's CancelledError is not ours to raise.
        await asyncio.wait([self._pump])
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._queue._forget(self)
