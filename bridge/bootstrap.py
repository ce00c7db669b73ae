"""The composition root: the one place that knows every part and wires them together.

``bridge run`` = roles {http, background, worker}; ``bridge serve`` = {http, background};
``bridge worker`` = {worker}. Every role also runs an outbox relay, so the wake-ups a
process commits are published by that same process at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.broker.base import JobQueue
from bridge.metrics import Metrics
from bridge.relay import OutboxRelay
from bridge.settings import Settings
from bridge.store.crypto import SecretBox
from bridge.store.database import create_engine, is_sqlite
from bridge.webhooks.signature import SignatureVerifier

log = logging.getLogger("bridge")


class Role(StrEnum):
    HTTP = "http"
    BACKGROUND = "background"  # scheduler and callback sender
    WORKER = "worker"


@dataclass
class Runtime:
    """Everything long-lived that handlers and loops share. Built once per process."""

    settings: Settings
    engine: AsyncEngine
    box: SecretBox
    queue: JobQueue
    verifier: SignatureVerifier
    metrics: Metrics
    relay: OutboxRelay
    worker_id: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    )

    @property
    def panel_names(self) -> list[str]:
        return [panel.name for panel in self.settings.panels]

    def wake_relay(self) -> None:
        self.relay.wake()


def make_queue(settings: Settings) -> JobQueue:
    if settings.amqp_url:
        from bridge.broker.rabbitmq import RabbitQueue

        return RabbitQueue(settings.amqp_url, prefix=settings.amqp_prefix)
    from bridge.broker.memory import InProcessQueue

    return InProcessQueue()


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings, *, queue: JobQueue | None = None) -> AsyncIterator[Runtime]:
    engine = create_engine(settings.database_url)
    queue = queue or make_queue(settings)
    metrics = Metrics()
    runtime = Runtime(
        settings=settings,
        engine=engine,
        box=SecretBox(settings.secret_key),
        queue=queue,
        verifier=SignatureVerifier(settings.webhook_secrets),
        metrics=metrics,
        relay=OutboxRelay(engine, queue, metrics),
    )
    try:
        await _start_queue(queue)
        yield runtime
    finally:
        await queue.close()
        await engine.dispose()


async def _start_queue(queue: JobQueue) -> None:
    # The broker may be down at start; the outbox holds everything meanwhile, so keep
    # serving and let the relay retry rather than refusing to start.
    try:
        await queue.start()
    except Exception as exc:
        log.warning("job queue not reachable at start (%s); wake-ups wait in the outbox", exc)


def build_app(runtime: Runtime) -> web.Application:
    from bridge.web.app import create_app

    return create_app(runtime)


async def run_roles(settings: Settings, roles: set[Role], *, stop: asyncio.Event | None = None) -> None:
    """Run the given roles until SIGTERM/SIGINT (or ``stop``), then shut down gracefully."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with open_runtime(settings) as runtime:
        tasks: list[asyncio.Task[None]] = [asyncio.create_task(runtime.relay.run(), name="relay")]
        runner: web.AppRunner | None = None
        if Role.HTTP in roles:
            runner = web.AppRunner(
                build_app(runtime), access_log=None, shutdown_timeout=settings.shutdown_grace_s
            )
            await runner.setup()
            site = web.TCPSite(runner, settings.http_host, settings.http_port)
            await site.start()
            log.info("listening on http://%s:%s", settings.http_host, settings.http_port)
        background = _background_services(runtime, roles)
        tasks += [asyncio.create_task(service.run(), name=type(service).__name__) for service in background]
        await stop.wait()
        log.info("shutting down")
        if runner is not None:
            await runner.cleanup()  # stops accepting, lets in-flight requests finish
        for service in reversed(background):
            await service.stop()
        runtime.relay.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


def _background_services(runtime: Runtime, roles: set[Role]) -> list:  # type: ignore[type-arg]
    return []


def sqlite_mode(settings: Settings) -> bool:
    return is_sqlite(settings.database_url)
