"""The scheduler: jobs that are due but that no message carries are published again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import FERNET_KEY, WEBHOOK_SECRET
from orders import service_create, signed
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.bootstrap import Role, background_services, build_app, open_runtime
from bridge.broker.memory import InProcessQueue
from bridge.domain.events import OrderEvent
from bridge.heap_trim import HeapTrimmer
from bridge.settings import Settings
from bridge.store import tables as t
from bridge.store.crypto import SecretBox
from bridge.store.intake import store_event
from bridge.store.types import utcnow
from bridge.worker.scheduler import Scheduler


def embedded(sqlite_url: str) -> Settings:
    return Settings(
        database_url=sqlite_url,
        webhook_secrets=[WEBHOOK_SECRET],
        secret_key=[FERNET_KEY],
        panels=[{"name": "default", "url": "http://127.0.0.1:1"}],  # type: ignore[list-item]
    )


@pytest.fixture
async def scheduler(engine: AsyncEngine) -> AsyncIterator[Scheduler]:
    """A scheduler publishing to an in-process queue nobody reads."""
    queue = InProcessQueue()
    await queue.start()
    yield Scheduler(engine, queue, requeue_after_s=60)
    await queue.close()


async def stored(engine: AsyncEngine, webhook_id: str, **order: Any) -> str:
    event = OrderEvent.model_validate(service_create(**order))
    return (await store_event(engine, SecretBox([FERNET_KEY]), webhook_id, event)).job_id


async def test_after_an_embedded_restart_the_jobs_the_queue_held_are_published_at_once(sqlite_url: str) -> None:
    # The in-process queue keeps nothing across a restart: what it held when the process
    # stopped must not wait out requeue_after (minutes) before it runs.
    settings = embedded(sqlite_url)
    async with open_runtime(settings) as runtime, TestClient(TestServer(build_app(runtime))) as client:
        body, headers = signed(WEBHOOK_SECRET, service_create())
        response = await client.post("/webhooks/orders", data=body, headers=headers)
        assert response.status == 202
        job_id = (await response.json())["job_id"]
        assert await runtime.relay.drain() == 1  # published into the queue; no worker took it

    async with open_runtime(settings) as runtime:
        scheduler = background_services(runtime, {Role.BACKGROUND})[0]
        assert isinstance(scheduler, Scheduler)
        delivered: list[str] = []

        async def handler(job: str) -> None:
            delivered.append(job)

        consumer = await runtime.queue.consume(handler, prefetch=1)
        assert await scheduler.tick() == 1
        await runtime.queue.join()  # type: ignore[attr-defined]
        assert delivered == [job_id]
        # Once: after that the job waits out requeue_after like any other.
        assert await scheduler.tick() == 0
        await consumer.stop()


async def test_a_job_waiting_behind_an_earlier_one_of_its_service_is_left_to_that_one(
    engine: AsyncEngine, scheduler: Scheduler
) -> None:
    # It is woken when the earlier job finishes; publishing it every requeue_after meanwhile
    # would only cost a refused lease each time (thousands, for a busy service).
    first = await stored(engine, "msg_1", service_id="4711")
    await stored(engine, "msg_2", service_id="4711")
    long_ago = utcnow() - timedelta(hours=1)
    async with engine.begin() as conn:
        await conn.execute(update(t.jobs).values(enqueued_at=long_ago, next_run_at=long_ago))
        await conn.execute(
            update(t.jobs)
            .where(t.jobs.c.public_id == first)
            .values(status="running", lease_owner="w:1", lease_until=utcnow() + timedelta(minutes=5))
        )
    assert await scheduler.tick() == 0  # the first is held; the second waits its turn
    async with engine.begin() as conn:
        await conn.execute(
            update(t.jobs)
            .where(t.jobs.c.public_id == first)
            .values(status="succeeded", next_run_at=None, lease_owner=None, lease_until=None)
        )
    assert await scheduler.tick() == 1  # its wake-up lost: now it is the scheduler's


async def test_a_job_that_has_only_just_come_due_is_left_to_its_delayed_wake_up(
    engine: AsyncEngine, scheduler: Scheduler
) -> None:
    # Its retry was published an hour ago to a delay queue, which delivers it now: publishing
    # another only makes a second delivery. Due for longer than requeue_after, it is lost.
    job_id = await stored(engine, "msg_retry")
    for due_since, expected in ((timedelta(seconds=10), 0), (timedelta(minutes=2), 1)):
        async with engine.begin() as conn:
            await conn.execute(
                update(t.jobs)
                .where(t.jobs.c.public_id == job_id)
                .values(enqueued_at=utcnow() - timedelta(hours=1), next_run_at=utcnow() - due_since)
            )
        assert await scheduler.tick() == expected, due_since


@pytest.mark.parametrize("roles", [{Role.HTTP}, {Role.WORKER}, {Role.BACKGROUND}, set(Role)])
async def test_every_process_gives_the_heaps_freed_pages_back(sqlite_url: str, roles: set[Role]) -> None:
    async with open_runtime(embedded(sqlite_url)) as runtime:
        services = background_services(runtime, roles)
    assert sum(isinstance(service, HeapTrimmer) for service in services) == 1
