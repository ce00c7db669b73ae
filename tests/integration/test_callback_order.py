"""One job's callbacks reach the receiver in the order they were written."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import CALLBACK_SECRET, FERNET_KEY
from orders import service_create
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.callbacks.sender import CallbackSender
from bridge.domain.events import OrderEvent
from bridge.metrics import Metrics
from bridge.store import admin_ops
from bridge.store import tables as t
from bridge.store.callback_rows import CallbackPolicy, insert_callback
from bridge.store.crypto import SecretBox
from bridge.store.intake import store_event
from bridge.store.leases import acquire
from bridge.store.types import utcnow


@dataclass
class Receiver:
    up: bool = True
    received: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        async def receive(request: web.Request) -> web.Response:
            if not self.up:
                return web.Response(status=503)
            self.received.append((await request.json())["type"])
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/cb", receive)
        return app


@contextlib.asynccontextmanager
async def job_with_callbacks(
    engine: AsyncEngine, receiver: Receiver, *types: str
) -> AsyncIterator[tuple[int, CallbackSender, CallbackPolicy, str]]:
    """A job with callbacks of ``types`` written in that order, and a sender for them."""
    async with TestServer(receiver.app()) as server:
        url, origin = str(server.make_url("/cb")), str(server.make_url("/")).rstrip("/")
        policy = CallbackPolicy([origin], secret_configured=True)
        event = OrderEvent.model_validate(service_create(callback_url=url))
        stored = await store_event(engine, SecretBox([FERNET_KEY]), "msg_order", event)
        job_pk = (await acquire(engine, stored.job_id, "w", 60)).job_pk
        assert job_pk is not None
        async with engine.begin() as conn:
            for event_type in types:
                await insert_callback(conn, job_pk, event_type, url, {"type": event_type, "data": {}}, policy)
        sender = CallbackSender(engine, Metrics(), secret=CALLBACK_SECRET, allowed_origins=[origin])
        try:
            yield job_pk, sender, policy, stored.job_id
        finally:
            await sender.stop()
            await sender.run()  # closes its HTTP session


async def next_attempts(engine: AsyncEngine) -> list[object]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(t.callbacks.c.next_attempt_at).order_by(t.callbacks.c.id))
        return list(rows.scalars())


async def test_a_later_callback_of_a_job_waits_until_the_earlier_one_is_delivered(engine: AsyncEngine) -> None:
    receiver = Receiver()
    async with job_with_callbacks(engine, receiver, "job.started", "job.succeeded") as (_, sender, _policy, _id):
        assert await sender.deliver_due() == 1  # the earlier alone: the later one waits its turn
        assert receiver.received == ["job.started"]
        assert await sender.deliver_due() == 1
        assert receiver.received == ["job.started", "job.succeeded"]


async def test_while_the_earlier_one_is_retried_the_later_one_waits_without_being_due(engine: AsyncEngine) -> None:
    receiver = Receiver(up=False)
    async with job_with_callbacks(engine, receiver, "job.started", "job.succeeded") as (_, sender, _policy, _id):
        assert await sender.deliver_due() == 1  # job.started: 503, retried later
        retry_at, waiting = await next_attempts(engine)
        assert retry_at is not None and waiting is None  # not due: not looked at on every round
        assert await sender.deliver_due() == 0
        receiver.up = True
        async with engine.begin() as conn:  # its retry comes due
            await conn.execute(
                update(t.callbacks).where(t.callbacks.c.type == "job.started").values(next_attempt_at=utcnow())
            )
        assert await sender.deliver_due() == 1
        assert await sender.deliver_due() == 1
        assert receiver.received == ["job.started", "job.succeeded"]


async def test_a_resend_sends_what_is_still_being_retried_first_then_the_copy(engine: AsyncEngine) -> None:
    receiver = Receiver(up=False)
    async with job_with_callbacks(engine, receiver, "job.started", "job.succeeded") as (_, sender, policy, job_id):
        assert await sender.deliver_due() == 1  # job.started failed: next try minutes away
        receiver.up = True
        await admin_ops.resend_last_callback(engine, job_id, policy=policy)
        while await sender.deliver_due():
            pass
        assert receiver.received == ["job.started", "job.succeeded", "job.succeeded"]


class ClientThatBreaks(CallbackSender):
    """A sender whose HTTP client fails with an error aiohttp does not normally raise."""

    def _get_session(self) -> Any:
        raise LookupError("unknown encoding: x-broken")


async def test_an_unexpected_sending_error_is_a_failed_attempt_and_does_not_block_the_job(
    engine: AsyncEngine,
) -> None:
    receiver = Receiver()
    async with job_with_callbacks(engine, receiver, "job.started", "job.succeeded") as (_, sender, policy, _id):
        broken = ClientThatBreaks(engine, Metrics(), secret=CALLBACK_SECRET, allowed_origins=policy.allowed_origins)
        assert await broken.deliver_due() == 1
        async with engine.connect() as conn:
            started = (await conn.execute(select(t.callbacks).where(t.callbacks.c.type == "job.started"))).one()
            errors = (await conn.execute(select(t.callback_attempts.c.error))).scalars().all()
        assert started.status == "pending" and started.attempts == 1 and started.next_attempt_at is not None
        assert errors == ["unexpected LookupError: unknown encoding: x-broken"]
        async with engine.begin() as conn:  # its retry comes due, with a working client
            await conn.execute(
                update(t.callbacks).where(t.callbacks.c.id == started.id).values(next_attempt_at=utcnow())
            )
        while await sender.deliver_due():
            pass
        assert receiver.received == ["job.started", "job.succeeded"]
