"""Graceful shutdown of real ``bridge worker`` and ``bridge serve`` processes.

The worker runs as a subprocess against PostgreSQL and RabbitMQ; the intake, relay,
scheduler and callbacks run in the test process (``Role.BACKGROUND``), beside a
panel simulator whose mutating calls take 2 s. SIGTERM arrives while a step is
in the middle of such a call:

- grace longer than the step: the step finishes, its outcome is committed, the
  process exits 0, and the next worker carries on without repeating anything;
- grace shorter than the step: the process exits at the end of the grace period
  without recording an outcome; the step stays in flight under its lease, and
  the next worker reads the panel back (finding the late effect) instead of
  sending the call again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
from aiohttp import web
from conftest import FERNET_KEY, WEBHOOK_SECRET
from engine_harness import ACCOUNT, Bridge, running_bridge
from orders import service_create, signed
from sqlalchemy import select

from bridge.bootstrap import DELAY_BUCKETS_S, Role
from bridge.broker.rabbitmq import RabbitQueue
from bridge.panel.simulator import PanelSimulator
from bridge.store import tables as t
from bridge.store.database import create_engine
from bridge.store.types import utcnow

pytestmark = [pytest.mark.pg, pytest.mark.amqp]

STEP_S = 2.0  # the simulator's latency for every mutating call
PANEL_TIMEOUT_S = 4.0  # longer than a step: the call itself never times out here


def bridge_env(**settings: str) -> dict[str, str]:
    """The process environment for a bridge subprocess: ours without BRIDGE_*, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update({f"BRIDGE_{name.upper()}": value for name, value in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def worker_env(setup: Setup, grace_s: float) -> dict[str, str]:
    settings = setup.bridge.runtime.settings
    panel = {"name": "default", "url": setup.panel_url, "timeout_s": PANEL_TIMEOUT_S}
    return bridge_env(
        database_url=settings.database_url,
        amqp_url=settings.amqp_url,
        amqp_prefix=settings.amqp_prefix,  # the queues the in-process relay publishes to
        secret_key=FERNET_KEY,
        panels=json.dumps([panel]),
        retry_delay_scale="0.001",
        lease_s="3",
        shutdown_grace_s=str(grace_s),
        log_level="INFO",
        worker_metrics_port="0",  # any free port: workers may overlap on this host
    )


async def start_bridge(command: str, env: dict[str, str], log_path: Path) -> asyncio.subprocess.Process:
    log = log_path.open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge.cli", command, env=env, stdout=log, stderr=log
        )
    finally:
        log.close()  # the child has its own descriptor


async def stop(process: asyncio.subprocess.Process, timeout: float) -> tuple[int, float]:
    """SIGTERM ``process``; its exit code and how long it took to exit."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(process.wait(), timeout)
    return code, time.monotonic() - started


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def step_row(bridge: Bridge, job_id: str, kind: str) -> Any:
    async with bridge.runtime.engine.connect() as conn:
        return (
            await conn.execute(
                select(t.steps)
                .join(t.jobs, t.jobs.c.id == t.steps.c.job_id)
                .where(t.jobs.c.public_id == job_id, t.steps.c.kind == kind)
            )
        ).one()


async def job_row(bridge: Bridge, job_id: str) -> Any:
    async with bridge.runtime.engine.connect() as conn:
        return (await conn.execute(select(t.jobs).where(t.jobs.c.public_id == job_id))).one()


async def attempts_of(bridge: Bridge, step_id: int) -> list[Any]:
    async with bridge.runtime.engine.connect() as conn:
        rows = await conn.execute(select(t.attempts).where(t.attempts.c.step_id == step_id).order_by(t.attempts.c.id))
        return list(rows)


@dataclass
class Setup:
    bridge: Bridge
    panel_url: str  # the simulator as the worker processes reach it

    @property
    def sim(self) -> PanelSimulator:
        return self.bridge.sim


@pytest.fixture
async def setup(pg_url: str, amqp_url: str) -> AsyncIterator[Setup]:
    """Intake, relay, scheduler and callbacks in this process (no workers), and the simulator."""
    sim = PanelSimulator()
    sim.set_latency(STEP_S, "mutating")
    # Served like a real panel: a call goes on after its client has gone (aiohttp's test
    # server would cancel it instead), so a cut-off call can still take effect late.
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with running_bridge(pg_url, amqp_url=amqp_url, sim=sim, roles={Role.BACKGROUND}) as bridge:
            yield Setup(bridge, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def order(bridge: Bridge) -> dict[str, Any]:
    """check_account, add_domain (the slow step cut by SIGTERM), issue_ssl, create_database."""
    return service_create(username=ACCOUNT[0], password=ACCOUNT[1], callback_url=bridge.callback_url, cron_jobs=[])


async def send_and_wait_for_add_domain(bridge: Bridge) -> str:
    status, answer = await bridge.send(order(bridge))
    assert status == 202, answer
    await eventually(lambda: bridge.sim.mutations_in_flight == 1, 20, "add_domain to be in progress")
    assert bridge.sim.snapshot()["counters"].get("add_domain") == 1
    return str(answer["job_id"])


def assert_every_effect_once(sim: PanelSimulator) -> None:
    counters = sim.snapshot()["counters"]
    assert {call: counters.get(call) for call in ("add_domain", "domain_issue_ssl", "db_make")} == {
        "add_domain": 1,
        "domain_issue_ssl": 1,
        "db_make": 1,
    }
    account = sim.snapshot()["accounts"][ACCOUNT[0]]
    assert [d["domain"] for d in account["domains"]] == ["example.com"]


async def test_worker_finishes_the_running_step_within_the_grace_period(setup: Setup, tmp_path: Path) -> None:
    bridge = setup.bridge
    log = tmp_path / "worker.log"
    worker = await start_bridge("worker", worker_env(setup, grace_s=6.0), log)
    try:
        job_id = await send_and_wait_for_add_domain(bridge)
        bridge.sim.set_latency(0.0, "mutating")  # only the call in progress stays slow
        code, took = await stop(worker, timeout=10)
    finally:
        if worker.returncode is None:
            worker.kill()
    assert code == 0, log.read_text()
    assert took < STEP_S + 1.5, f"exit took {took:.1f} s"

    step = await step_row(bridge, job_id, "add_domain")
    assert step.status == "succeeded" and not step.in_flight
    [attempt] = await attempts_of(bridge, step.id)
    assert attempt.finished_at is not None and attempt.outcome == "succeeded"
    job = await bridge.job(job_id)
    assert job["status"] == "running"
    later = await step_row(bridge, job_id, "issue_ssl")
    assert later.status == "pending"  # the stopping worker took no new step

    second = await start_bridge("worker", worker_env(setup, grace_s=6.0), log)
    try:
        await bridge.wait_for(job_id, "succeeded", timeout=20)
    finally:
        await stop(second, timeout=10)
    assert_every_effect_once(bridge.sim)


async def test_worker_cut_off_by_the_grace_period_leaves_the_step_to_be_reconciled(
    setup: Setup, tmp_path: Path
) -> None:
    bridge = setup.bridge
    log = tmp_path / "worker.log"
    grace_s = 0.5
    worker = await start_bridge("worker", worker_env(setup, grace_s=grace_s), log)
    try:
        job_id = await send_and_wait_for_add_domain(bridge)
        code, took = await stop(worker, timeout=10)
    finally:
        if worker.returncode is None:
            worker.kill()
    assert code == 0, log.read_text()
    assert took < grace_s + 1.0, f"exit took {took:.1f} s"
    assert bridge.sim.mutations_in_flight == 1  # the panel is still working on it

    # Nothing was recorded for the cut-off call: it stays in flight under the old lease.
    step = await step_row(bridge, job_id, "add_domain")
    assert step.status == "running" and step.in_flight
    [attempt] = await attempts_of(bridge, step.id)
    assert attempt.finished_at is None

    # The lease outlasts the call: nobody may read the panel back while it may still be working.
    job = await job_row(bridge, job_id)
    assert job.lease_owner is not None
    assert job.lease_until > utcnow() + timedelta(seconds=PANEL_TIMEOUT_S - took)

    # The panel finishes the call after the worker has gone: the late effect.
    await eventually(lambda: bridge.sim.mutations_in_flight == 0, STEP_S + 1, "the panel to finish")
    bridge.sim.set_latency(0.0, "mutating")
    calls_before = len(bridge.sim.snapshot()["calls"])

    second = await start_bridge("worker", worker_env(setup, grace_s=6.0), log)
    try:
        # Until the lease runs out, the new worker leaves the job alone (its redelivered
        # message and the scheduler's polls find it busy)...
        await asyncio.sleep(max(0.0, (job.lease_until - utcnow()).total_seconds() - 0.3))
        assert len(bridge.sim.snapshot()["calls"]) == calls_before
        # ...then reads the panel back, finds the late effect and goes on.
        await bridge.wait_for(job_id, "succeeded", timeout=20)
    finally:
        await stop(second, timeout=10)
    assert_every_effect_once(bridge.sim)
    calls = [c["call"] for c in bridge.sim.snapshot()["calls"]]
    assert calls.index("domain_list") > calls.index("add_domain"), calls  # read back, not re-sent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_serve_finishes_a_request_in_flight_and_publishes_it_before_exit(
    pg_url: str, amqp_url: str, tmp_path: Path
) -> None:
    port = free_port()
    prefix = f"t{os.urandom(4).hex()}"
    env = bridge_env(
        database_url=pg_url,
        amqp_url=amqp_url,
        amqp_prefix=prefix,
        http_port=str(port),
        webhook_secrets=WEBHOOK_SECRET,
        secret_key=FERNET_KEY,
        panels=json.dumps([{"name": "default", "url": "https://127.0.0.1:9"}]),
        shutdown_grace_s="5",
    )
    log = tmp_path / "serve.log"
    serve = await start_bridge("serve", env, log)
    dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    locker = await asyncpg.connect(dsn)
    try:
        await eventually(lambda: _listening(port), 15, "bridge serve to listen")
        # Hold the request inside its transaction: the outbox is locked until we let go.
        hold = locker.transaction()
        await hold.start()
        await locker.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
        request = asyncio.create_task(post_in_two_parts(port, service_create(cron_jobs=[], databases=[])))
        await eventually(lambda: _lock_waits(locker), 10, "the webhook to wait for the outbox")
        serve.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await eventually(lambda: not _listening(port), 5, "bridge serve to stop accepting")
        assert not request.done()
        await hold.rollback()  # the request in flight goes on and commits
        answer = await asyncio.wait_for(request, 10)
        assert answer.startswith(b"HTTP/1.1 202"), (answer[:300], log.read_text())
        code = await asyncio.wait_for(serve.wait(), 10)
        assert time.monotonic() - signalled < 5  # within the grace period
    finally:
        await locker.close()
        if serve.returncode is None:
            serve.kill()
    assert code == 0, log.read_text()

    # Committed after SIGTERM, and still published before the process ended.
    engine = create_engine(pg_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(t.outbox.c.sent_at))).all()
    finally:
        await engine.dispose()
    assert len(rows) == 1 and rows[0].sent_at is not None
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{prefix}.jobs", passive=True)
        assert queue.declaration_result.message_count == 1
        for name in RabbitQueue(amqp_url, prefix, delay_buckets_s=DELAY_BUCKETS_S).names.all:
            await channel.queue_delete(name)


async def post_in_two_parts(port: int, event: dict[str, Any]) -> bytes:
    """POST a signed order whose body arrives in two pieces (as over a slow link); the raw answer."""
    body, headers = signed(WEBHOOK_SECRET, event)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write(
        f"POST /webhooks/orders HTTP/1.1\r\nHost: bridge\r\n{head}Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + body[:20]
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(body[20:])
    await writer.drain()
    try:
        return await reader.read()
    finally:
        writer.close()


async def _lock_waits(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"))


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False
