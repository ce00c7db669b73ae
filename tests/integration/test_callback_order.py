"""One job's callbacks reach the receiver in the order they were written."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import CALLBACK_SECRET, FERNET_KEY
from orders import service_create
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.callbacks.sender import CallbackSender
from bridge.domain.events import OrderEvent
from bridge.metrics import Metrics
from bridge.store.callback_rows import CallbackPolicy, insert_callback
from bridge.store.crypto import SecretBox
from bridge.store.database import create_engine
from bridge.store.intake import store_event
from bridge.store.leases import acquire


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    yield engine
    await engine.dispose()


async def test_a_later_callback_of_a_job_waits_until_the_earlier_one_is_delivered(engine: AsyncEngine) -> None:
    received: list[str] = []

    async def receive(request: web.Request) -> web.Response:
        received.append((await request.json())["type"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/cb", receive)
    async with TestServer(app) as server:
        url, origin = str(server.make_url("/cb")), str(server.make_url("/")).rstrip("/")
        policy = CallbackPolicy([origin], secret_configured=True)
        stored = await store_event(
            engine, SecretBox([FERNET_KEY]), "msg_order", OrderEvent.model_validate(service_create())
        )
        job_pk = (await acquire(engine, stored.job_id, "w", 60)).job_pk
        assert job_pk is not None
        async with engine.begin() as conn:
            for event_type in ("job.started", "job.succeeded"):
                await insert_callback(conn, job_pk, event_type, url, {"type": event_type, "data": {}}, policy)
        sender = CallbackSender(engine, Metrics(), secret=CALLBACK_SECRET, allowed_origins=[origin])
        try:
            assert await sender.deliver_due() == 1  # the earlier alone: the later one waits its turn
            assert received == ["job.started"]
            assert await sender.deliver_due() == 1
            assert received == ["job.started", "job.succeeded"]
        finally:
            await sender.stop()
            await sender.run()  # closes its HTTP session
