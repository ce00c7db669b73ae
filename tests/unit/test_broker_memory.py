"""The in-process job queue keeps the broker semantics the job engine relies on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from bridge.broker.base import JobQueue, PublishError
from bridge.broker.memory import InProcessQueue

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
async def queue() -> AsyncIterator[InProcessQueue]:
    q = InProcessQueue(delivery_limit=3, redelivery_delay_s=0.01)
    await q.start()
    yield q
    await q.close()


def test_it_is_a_job_queue() -> None:
    q: JobQueue = InProcessQueue()
    assert q is not None


async def test_published_messages_reach_the_handler(queue: InProcessQueue) -> None:
    seen: list[str] = []

    async def handler(job_id: str) -> None:
        seen.append(job_id)

    consumer = await queue.consume(handler, prefetch=2)
    for job_id in ("a", "b", "c"):
        await queue.publish(job_id)
    await asyncio.wait_for(queue.join(), 2)
    await consumer.stop()
    assert sorted(seen) == ["a", "b", "c"]
    assert queue.dead_letters == []


async def test_wake_ups_published_together_each_reach_the_handler_once(queue: InProcessQueue) -> None:
    seen: list[str] = []

    async def handler(job_id: str) -> None:
        seen.append(job_id)

    consumer = await queue.consume(handler, prefetch=2)
    await queue.publish_many(["a", "b", "c"])
    await asyncio.wait_for(queue.join(), 2)
    await consumer.stop()
    assert sorted(seen) == ["a", "b", "c"]


async def test_messages_published_before_a_consumer_wait_for_it(queue: InProcessQueue) -> None:
    await queue.publish("early")
    seen: list[str] = []

    async def handler(job_id: str) -> None:
        seen.append(job_id)

    consumer = await queue.consume(handler, prefetch=1)
    await asyncio.wait_for(queue.join(), 2)
    await consumer.stop()
    assert seen == ["early"]


async def test_a_delayed_message_arrives_after_its_delay(queue: InProcessQueue) -> None:
    loop = asyncio.get_running_loop()
    arrived: asyncio.Future[float] = loop.create_future()

    async def handler(job_id: str) -> None:
        arrived.set_result(loop.time())

    consumer = await queue.consume(handler, prefetch=1)
    sent = loop.time()
    await queue.publish("later", delay_s=0.2)
    # join() does not wait for a delay that has not passed yet.
    await asyncio.wait_for(queue.join(), 0.1)
    assert not arrived.done()
    at = await asyncio.wait_for(arrived, 2)
    await consumer.stop()
    assert at - sent >= 0.19


async def test_a_failing_message_is_redelivered_then_dead_lettered(
    queue: InProcessQueue, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[str] = []

    async def handler(job_id: str) -> None:
        attempts.append(job_id)
        raise RuntimeError("panel down")

    consumer = await queue.consume(handler, prefetch=1)
    with caplog.at_level(logging.WARNING, logger="bridge.broker.memory"):
        await queue.publish("doomed")
        # join() waits for redeliveries, so the message is dead by now.
        await asyncio.wait_for(queue.join(), 2)
    await consumer.stop()
    # delivery_limit=3 redeliveries after the first delivery.
    assert attempts == ["doomed"] * 4
    assert queue.dead_letters == ["doomed"]
    assert any("dead-lettered" in r.getMessage() for r in caplog.records)


async def test_a_message_that_fails_once_succeeds_on_redelivery(queue: InProcessQueue) -> None:
    attempts: list[str] = []

    async def handler(job_id: str) -> None:
        attempts.append(job_id)
        if len(attempts) == 1:
            raise RuntimeError("transient")

    consumer = await queue.consume(handler, prefetch=1)
    await queue.publish("flaky")
    await asyncio.wait_for(queue.join(), 2)
    await consumer.stop()
    assert attempts == ["flaky", "flaky"]
    assert queue.dead_letters == []


async def test_a_handler_failing_for_a_moment_is_not_dead_lettered_at_once() -> None:
    # Redeliveries pause longer each time (0.2 s, then 0.4 s), so the message outlives a
    # half-second outage instead of using up its deliveries within it.
    queue = InProcessQueue(delivery_limit=2, redelivery_delay_s=0.2)
    await queue.start()
    loop = asyncio.get_running_loop()
    back_at = loop.time() + 0.5
    attempts: list[float] = []

    async def handler(job_id: str) -> None:
        attempts.append(loop.time())
        if loop.time() < back_at:
            raise ConnectionRefusedError("database restarting")

    consumer = await queue.consume(handler, prefetch=1)
    await queue.publish("blip")
    await asyncio.wait_for(queue.join(), 5)
    await consumer.stop()
    await queue.close()
    assert queue.dead_letters == []
    assert len(attempts) == 3


async def test_no_more_than_prefetch_handlers_run_at_once(queue: InProcessQueue) -> None:
    running = peak = done = 0

    async def handler(job_id: str) -> None:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        done += 1

    consumer = await queue.consume(handler, prefetch=3)
    for i in range(12):
        await queue.publish(f"job-{i}")
    await asyncio.wait_for(queue.join(), 2)
    await consumer.stop()
    assert done == 12
    assert peak == 3


async def test_stop_waits_for_running_handlers_and_takes_no_more(queue: InProcessQueue) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[str] = []

    async def handler(job_id: str) -> None:
        started.set()
        await release.wait()
        finished.append(job_id)

    consumer = await queue.consume(handler, prefetch=1)
    await queue.publish("first")
    await queue.publish("second")
    await asyncio.wait_for(started.wait(), 1)

    stopping = asyncio.create_task(consumer.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # still waiting for "first"
    release.set()
    await asyncio.wait_for(stopping, 1)
    assert finished == ["first"]

    # "second" was not taken; a new consumer gets it.
    async def other(job_id: str) -> None:
        finished.append(job_id)

    later = await queue.consume(other, prefetch=1)
    await asyncio.wait_for(queue.join(), 1)
    await later.stop()
    assert finished == ["first", "second"]


async def test_ping_follows_start_and_close() -> None:
    q = InProcessQueue()
    assert await q.ping() is False
    await q.start()
    assert await q.ping() is True
    await q.close()
    assert await q.ping() is False


async def test_publish_on_a_closed_queue_raises() -> None:
    q = InProcessQueue()
    with pytest.raises(PublishError):
        await q.publish("nowhere")
