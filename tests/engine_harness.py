"""An end-to-end harness: the bridge (webhook, relay, scheduler, workers, callbacks)
against the panel simulator and a callback receiver that verifies signatures.

Both deployments run through it: SQLite + the in-process queue, and PostgreSQL +
RabbitMQ (a vhost of the test session's own and a queue prefix of the test's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import CALLBACK_SECRET, FERNET_KEY, WEBHOOK_SECRET
from orders import signed
from sqlalchemy import select

from bridge.bootstrap import Role, Runtime, background_services, build_app, open_runtime
from bridge.panel.simulator import PanelSimulator
from bridge.settings import Settings
from bridge.store import tables as t
from bridge.store.job_view import job_document
from bridge.webhooks.signature import InvalidSignature, SignatureVerifier

ACCOUNT = ("john", "John-Panel-Pass-1")


@dataclass
class CallbackReceiver:
    """A billing platform's callback endpoint: verifies every signature, records what came."""

    secret: str
    received: list[dict[str, Any]] = field(default_factory=list)
    delivery_ids: list[str] = field(default_factory=list)  # every delivery, answered or not
    rejected: int = 0
    fail_next: int = 0  # answer 503 to this many deliveries first
    up: bool = True

    def app(self) -> web.Application:
        verifier = SignatureVerifier([self.secret])

        async def receive(request: web.Request) -> web.Response:
            body = await request.read()
            self.delivery_ids.append(request.headers.get("webhook-id", ""))
            if not self.up or self.fail_next > 0:
                self.fail_next = max(0, self.fail_next - 1)
                return web.Response(status=503)
            try:
                verifier.verify(body, request.headers)
            except InvalidSignature:
                self.rejected += 1
                return web.Response(status=401)
            self.received.append({"id": request.headers["webhook-id"], **json.loads(body)})
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/bridge-callback", receive)
        return app

    def types_for(self, job_id: str) -> list[str]:
        return [c["type"] for c in self.received if c["data"]["job_id"] == job_id]


@dataclass
class Bridge:
    runtime: Runtime
    client: TestClient
    sim: PanelSimulator
    receiver: CallbackReceiver
    callback_url: str

    async def send(self, event: dict[str, Any], *, webhook_id: str | None = None) -> tuple[int, dict[str, Any]]:
        body, headers = signed(WEBHOOK_SECRET, event, webhook_id=webhook_id)
        response = await self.client.post("/webhooks/orders", data=body, headers=headers)
        return response.status, await response.json()

    async def job(self, job_id: str, *, detail: bool = True) -> dict[str, Any]:
        async with self.runtime.engine.connect() as conn:
            pk = (await conn.execute(select(t.jobs.c.id).where(t.jobs.c.public_id == job_id))).scalar_one()
            return await job_document(conn, pk, detail=detail)

    async def wait_for(
        self, job_id: str, *statuses: str, timeout: float = 20.0, settled: bool = False
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            doc = await self.job(job_id)
            open_steps = [s for s in doc["steps"] if s["status"] in ("pending", "running", "waiting_retry")]
            if doc["status"] in statuses and not (settled and open_steps):
                return doc
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {doc['status']} after {timeout}s: {json.dumps(doc)[:3000]}")
            await asyncio.sleep(0.05)

    async def wait_callbacks(self, job_id: str, count: int, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.receiver.types_for(job_id)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"callbacks for {job_id}: {self.receiver.types_for(job_id)}")
            await asyncio.sleep(0.05)
        return self.receiver.types_for(job_id)


def bridge_settings(db_url: str, panel_url: str, callback_origin: str, amqp_url: str = "", **extra: Any) -> Settings:
    """``panel_options`` (in ``extra``) override the simulator panel's settings, say its timeouts."""
    panel_options = extra.pop("panel_options", {})
    values: dict[str, Any] = {
        "database_url": db_url,
        "amqp_url": amqp_url,
        "amqp_prefix": f"t{uuid.uuid4().hex[:8]}",
        "webhook_secrets": [WEBHOOK_SECRET],
        "callback_secret": CALLBACK_SECRET,
        "callback_allowed_origins": [callback_origin],
        "secret_key": [FERNET_KEY],
        "panels": [
            {
                "name": "default",
                "url": panel_url,
                "timeout_s": 2.0,
                "read_timeout_s": 2.0,
                "ssl_timeout_s": 2.0,
                **panel_options,
            }
        ],
        "retry_delay_scale": 0.001,
        "lease_s": 5.0,
        "requeue_after_s": 2.0,
        "shutdown_grace_s": 5.0,
        "worker_prefetch": 8,
    }
    values.update(extra)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_bridge(
    db_url: str,
    *,
    amqp_url: str = "",
    sim: PanelSimulator | None = None,
    roles: set[Role] | None = None,
    **extra: Any,
) -> AsyncIterator[Bridge]:
    """The whole bridge in this process (all roles unless told), with a simulator and a receiver."""
    sim = sim or PanelSimulator()
    if ACCOUNT[0] not in sim.state.accounts:
        sim.add_account(*ACCOUNT)
    receiver = CallbackReceiver(CALLBACK_SECRET)
    async with TestServer(sim.app()) as panel_server, TestServer(receiver.app()) as receiver_server:
        origin = str(receiver_server.make_url("/")).rstrip("/")
        panel_url = str(panel_server.make_url("/")).rstrip("/")
        settings = bridge_settings(db_url, panel_url, origin, amqp_url, **extra)
        async with open_runtime(settings) as runtime:
            if amqp_url:
                await runtime.queue.purge()  # type: ignore[attr-defined]
            services = background_services(runtime, roles or {Role.BACKGROUND, Role.WORKER})
            tasks = [asyncio.create_task(runtime.relay.run())]
            tasks += [asyncio.create_task(service.run()) for service in services]
            try:
                async with TestClient(TestServer(build_app(runtime))) as client:
                    yield Bridge(runtime, client, sim, receiver, f"{origin}/bridge-callback")
            finally:
                for service in reversed(services):
                    await service.stop()
                runtime.relay.stop()
                await asyncio.gather(*tasks, return_exceptions=True)
                if amqp_url:
                    await _delete_queues(runtime)


async def _delete_queues(runtime: Runtime) -> None:
    import aio_pika

    names = runtime.queue.names.all  # type: ignore[attr-defined]
    connection = await aio_pika.connect(runtime.settings.amqp_url)
    async with connection:
        for name in names:
            channel = await connection.channel()
            await channel.queue_delete(name)
            await channel.close()
