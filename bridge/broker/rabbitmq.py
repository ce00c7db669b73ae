"""The job queue on RabbitMQ, through aio-pika.

Topology (declared on start, idempotently; ``{p}`` is the prefix):

- ``{p}.jobs``: the work queue, a durable quorum queue. A handler that raises
  gets its message back (``nack(requeue=True)``) after a pause that doubles with
  each failed delivery; the queue counts deliveries and, past ``x-delivery-limit``,
  dead-letters the message to ``{p}.jobs.dead``.
- ``{p}.jobs.dead``: where messages go after too many failed deliveries.
- ``{p}.delay.{ms}ms``: one per delay bucket, no consumers. A message waits
  there for the queue's TTL, then expires back into ``{p}.jobs``.

Every queue is reached through the default exchange by its name. Messages carry
only job ids (the body: one, or for wake-ups due now up to ``ids_per_message``,
one per line) and, for people looking at a queue, when the jobs are due: the
``x-not-before`` header, unix time in integer milliseconds (AMQP tables would
carry a float as 32 bits, far too coarse for a timestamp). Several ids in one
message spare the broker and both ends most of a message's cost (a persistent
write, a confirm, a delivery, an ack) when the relay publishes a burst.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiormq.exceptions import ChannelClosed, ChannelInvalidStateError
from pamqp.commands import Basic
from pamqp.common import FieldTable

from bridge.broker.base import PublishError, WakeUpHandler, redelivery_pause_s
from bridge.waiting import wait_for_event

log = logging.getLogger(__name__)

PING_TIMEOUT_S = 2.0
PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)


@dataclass(frozen=True)
class QueueNames:
    """The names of the queues one :class:`RabbitQueue` uses."""

    work: str
    dead: str
    delays: dict[float, str]  # bucket in seconds -> delay queue

    @property
    def all(self) -> list[str]:
        return [self.work, self.dead, *self.delays.values()]


class RabbitQueue:
    """A :class:`~bridge.broker.base.JobQueue` on RabbitMQ.

    ``delivery_limit``: how many times a message whose handler raised is
    redelivered; when it fails once more it is dead-lettered (RabbitMQ's
    ``x-delivery-limit``: at most ``delivery_limit + 1`` deliveries).
    ``delay_buckets_s``: the delays the broker can hold a message for; a delay
    is rounded down to a bucket (or sent at once if below the smallest), and the
    consumer re-publishes the remainder after checking the job in the database:
    early is fine, late is not. ``confirm_timeout_s``: how long ``publish`` waits
    for the broker's confirm, including while a lost connection is restored.
    ``redelivery_delay_s``: the pause before a message whose handler raised goes
    back to the queue, doubled for each earlier failed delivery (at most
    30 s; see :func:`bridge.broker.base.redelivery_pause_s`). ``ids_per_message``:
    how many wake-ups due now :meth:`publish_many` puts in one message; small, so
    that a consumer holding a message holds few jobs the other consumers could run.
    ``hand_back_after_s``: how long a job of such a message may wait for a place in
    the consumer before it is published again, for any consumer (so that no message
    stays unacknowledged much longer than its jobs run, well within RabbitMQ's
    ``consumer_timeout``).
    """

    def __init__(
        self,
        url: str,
        prefix: str = "bridge",
        delivery_limit: int = 5,
        delay_buckets_s: tuple[float, ...] = (1, 5, 30, 120, 600, 3600),
        confirm_timeout_s: float = 10,
        redelivery_delay_s: float = 0.5,
        ids_per_message: int = 16,
        hand_back_after_s: float = 60.0,
    ) -> None:
        if delivery_limit < 0:
            raise ValueError("delivery_limit must not be negative")
        if any(b <= 0 for b in delay_buckets_s):
            raise ValueError("delay buckets must be positive")
        if ids_per_message < 1:
            raise ValueError("ids_per_message must be at least 1")
        self.url = url
        self.ids_per_message = ids_per_message
        self.hand_back_after_s = hand_back_after_s
        self.delivery_limit = delivery_limit
        self.delay_buckets_s = tuple(sorted(set(delay_buckets_s)))
        self.confirm_timeout_s = confirm_timeout_s
        self.redelivery_delay_s = redelivery_delay_s
        self.names = QueueNames(
            work=f"{prefix}.jobs",
            dead=f"{prefix}.jobs.dead",
            delays={b: f"{prefix}.delay.{round(b * 1000)}ms" for b in self.delay_buckets_s},
        )
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._consumers: set[RabbitConsumer] = set()
        # Between start() and close(): publish and consume connect if start() could not.
        self._wanted = False
        self._connecting: asyncio.Task[None] | None = None

    # Topology.

    def queue_arguments(self) -> dict[str, FieldTable]:
        """The arguments each queue is declared with, by queue name."""
        args: dict[str, FieldTable] = {
            self.names.work: {
                "x-queue-type": "quorum",
                "x-delivery-limit": self.delivery_limit,
                # Quorum queues dead-letter at-most-once by default: a dead
                # letter can be lost if the broker fails mid-way. Acceptable,
                # since the scheduler re-enqueues from the database anyway.
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.names.dead,
            },
            self.names.dead: {"x-queue-type": "quorum"},
        }
        for bucket, name in self.names.delays.items():
            args[name] = {
                "x-message-ttl": round(bucket * 1000),
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.names.work,
            }
        return args

    async def _declare(self, channel: AbstractChannel) -> dict[str, AbstractQueue]:
        return {
            name: await channel.declare_queue(name, durable=True, arguments=arguments)
            for name, arguments in self.queue_arguments().items()
        }

    # Lifecycle.

    async def start(self) -> None:
        """Connect (robustly: channels and consumers come back after an outage) and declare.

        If the broker cannot be reached, this raises, and ``publish`` and ``consume`` try
        to connect again each time they are called until it can (the robust connection
        only restores a connection that was once made).
        """
        self._wanted = True
        await self._connect()

    async def _connect(self) -> None:
        """Connect unless connected; concurrent callers share one attempt."""
        if self._connection is not None:
            return
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._open())
        await asyncio.shield(self._connecting)

    async def _open(self) -> None:
        connection = await aio_pika.connect_robust(self.url)
        try:
            # Publisher confirms, and unroutable messages raise instead of vanishing.
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            # Fails with PRECONDITION_FAILED if a queue exists with other arguments
            # (e.g. another delivery_limit): change those by policy or recreate the queue.
            await self._declare(channel)
        except BaseException:
            await connection.close()
            raise
        self._connection, self._publish_channel = connection, channel

    async def close(self) -> None:
        """Stop the consumers (waiting for their running handlers), then close the connection."""
        self._wanted = False
        connecting, self._connecting = self._connecting, None
        if connecting is not None and not connecting.done():
            connecting.cancel()
            await asyncio.wait([connecting])
        for consumer in list(self._consumers):
            await consumer.stop()
        connection, self._connection = self._connection, None
        self._publish_channel = None
        if connection is not None:
            await connection.close()  # closes its channels too

    # Publishing.

    def route(self, delay_s: float) -> str:
        """The queue a message with this delay goes to: the largest bucket not above it."""
        fitting = [b for b in self.delay_buckets_s if b <= delay_s]
        return self.names.delays[fitting[-1]] if fitting else self.names.work

    async def publish(self, job_id: str, delay_s: float = 0.0) -> None:
        """Return once the broker confirmed the message; raise PublishError otherwise."""
        await self._send(job_id, delay_s, f"job {job_id}")

    async def publish_many(self, job_ids: Sequence[str]) -> None:
        """Wake ``job_ids`` now, ``ids_per_message`` to a message; return once all are confirmed."""
        size = self.ids_per_message
        chunks = [job_ids[i : i + size] for i in range(0, len(job_ids), size)]
        await asyncio.gather(*(self._send("\n".join(chunk), 0.0, f"jobs {', '.join(chunk)}") for chunk in chunks))

    async def _send(self, body: str, delay_s: float, what: str) -> None:
        if self._publish_channel is None and self._wanted:
            # start() could not reach the broker: try again, within the confirm's time.
            try:
                async with asyncio.timeout(self.confirm_timeout_s):
                    await self._connect()
            except Exception as exc:  # TimeoutError included
                raise PublishError(f"cannot connect to RabbitMQ ({exc!r}); {what} not published") from exc
        channel = self._publish_channel
        if channel is None or channel.is_closed:
            raise PublishError(f"not connected to RabbitMQ; {what} not published")
        routing_key = self.route(delay_s)
        properties = Basic.Properties(
            delivery_mode=PERSISTENT,
            message_id=uuid.uuid4().hex,
            headers={"x-not-before": round((time.time() + max(delay_s, 0.0)) * 1000)},
        )
        try:
            # The outer timeout also covers waiting for a lost connection to come back.
            async with asyncio.timeout(self.confirm_timeout_s):
                # Straight to aiormq's channel (what aio-pika's Exchange.publish does, without
                # building a Message first), and without waiting for the frame to reach the
                # socket: only the broker's confirm matters, and it is still awaited. On the
                # relay's path this halves the client's CPU per message.
                underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
                await underlay.basic_publish(
                    body.encode(),
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=True,
                    wait=False,
                )
        except TimeoutError as exc:
            raise PublishError(f"RabbitMQ did not confirm {what} within {self.confirm_timeout_s} s") from exc
        except Exception as exc:
            raise PublishError(f"RabbitMQ refused {what} to {routing_key}: {exc!r}") from exc

    # Consuming.

    async def consume(self, handler: WakeUpHandler, prefetch: int) -> RabbitConsumer:
        """Deliver job ids from the work queue to ``handler`` on a channel of its own."""
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        if not self._wanted:
            raise RuntimeError("RabbitQueue.consume() before start()")
        await self._connect()  # raises while the broker cannot be reached
        assert self._connection is not None
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.get_queue(self.names.work)
        consumer = RabbitConsumer(
            channel,
            queue,
            handler,
            prefetch,
            on_stopped=self._consumers.discard,
            redelivery_delay_s=self.redelivery_delay_s,
            hand_back=self.publish_many,
            hand_back_after_s=self.hand_back_after_s,
        )
        await consumer.begin()
        self._consumers.add(consumer)
        return consumer

    # Checks and test helpers.

    async def ping(self) -> bool:
        """True if the connection is open and the work queue answers within ~2 s."""
        connection = self._connection
        if connection is None or connection.is_closed:
            return False
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                # A channel of its own: a failed passive declare closes its channel.
                channel = await connection.channel(publisher_confirms=False)
                try:
                    await channel.declare_queue(self.names.work, passive=True)
                finally:
                    await channel.close()
        except Exception:
            return False
        return True

    async def purge(self) -> None:
        """Empty the work, dead and delay queues (for tests)."""
        if self._connection is None:
            raise RuntimeError("RabbitQueue.purge() before start()")
        async with self._connection.channel() as channel:
            for queue in (await self._declare(channel)).values():
                await queue.purge()


# What became of one job of a message: run, not started as the consumer stopped, or not started
# for want of a place in time (see RabbitConsumer._run).
_Run = Literal["ran", "stopping", "waited"]


def _ended(run: asyncio.Task[_Run], outcome: _Run) -> bool:
    return run.done() and not run.cancelled() and run.exception() is None and run.result() == outcome


def wake_up_ids(body: bytes) -> list[str]:
    """The job ids a message carries: one per line, blank lines ignored."""
    return [line.strip() for line in body.decode("utf-8", errors="replace").split("\n") if line.strip()]


class RabbitConsumer:
    """Runs a handler for each job id delivered; acks a message once the handlers of all its
    ids returned, nacks it with requeue if one of them raised.

    At most ``prefetch`` handlers run at once, each in a task of its own that a lost
    connection does not cancel (see :meth:`_on_message`).
    """

    def __init__(
        self,
        channel: AbstractChannel,
        queue: AbstractQueue,
        handler: WakeUpHandler,
        prefetch: int,
        on_stopped: Callable[[RabbitConsumer], None] = lambda consumer: None,
        redelivery_delay_s: float = 0.0,
        hand_back: Callable[[Sequence[str]], Awaitable[None]] | None = None,
        hand_back_after_s: float = 60.0,
    ) -> None:
        self._channel = channel
        self._hand_back = hand_back
        self._hand_back_after_s = hand_back_after_s
        self._redelivery_delay_s = redelivery_delay_s
        self._queue = queue
        self._handler = handler
        self._on_stopped = on_stopped
        self._tag: str | None = None
        self._stopping = False
        self._stopped = asyncio.Event()  # cuts redelivery pauses short
        # Counted in handlers, not messages (a message may carry several ids); and the broker's
        # prefetch is per channel: after a reconnection the new channel would deliver beside the
        # handlers still running from the old one.
        self._slots = asyncio.Semaphore(prefetch)
        self._running: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def begin(self) -> None:
        self._tag = await self._queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Waiting here is safe to cut off: the message is not handled yet, and comes again.
        refused = await self._take_slot()
        if refused == "stopping":
            # Arrived while cancelling: left unacked, so closing the channel returns it.
            return
        # The handler runs in a task of ours, not in aiormq's delivery task: a lost connection
        # cancels every task of its channels, and a job's step commits to the database, not the
        # broker. Only the ack is lost then; the broker redelivers the message.
        # Every place busy for a while (the broker counts messages, the places count jobs, and a
        # message may carry several): published again for any worker, not held unacknowledged.
        work = self._handle(message) if refused is None else self._hand_back_message(message)
        task = asyncio.get_running_loop().create_task(work)
        self._running.add(task)
        self._idle.clear()
        task.add_done_callback(self._handled)

    def _handled(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not self._running:
            self._idle.set()

    async def _run(self, job_id: str, *, has_slot: bool, placed: Callable[[], None] = lambda: None) -> _Run:
        """Run the handler for one job in a slot of its own, unless none could be taken (see
        :meth:`_take_slot`); ``placed`` is called once that is decided, before the handler runs."""
        refused = None if has_slot else await self._take_slot()
        placed()
        if refused is not None:
            return refused
        try:
            await self._handler(job_id)
        finally:
            self._slots.release()
        return "ran"

    async def _take_slot(self) -> _Run | None:
        """Take a slot; or say why none was taken: the consumer began to stop, or none came free
        within ``hand_back_after_s``."""
        try:
            async with asyncio.timeout(self._hand_back_after_s if self._hand_back is not None else None):
                await self._slots.acquire()
        except TimeoutError:
            return "stopping" if self._stopping else "waited"
        if self._stopping:
            self._slots.release()
            return "stopping"
        return None

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        job_ids = wake_up_ids(message.body)
        failed: list[tuple[str, BaseException]] = []
        if len(job_ids) <= 1:
            # One job (nearly every message but the relay's bursts): run in the message's task.
            try:
                if job_ids:
                    await self._run(job_ids[0], has_slot=True)
                else:
                    self._slots.release()
            except Exception as exc:
                failed.append((job_ids[0], exc))
        else:
            # The first job runs in the slot taken for the message; each other one waits for one.
            all_placed, unplaced = asyncio.Event(), len(job_ids)

            def placed() -> None:
                nonlocal unplaced
                unplaced -= 1
                if unplaced == 0:
                    all_placed.set()

            loop = asyncio.get_running_loop()
            runs = [
                loop.create_task(self._run(job_id, has_slot=n == 0, placed=placed)) for n, job_id in enumerate(job_ids)
            ]
            await all_placed.wait()
            # Those that found no place are done by now: another worker may take them at once.
            waited = [job_id for job_id, run in zip(job_ids, runs, strict=True) if _ended(run, "waited")]
            left = bool(waited) and self._stopping  # as if not started
            if waited and not left:
                failed = await self._hand_back_jobs(waited)
            outcomes = await asyncio.gather(*runs, return_exceptions=True)
            if left or any(o == "stopping" or isinstance(o, asyncio.CancelledError) for o in outcomes):
                # Cut off by the grace period, or not started as the consumer stopped: left
                # unacked, so closing the channel returns it (the jobs handled find nothing to do).
                return
            failed += [(job_id, o) for job_id, o in zip(job_ids, outcomes, strict=True) if isinstance(o, BaseException)]
        await self._settle(message, ", ".join(job_ids), failed)

    async def _hand_back_message(self, message: AbstractIncomingMessage) -> None:
        job_ids = wake_up_ids(message.body)
        failed = await self._hand_back_jobs(job_ids) if job_ids else []
        await self._settle(message, ", ".join(job_ids), failed)

    async def _hand_back_jobs(self, job_ids: list[str]) -> list[tuple[str, BaseException]]:
        """Publish again the jobs of a message that found no place in time: acked, the message
        then does not wait for them. If the broker does not take them, the whole message goes back."""
        assert self._hand_back is not None
        try:
            await self._hand_back(job_ids)
        except Exception as exc:
            return [(job_id, exc) for job_id in job_ids]
        log.info(
            "%d job(s) waited %.0f s for a place in this worker: published again for any worker",
            len(job_ids),
            self._hand_back_after_s,
        )
        return []

    async def _settle(
        self, message: AbstractIncomingMessage, jobs: str, failed: list[tuple[str, BaseException]]
    ) -> None:
        if failed:
            for job_id, exc in failed:
                # A handler that raised, or a job that could not be published again (see _hand_back_jobs).
                log.warning("job %s not handled; returning its message to the queue", job_id, exc_info=exc)
            # A quorum queue counts the earlier failed deliveries in x-delivery-count.
            failed_before = message.headers.get("x-delivery-count", 0)
            failed_before = failed_before if isinstance(failed_before, int) else 0
            await wait_for_event(self._stopped, redelivery_pause_s(self._redelivery_delay_s, failed_before))
            settle = message.nack(requeue=True)
        else:
            settle = message.ack()
        try:
            await settle
        except (ChannelInvalidStateError, ChannelClosed, ConnectionError):
            # The channel went with its connection: the broker redelivers the message, and the
            # redelivery finds the job done, or still leased.
            log.info("channel gone; the message for job %s will be redelivered", jobs)
        except Exception:
            log.warning("could not settle the message for job %s", jobs, exc_info=True)

    async def stop(self) -> None:
        """Cancel the subscription, wait for the handlers in flight, then close the channel.

        The channel stays open until those handlers have acked, so their messages
        are not redelivered (unless the connection was lost while they ran).
        """
        if self._stopping:
            await self._idle.wait()
            return
        tag, self._tag = self._tag, None
        if tag is not None and not self._channel.is_closed:
            try:
                await self._queue.cancel(tag)
            except Exception:
                log.warning("could not cancel consumer %s", tag, exc_info=True)
        self._stopping = True
        self._stopped.set()
        await self._idle.wait()
        # Even when lost with the connection (a broker outage): closed by us, it is not reopened
        # with its subscription when the connection comes back, to hold messages until close.
        await self._channel.close()
        self._on_stopped(self)
