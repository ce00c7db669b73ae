"""The RabbitMQ job queue against a real broker, in a vhost of the session's own."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import aio_pika
import aio_pika.exceptions
import pytest
from pamqp.common import FieldTable
from rabbit_fixtures import (  # noqa: F401 (fixtures are found by name)
    MakeRabbitQueue,
    RabbitVhost,
    amqp_url_fixture,
    make_rabbit_queue_fixture,
    rabbit_vhost_fixture,
    rabbitmqctl,
)

from bridge.broker.base import JobQueue, PublishError
from bridge.broker.rabbitmq import RabbitConsumer, RabbitQueue, wake_up_ids
from bridge.worker.runner import JobRunner
from bridge.worker.service import WorkerService

pytestmark = [pytest.mark.amqp, pytest.mark.timeout(30)]


async def ready_count(queue: RabbitQueue, name: str) -> int:
    """Messages ready in a queue (unacknowledged ones are not counted)."""
    connection = await aio_pika.connect(queue.url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(name, passive=True)
        assert declared.declaration_result.message_count is not None
        return declared.declaration_result.message_count


async def eventually(predicate: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_it_is_a_job_queue() -> None:
    q: JobQueue = RabbitQueue("amqp://localhost/")
    assert q is not None


def test_delays_round_down_to_a_bucket() -> None:
    q = RabbitQueue("amqp://localhost/", prefix="p", delay_buckets_s=(0.3, 1.0))
    assert q.route(0) == "p.jobs"
    assert q.route(0.2) == "p.jobs"  # below the smallest bucket: early is fine
    assert q.route(0.3) == "p.delay.300ms"
    assert q.route(0.99) == "p.delay.300ms"
    assert q.route(7200) == "p.delay.1000ms"


async def test_a_published_message_is_consumed_and_acked(
    make_rabbit_queue: MakeRabbitQueue,
) -> None:
    q = await make_rabbit_queue()
    received: asyncio.Queue[str] = asyncio.Queue()
    await q.publish("job-1")
    consumer = await q.consume(received.put, prefetch=1)
    assert await asyncio.wait_for(received.get(), 5) == "job-1"
    await consumer.stop()
    assert await ready_count(q, q.names.work) == 0


async def test_the_message_carries_the_job_id_and_when_it_is_due(
    make_rabbit_queue: MakeRabbitQueue,
) -> None:
    q = await make_rabbit_queue()
    before = time.time()
    await q.publish("job-7", delay_s=0.1)
    connection = await aio_pika.connect(q.url)
    async with connection:
        channel = await connection.channel()
        work = await channel.get_queue(q.names.work)
        message = await work.get(no_ack=True, timeout=5)
        assert message is not None
    assert message.body == b"job-7"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.message_id
    not_before_ms = message.headers["x-not-before"]
    assert isinstance(not_before_ms, int)
    assert (before + 0.1) * 1000 - 1 <= not_before_ms <= (time.time() + 0.1) * 1000 + 1


async def test_a_failing_message_is_redelivered_then_dead_lettered(
    make_rabbit_queue: MakeRabbitQueue, caplog: pytest.LogCaptureFixture
) -> None:
    q = await make_rabbit_queue(delivery_limit=2)
    attempts: list[str] = []

    async def handler(job_id: str) -> None:
        attempts.append(job_id)
        raise RuntimeError("panel down")

    with caplog.at_level(logging.WARNING, logger="bridge.broker.rabbitmq"):
        consumer = await q.consume(handler, prefetch=1)
        await q.publish("doomed")
        await eventually(lambda: _has(q, q.names.dead, 1))
        await consumer.stop()
    # The first delivery plus delivery_limit redeliveries.
    assert attempts == ["doomed"] * 3
    assert await ready_count(q, q.names.work) == 0
    assert any("doomed" in r.getMessage() for r in caplog.records)


async def test_a_handler_failing_for_a_moment_is_not_dead_lettered_at_once(
    make_rabbit_queue: MakeRabbitQueue,
) -> None:
    # The database restarting: for a moment every handler raises. Redeliveries pause,
    # growing, so the message outlives the blip instead of using up its deliveries at once.
    q = await make_rabbit_queue(delivery_limit=2, redelivery_delay_s=0.3)
    loop = asyncio.get_running_loop()
    back_at = loop.time() + 0.6
    handled = asyncio.Event()
    attempts = 0

    async def handler(job_id: str) -> None:
        nonlocal attempts
        attempts += 1
        if loop.time() < back_at:
            raise ConnectionRefusedError("database restarting")
        handled.set()

    consumer = await q.consume(handler, prefetch=1)
    await q.publish("blip")
    await asyncio.wait_for(handled.wait(), 10)
    await consumer.stop()
    assert attempts <= 3
    assert await ready_count(q, q.names.dead) == 0


async def _has(q: RabbitQueue, name: str, n: int) -> bool:
    return await ready_count(q, name) == n


async def test_a_delayed_message_waits_in_its_delay_queue(
    make_rabbit_queue: MakeRabbitQueue,
) -> None:
    q = await make_rabbit_queue()
    loop = asyncio.get_running_loop()
    arrivals: dict[str, float] = {}
    both = asyncio.Event()

    async def handler(job_id: str) -> None:
        arrivals[job_id] = loop.time()
        if len(arrivals) == 2:
            both.set()

    consumer = await q.consume(handler, prefetch=2)
    sent = loop.time()
    await q.publish("later", delay_s=1.0)
    await q.publish("soon", delay_s=0.1)  # below the smallest bucket: straight to work
    assert await ready_count(q, q.names.delays[1.0]) == 1
    await asyncio.wait_for(both.wait(), 5)
    await consumer.stop()
    assert arrivals["soon"] - sent < 0.3
    assert arrivals["later"] - sent >= 0.95


async def test_no_more_than_prefetch_handlers_run_at_once(
    make_rabbit_queue: MakeRabbitQueue,
) -> None:
    q = await make_rabbit_queue()
    running = peak = 0
    done = asyncio.Event()
    handled = 0

    async def handler(job_id: str) -> None:
        nonlocal running, peak, handled
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.1)
        running -= 1
        handled += 1
        if handled == 10:
            done.set()

    await asyncio.gather(*(q.publish(f"job-{i}") for i in range(10)))
    consumer = await q.consume(handler, prefetch=3)
    await asyncio.wait_for(done.wait(), 10)
    await consumer.stop()
    assert peak == 3


async def test_stop_waits_for_running_handlers_and_acks_their_messages(
    make_rabbit_queue: MakeRabbitQueue,
) -> None:
    q = await make_rabbit_queue()
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[str] = []

    async def handler(job_id: str) -> None:
        started.set()
        await release.wait()
        finished.append(job_id)

    consumer = await q.consume(handler, prefetch=1)
    await q.publish("slow")
    await asyncio.wait_for(started.wait(), 5)

    stopping = asyncio.create_task(consumer.stop())
    await asyncio.sleep(0.2)
    assert not stopping.done()
    release.set()
    await asyncio.wait_for(stopping, 5)
    assert finished == ["slow"]

    # Acked, not returned: a new consumer gets nothing.
    again: list[str] = []

    async def record(job_id: str) -> None:
        again.append(job_id)

    other = await q.consume(record, prefetch=1)
    await asyncio.sleep(0.3)
    await other.stop()
    assert again == []
    assert await ready_count(q, q.names.work) == 0


async def first_delivery(q: RabbitQueue) -> str | None:
    """The job id a consumer subscribing now receives first (None within 5 s)."""
    received: asyncio.Queue[str] = asyncio.Queue()
    consumer = await q.consume(received.put, prefetch=1)
    try:
        return await asyncio.wait_for(received.get(), 5)
    except TimeoutError:
        return None
    finally:
        await consumer.stop()


class RecordingRunner:
    """Stands in for the job runner: records the job ids it is handed."""

    def __init__(self) -> None:
        self.stopping = False
        self.handled: list[str] = []

    def stop(self) -> None:
        self.stopping = True

    async def handle(self, job_id: str) -> None:
        self.handled.append(job_id)


async def test_a_worker_stopped_while_subscribing_leaves_no_consumer_behind(
    make_rabbit_queue: MakeRabbitQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = await make_rabbit_queue()
    subscribing = asyncio.Event()
    consume = q.consume

    async def signalled_consume(*args: Any, **kwargs: Any) -> RabbitConsumer:
        subscribing.set()
        return await consume(*args, **kwargs)

    monkeypatch.setattr(q, "consume", signalled_consume)
    runner = RecordingRunner()
    worker = WorkerService(q, cast(JobRunner, runner), prefetch=1, grace_s=5)
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(subscribing.wait(), 5)
    await worker.stop()  # while the subscription is still being made
    await asyncio.wait_for(running, 5)

    # Published after the worker stopped: it waits for the next consumer.
    await q.publish("after-stop")
    assert await first_delivery(q) == "after-stop"
    assert runner.handled == []


class StuckRunner:
    """Stands in for the job runner: its step lasts until cancelled (or released)."""

    def __init__(self) -> None:
        self.stopping = False
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.handling: list[str] = []
        self.cancelled: list[str] = []

    def stop(self) -> None:
        self.stopping = True

    async def handle(self, job_id: str) -> None:
        self.handling.append(job_id)
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(job_id)
            raise


async def test_a_worker_stopped_cuts_off_a_step_outlasting_its_grace_and_leaves_the_message(
    make_rabbit_queue: MakeRabbitQueue,
) -> None:
    q = await make_rabbit_queue()
    runner = StuckRunner()
    worker = WorkerService(q, cast(JobRunner, runner), prefetch=1, grace_s=0.3)
    running = asyncio.create_task(worker.run())
    await q.publish("stuck")
    await asyncio.wait_for(runner.started.wait(), 5)
    try:
        await asyncio.wait_for(worker.stop(), 2)
    finally:
        runner.release.set()  # a step that was not cut off ends now: a failed check does not hang
    await asyncio.wait_for(running, 5)
    assert runner.cancelled == ["stuck"]
    # Not acked: the next consumer gets it.
    assert await first_delivery(q) == "stuck"


async def test_a_worker_stopped_cuts_off_the_steps_of_a_shared_message_and_leaves_it(
    make_rabbit_queue: MakeRabbitQueue,
) -> None:
    q = await make_rabbit_queue(ids_per_message=16)
    runner = StuckRunner()
    worker = WorkerService(q, cast(JobRunner, runner), prefetch=2, grace_s=0.3)
    running = asyncio.create_task(worker.run())
    await q.publish_many(["stuck-1", "stuck-2"])
    try:
        await eventually(lambda: _started(runner, 2))
        await asyncio.wait_for(worker.stop(), 2)
    finally:
        runner.release.set()  # a failed check does not leave steps running past the test
        await asyncio.wait_for(worker.stop(), 5)
    await asyncio.wait_for(running, 5)
    assert sorted(runner.cancelled) == ["stuck-1", "stuck-2"]
    assert await first_delivery(q) == "stuck-1"


async def _started(runner: StuckRunner, count: int) -> bool:
    return len(runner.handling) == count


async def test_publish_after_close_raises_promptly(make_rabbit_queue: MakeRabbitQueue) -> None:
    q = await make_rabbit_queue(confirm_timeout_s=5)
    await q.close()
    started = time.monotonic()
    with pytest.raises(PublishError):
        await q.publish("job-1")
    assert time.monotonic() - started < 1


async def test_publish_before_start_raises() -> None:
    with pytest.raises(PublishError):
        await RabbitQueue("amqp://localhost/").publish("job-1")


async def test_ping_is_true_while_connected(make_rabbit_queue: MakeRabbitQueue) -> None:
    q = await make_rabbit_queue()
    assert await q.ping() is True
    await q.close()
    assert await q.ping() is False
    assert await RabbitQueue("amqp://localhost/").ping() is False


async def test_ping_is_false_when_the_work_queue_is_gone(
    make_rabbit_queue: MakeRabbitQueue,
) -> None:
    q = await make_rabbit_queue()
    connection = await aio_pika.connect(q.url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(q.names.work)
    assert await q.ping() is False


async def handle_all(q: RabbitQueue, ids: list[str], prefetch: int, pause_s: float = 0.0) -> tuple[Counter[str], int]:
    """Consume until every one of ``ids`` was handled, and a while longer for a duplicate to show
    up; how often each was handled, and the most handlers that ran at once."""
    seen: Counter[str] = Counter()
    running = peak = 0
    all_seen = asyncio.Event()

    async def handler(job_id: str) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(pause_s)
        running -= 1
        seen[job_id] += 1
        if len(seen) == len(ids):
            all_seen.set()

    consumer = await q.consume(handler, prefetch=prefetch)
    await asyncio.wait_for(all_seen.wait(), 10)
    await asyncio.sleep(0.2)
    await consumer.stop()
    return seen, peak


async def test_concurrent_publishes_are_all_confirmed_and_consumed_once(
    make_rabbit_queue: MakeRabbitQueue,
) -> None:
    q = await make_rabbit_queue()
    ids = [f"job-{i}" for i in range(200)]
    await asyncio.gather(*(q.publish(job_id) for job_id in ids))
    assert await ready_count(q, q.names.work) == 200

    seen, _ = await handle_all(q, ids, prefetch=50)
    assert set(seen) == set(ids)
    assert set(seen.values()) == {1}
    assert await ready_count(q, q.names.work) == 0


async def test_wake_ups_due_now_share_messages_and_each_job_is_handled_once(
    make_rabbit_queue: MakeRabbitQueue,
) -> None:
    q = await make_rabbit_queue(ids_per_message=16)
    ids = [f"job-{i}" for i in range(40)]
    await q.publish_many(ids)
    assert await ready_count(q, q.names.work) == 3  # 16 + 16 + 8

    seen, peak = await handle_all(q, ids, prefetch=5, pause_s=0.02)
    assert seen == Counter(ids)
    assert peak == 5  # the prefetch counts jobs, not messages
    assert await ready_count(q, q.names.work) == 0


async def test_a_message_is_returned_whole_when_one_of_its_jobs_fails(
    make_rabbit_queue: MakeRabbitQueue,
) -> None:
    q = await make_rabbit_queue(ids_per_message=16)
    handled: list[str] = []
    failed_once = False
    again = asyncio.Event()

    async def handler(job_id: str) -> None:
        nonlocal failed_once
        handled.append(job_id)
        if job_id == "bad" and not failed_once:
            failed_once = True
            raise ConnectionRefusedError("database restarting")
        if handled.count("bad") == 2:
            again.set()

    await q.publish_many(["good", "bad"])
    consumer = await q.consume(handler, prefetch=2)
    await asyncio.wait_for(again.wait(), 10)
    await asyncio.sleep(0.2)
    await consumer.stop()
    # Both again: the job that was handled finds nothing to do the second time.
    assert Counter(handled) == Counter({"good": 2, "bad": 2})
    assert await ready_count(q, q.names.work) == 0
    assert await ready_count(q, q.names.dead) == 0


async def test_a_consumer_stopped_mid_message_returns_it_with_the_jobs_it_did_not_start(
    make_rabbit_queue: MakeRabbitQueue,
) -> None:
    q = await make_rabbit_queue(ids_per_message=16)
    started = asyncio.Event()
    release = asyncio.Event()
    handled: list[str] = []

    async def handler(job_id: str) -> None:
        handled.append(job_id)
        started.set()
        await release.wait()

    await q.publish_many(["first", "second", "third"])
    consumer = await q.consume(handler, prefetch=1)
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.create_task(consumer.stop())
    await asyncio.sleep(0.1)
    release.set()
    await asyncio.wait_for(stopping, 5)
    assert handled == ["first"]

    # Not acked: the next consumer gets every job of it.
    redelivered: list[str] = []
    whole = asyncio.Event()

    async def record(job_id: str) -> None:
        redelivered.append(job_id)
        if len(redelivered) == 3:
            whole.set()

    other = await q.consume(record, prefetch=3)
    await asyncio.wait_for(whole.wait(), 5)
    await other.stop()
    assert sorted(redelivered) == ["first", "second", "third"]


@dataclass
class HoldingSlowJobs:
    """A handler that holds the jobs named slow… until ``release``, and records every job it
    handled; ``all_handled`` once it has handled ``expected`` of them."""

    expected: int
    release: asyncio.Event = field(default_factory=asyncio.Event)
    all_handled: asyncio.Event = field(default_factory=asyncio.Event)
    handled: list[str] = field(default_factory=list)

    async def __call__(self, job_id: str) -> None:
        if job_id.startswith("slow"):
            await self.release.wait()
        self.handled.append(job_id)
        if len(self.handled) == self.expected:
            self.all_handled.set()


async def test_jobs_of_a_message_that_wait_too_long_for_a_place_are_handed_back_and_the_message_acked(
    make_rabbit_queue: MakeRabbitQueue, caplog: pytest.LogCaptureFixture
) -> None:
    # Acked only once all its jobs are handled, a message whose jobs queue behind others for a
    # place would stay unacknowledged for as long as all of them take (past RabbitMQ's consumer
    # timeout, on a slow panel): those still waiting go back to the queue, for any worker.
    q = await make_rabbit_queue(ids_per_message=16, hand_back_after_s=0.3)
    handler = HoldingSlowJobs(expected=3)
    await q.publish_many(["slow", "second", "third"])
    with caplog.at_level(logging.INFO, logger="bridge.broker.rabbitmq"):
        consumer = await q.consume(handler, prefetch=1)
        try:
            await asyncio.sleep(0.6)  # the two behind "slow" waited past hand_back_after_s
            assert await ready_count(q, q.names.work) == 1  # ... and are in a message of their own
        finally:
            handler.release.set()  # a failed check does not leave the handler running past the test
        await asyncio.wait_for(handler.all_handled.wait(), 5)
        await asyncio.sleep(0.2)
        await consumer.stop()
    assert sorted(handler.handled) == ["second", "slow", "third"]  # each once
    assert await ready_count(q, q.names.work) == 0
    assert "2 job(s) waited 0 s for a place in this worker: published again" in caplog.text


def test_a_message_carries_its_job_ids_one_per_line() -> None:
    assert wake_up_ids(b"job-1") == ["job-1"]
    assert wake_up_ids(b"job-1\njob-2\n\n job-3 \n") == ["job-1", "job-2", "job-3"]
    assert wake_up_ids(b"") == []


async def test_the_topology_is_idempotent_and_has_the_intended_arguments(
    make_rabbit_queue: MakeRabbitQueue,
) -> None:
    p = f"topo{uuid.uuid4().hex[:8]}"
    q = await make_rabbit_queue(prefix=p, delivery_limit=4)
    await make_rabbit_queue(prefix=p, delivery_limit=4)  # declares it all again
    await q.purge()

    expected: dict[str, FieldTable] = {
        f"{p}.jobs": {
            "x-queue-type": "quorum",
            "x-delivery-limit": 4,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{p}.jobs.dead",
        },
        f"{p}.jobs.dead": {"x-queue-type": "quorum"},
        f"{p}.delay.300ms": {
            "x-message-ttl": 300,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{p}.jobs",
        },
        f"{p}.delay.1000ms": {
            "x-message-ttl": 1000,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{p}.jobs",
        },
    }
    assert sorted(q.names.all) == sorted(expected)
    connection = await aio_pika.connect(q.url)
    async with connection:
        # RabbitMQ refuses a redeclaration whose arguments differ, so these
        # passing means the queues have these arguments (those it compares)...
        for name, arguments in expected.items():
            channel = await connection.channel()
            await channel.declare_queue(name, durable=True, arguments=arguments)
            await channel.close()
        # ...and this failing shows that the check is real.
        channel = await connection.channel()
        wrong: FieldTable = {**expected[f"{p}.jobs"], "x-delivery-limit": 5}
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
            await channel.declare_queue(f"{p}.jobs", durable=True, arguments=wrong)


async def test_publish_during_an_outage_fails_fast_then_recovers(
    make_rabbit_queue: MakeRabbitQueue, rabbit_vhost: RabbitVhost
) -> None:
    if not rabbit_vhost.owned:
        pytest.skip("needs a vhost of its own to drop connections in")
    # Reconnect quickly so the test stays short.
    q = await make_rabbit_queue(url=rabbit_vhost.url + "?reconnect_interval=0.5", confirm_timeout_s=1)
    received: asyncio.Queue[str] = asyncio.Queue()
    consumer = await q.consume(received.put, prefetch=1)

    assert await asyncio.to_thread(rabbitmqctl, "close_all_connections", "--vhost", rabbit_vhost.name, "test outage")
    # The connection may come back before this publish; either way it must not hang.
    started = time.monotonic()
    try:
        await q.publish("during")
    except PublishError:
        pass
    assert time.monotonic() - started < 1.5

    async def published_after_recovery() -> bool:
        try:
            await q.publish("after")
        except PublishError:
            return False
        return True

    await eventually(published_after_recovery, within=10)
    # The consumer was restored with the connection.
    got = {await asyncio.wait_for(received.get(), 5)}
    if got == {"during"}:
        got.add(await asyncio.wait_for(received.get(), 5))
    assert "after" in got
    assert await q.ping() is True
    await consumer.stop()


async def test_an_unroutable_message_raises(make_rabbit_queue: MakeRabbitQueue) -> None:
    q = await make_rabbit_queue()
    connection = await aio_pika.connect(q.url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(q.names.delays[0.3])
    with pytest.raises(PublishError, match="job-1"):
        await q.publish("job-1", delay_s=0.5)
    await q.publish("job-2")  # the channel is still usable


async def test_start_refuses_a_queue_declared_with_other_arguments(
    make_rabbit_queue: MakeRabbitQueue,
) -> None:
    q = await make_rabbit_queue(delivery_limit=2)
    other = RabbitQueue(q.url, prefix=q.names.work.removesuffix(".jobs"), delivery_limit=3)
    with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
        await other.start()
    assert await other.ping() is False


async def test_a_message_that_waits_too_long_for_a_place_is_handed_back_and_acked(
    make_rabbit_queue: MakeRabbitQueue, caplog: pytest.LogCaptureFixture
) -> None:
    # The broker counts messages, the places count jobs: one message's jobs may take every place
    # while the broker delivers the next message, which would wait unacknowledged for all of them.
    q = await make_rabbit_queue(ids_per_message=16, hand_back_after_s=0.3)
    handler = HoldingSlowJobs(expected=3)
    await q.publish_many(["slow-1", "slow-2"])  # one message, both places
    with caplog.at_level(logging.INFO, logger="bridge.broker.rabbitmq"):
        consumer = await q.consume(handler, prefetch=2)
        try:
            await asyncio.sleep(0.2)
            await q.publish("late")  # delivered (one message unacked of two), but no place is free
            await asyncio.sleep(0.6)
            assert "1 job(s) waited 0 s for a place in this worker: published again" in caplog.text
            assert handler.handled == []
        finally:
            handler.release.set()
        await asyncio.wait_for(handler.all_handled.wait(), 5)
        await asyncio.sleep(0.2)
        await consumer.stop()
    assert sorted(handler.handled) == ["late", "slow-1", "slow-2"]  # each once
    assert await ready_count(q, q.names.work) == 0
