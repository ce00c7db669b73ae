"""Helpers shared by the admin tests: a bridge with an admin token, orders, failing jobs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from conftest import ADMIN_TOKEN
from engine_harness import ACCOUNT, Bridge, running_bridge
from orders import DB_PASSWORD, service_create

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LIMIT_TEXT = "Database limit exceeded."


@contextlib.asynccontextmanager
async def admin_bridge(db_url: str, amqp_url: str = "", **extra: Any) -> AsyncIterator[Bridge]:
    extra.setdefault("admin_tokens", [ADMIN_TOKEN])
    async with running_bridge(db_url, amqp_url=amqp_url, **extra) as bridge:
        yield bridge


def order(bridge: Bridge, **kw: Any) -> dict[str, Any]:
    kw.setdefault("username", ACCOUNT[0])
    kw.setdefault("password", ACCOUNT[1])
    return service_create(callback_url=bridge.callback_url, **kw)


async def failed_at_database(bridge: Bridge, **kw: Any) -> str:
    """A job that failed permanently at create_database (after add_domain took effect)."""
    bridge.sim.inject_fault("db_make", f"error:{LIMIT_TEXT}")
    status, answer = await bridge.send(order(bridge, **kw))
    assert status == 202, answer
    await bridge.wait_for(answer["job_id"], "failed")
    return str(answer["job_id"])


async def failed_job_of_its_own(bridge: Bridge, n: int, service_id: str) -> str:
    """A job failed as :func:`failed_at_database` leaves it, whose domain and database no other
    job of a test has (numbered ``n``), so that several can be retried and succeed."""
    database = {"name": f"db{n}", "user": f"user{n}", "password": DB_PASSWORD}
    return await failed_at_database(
        bridge, service_id=service_id, domain=f"site{n}.example.com", databases=[database], cron_jobs=[]
    )


async def add_domain_being_sent(bridge: Bridge, service_id: str) -> str:
    """A new order of ``service_id`` whose add_domain the panel is working on (for a second): its job id."""
    bridge.sim.set_latency(1.0, "add_domain")
    busy = order(bridge, service_id=service_id, domain="busy.example.com", ssl=False, databases=[], cron_jobs=[])
    running = str((await bridge.send(busy))[1]["job_id"])

    async def sending() -> bool:
        return bool((await bridge.job(running))["steps"][1]["status"] == "running")

    await wait_until(sending)
    return running


def run_state(job: dict[str, Any]) -> tuple[Any, ...]:
    """What a retry changes in a job (its callbacks are delivered meanwhile, so not those)."""
    return job["status"], job["updated_at"], job["steps"], job["attempts"]


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
