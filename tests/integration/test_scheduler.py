"""The scheduler: jobs that are due but that no message carries are published again."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer
from conftest import FERNET_KEY, WEBHOOK_SECRET
from orders import service_create, signed

from bridge.bootstrap import Role, background_services, build_app, open_runtime
from bridge.settings import Settings
from bridge.worker.scheduler import Scheduler


def embedded(sqlite_url: str) -> Settings:
    return Settings(
        database_url=sqlite_url,
        webhook_secrets=[WEBHOOK_SECRET],
        secret_key=[FERNET_KEY],
        panels=[{"name": "default", "url": "http://127.0.0.1:1"}],  # type: ignore[list-item]
    )


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
