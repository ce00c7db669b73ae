"""The broker down at intake: orders are still accepted (the outbox keeps them) and
published once the broker is back. Readiness reports the outage."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

from aiohttp.test_utils import TestClient, TestServer
from conftest import FERNET_KEY, WEBHOOK_SECRET
from orders import service_create, signed
from sqlalchemy import func, select
from tcp_proxy import TcpProxy

from bridge.bootstrap import build_app, open_runtime
from bridge.settings import Settings
from bridge.store import tables as t


async def unsent(runtime) -> int:  # type: ignore[no-untyped-def]
    async with runtime.engine.connect() as conn:
        query = select(func.count()).select_from(t.outbox).where(t.outbox.c.sent_at.is_(None))
        return int((await conn.execute(query)).scalar_one())


async def test_broker_down_at_intake_still_accepts_and_publishes_when_back(pg_url: str, amqp_url: str) -> None:
    parts = urlsplit(amqp_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await proxy.start()
    proxied = urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"))
    settings = Settings(
        database_url=pg_url,
        amqp_url=proxied + "?reconnect_interval=0.2",
        amqp_prefix="outage",
        webhook_secrets=[WEBHOOK_SECRET],
        secret_key=[FERNET_KEY],
        panels=[{"name": "default", "url": "http://127.0.0.1:1"}],  # type: ignore[list-item]
    )
    async with open_runtime(settings) as runtime, TestClient(TestServer(build_app(runtime))) as client:
        runtime.queue.confirm_timeout_s = 1.0  # type: ignore[attr-defined]
        await runtime.queue.purge()  # type: ignore[attr-defined]
        assert (await client.get("/readyz")).status == 200
        await proxy.cut()

        body, headers = signed(WEBHOOK_SECRET, service_create())
        response = await client.post("/webhooks/orders", data=body, headers=headers)
        assert response.status == 202
        job_id = (await response.json())["job_id"]
        await runtime.relay.drain_quietly()
        assert await unsent(runtime) == 1
        ready = await client.get("/readyz")
        assert ready.status == 503 and (await ready.json())["checks"] == {"database": True, "broker": False}

        await proxy.start()  # the broker is back
        for _ in range(100):
            await runtime.relay.drain_quietly()
            if await unsent(runtime) == 0:
                break
            await asyncio.sleep(0.1)
        assert await unsent(runtime) == 0

        delivered: list[str] = []

        async def handler(job: str) -> None:
            delivered.append(job)

        consumer = await runtime.queue.consume(handler, prefetch=5)
        for _ in range(50):
            if delivered:
                break
            await asyncio.sleep(0.1)
        await consumer.stop()
        assert delivered == [job_id]
    await proxy.cut()


async def test_broker_down_at_start_is_connected_to_once_it_is_back(pg_url: str, amqp_url: str) -> None:
    parts = urlsplit(amqp_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await proxy.start()
    await proxy.cut()  # down before the process starts (the port stays the proxy's)
    proxied = urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"))
    settings = Settings(
        database_url=pg_url,
        amqp_url=proxied + "?reconnect_interval=0.2",
        amqp_prefix="outage-start",
        webhook_secrets=[WEBHOOK_SECRET],
        secret_key=[FERNET_KEY],
        panels=[{"name": "default", "url": "http://127.0.0.1:1"}],  # type: ignore[list-item]
    )
    async with open_runtime(settings) as runtime, TestClient(TestServer(build_app(runtime))) as client:
        runtime.queue.confirm_timeout_s = 1.0  # type: ignore[attr-defined]
        body, headers = signed(WEBHOOK_SECRET, service_create())
        response = await client.post("/webhooks/orders", data=body, headers=headers)
        assert response.status == 202
        job_id = (await response.json())["job_id"]
        await runtime.relay.drain_quietly()
        assert await unsent(runtime) == 1
        assert (await client.get("/readyz")).status == 503

        await proxy.start()  # the broker is back: the relay publishes, a consumer can subscribe
        for _ in range(100):
            await runtime.relay.drain_quietly()
            if await unsent(runtime) == 0:
                break
            await asyncio.sleep(0.1)
        assert await unsent(runtime) == 0
        assert (await client.get("/readyz")).status == 200

        delivered: list[str] = []

        async def handler(job: str) -> None:
            delivered.append(job)

        consumer = await runtime.queue.consume(handler, prefetch=5)
        for _ in range(50):
            if job_id in delivered:
                break
            await asyncio.sleep(0.1)
        await consumer.stop()
        assert job_id in delivered
        await runtime.queue.purge()  # type: ignore[attr-defined]
    await proxy.cut()
