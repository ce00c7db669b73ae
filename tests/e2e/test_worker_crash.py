"""A worker process killed with SIGKILL in the middle of a job: nothing is lost, nothing done twice.

Two real `bridge worker` processes consume from RabbitMQ against PostgreSQL; the
webhook, relay, scheduler and callbacks run in the test process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import FERNET_KEY
from engine_harness import Bridge, running_bridge
from orders import service_create
from sqlalchemy import select

from bridge.bootstrap import Role
from bridge.panel.config import MUTATING_CALLS
from bridge.panel.simulator import PanelSimulator
from bridge.store import tables as t

ORDERS = 8


def worker_env(bridge_settings: object) -> dict[str, str]:
    settings = bridge_settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        BRIDGE_DATABASE_URL=settings.database_url,  # type: ignore[attr-defined]
        BRIDGE_AMQP_URL=settings.amqp_url,  # type: ignore[attr-defined]
        BRIDGE_AMQP_PREFIX=settings.amqp_prefix,  # type: ignore[attr-defined]
        BRIDGE_SECRET_KEY=FERNET_KEY,
        BRIDGE_PANELS=json.dumps([p.model_dump() for p in settings.panels]),  # type: ignore[attr-defined]
        BRIDGE_RETRY_DELAY_SCALE="0.001",
        BRIDGE_LEASE_S="2",
        BRIDGE_SHUTDOWN_GRACE_S="1",
        BRIDGE_LOG_LEVEL="WARNING",
        # Small, so both workers get jobs.
        BRIDGE_WORKER_PREFETCH="2",
        BRIDGE_WORKER_METRICS_PORT="0",  # any free port: two workers share this host
    )
    return env


def most_at_once(calls: list[dict[str, Any]]) -> int:
    """The most mutating calls the panel worked on at one time."""
    edges: list[tuple[float, int]] = []
    for call in calls:
        if call["call"] in MUTATING_CALLS:
            finished = float("inf") if call["finished"] is None else float(call["finished"])
            edges += [(float(call["time"]), 1), (finished, -1)]
    running = most = 0
    for _, change in sorted(edges):  # at the same moment an end sorts before a start
        running += change
        most = max(most, running)
    return most


async def start_worker(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "worker", env=env, stdout=asyncio.subprocess.DEVNULL
    )


async def accounts_leased_by(bridge: Bridge, pid: int) -> set[str]:
    """The panel accounts of the jobs whose lease a worker process holds."""
    async with bridge.runtime.engine.connect() as conn:
        rows = await conn.execute(select(t.jobs.c.account_username).where(t.jobs.c.lease_owner.like(f"%:{pid}:%")))
    return {row.account_username for row in rows}


def mutation_in_progress(sim: PanelSimulator, accounts: set[str]) -> int | None:
    """Index in the panel's call log of a mutating call for one of ``accounts`` not yet answered."""
    for index, call in enumerate(sim.snapshot()["calls"]):
        if call["call"] in MUTATING_CALLS and call["account"] in accounts and call["finished"] is None:
            return index
    return None


async def mutation_of_victim_in_progress(bridge: Bridge, sim: PanelSimulator, pid: int) -> int:
    """Wait for the panel to be working on a mutating call the worker ``pid`` sent.

    Only a job's lease holder sends (it renews the lease just before sending), so a
    call for the account of a job ``pid`` holds is that worker's call.
    """
    for _ in range(400):
        index = mutation_in_progress(sim, await accounts_leased_by(bridge, pid))
        if index is not None:
            return index
        await asyncio.sleep(0.02)
    raise AssertionError("the victim never had a mutating panel call in progress")


@pytest.fixture
async def pg_rabbit(pg_url: str, amqp_url: str) -> AsyncIterator[dict[str, str]]:
    yield {"db_url": pg_url, "amqp_url": amqp_url}


async def test_sigkill_mid_job_loses_nothing_and_repeats_nothing(pg_rabbit: dict[str, str]) -> None:
    sim = PanelSimulator()
    for n in range(ORDERS):
        sim.add_account(f"user{n}", f"Password-{n}-xyz")
    sim.set_latency(0.15)
    # After the kill the panel's gate stays closed 0.5 s (scaled by 0.001): the victim's call ends first.
    quiet = {"quiet_after_unknown_s": 500}
    async with running_bridge(**pg_rabbit, sim=sim, roles={Role.BACKGROUND}, panel_options=quiet) as bridge:
        env = worker_env(bridge.runtime.settings)
        victim, survivor = await start_worker(env), await start_worker(env)
        try:
            ids = []
            for n in range(ORDERS):
                event = service_create(
                    service_id=f"svc{n}",
                    username=f"user{n}",
                    password=f"Password-{n}-xyz",
                    domain=f"site{n}.example.com",
                    ssl=False,
                    cron_jobs=[],
                )
                ids.append((await bridge.send(event))[1]["job_id"])
            in_progress = await mutation_of_victim_in_progress(bridge, sim, victim.pid)
            # Nothing awaited since that look: the panel, served by this event loop, cannot answer before the kill.
            killed_at = sim.clock()
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            call = sim.snapshot()["calls"][in_progress]
            assert call["finished"] is None or call["finished"] >= killed_at, f"{call} ended before the kill"
            for job_id in ids:
                await bridge.wait_for(job_id, "succeeded", timeout=90)
        finally:
            for proc in (victim, survivor):
                if proc.returncode is None:
                    proc.terminate()
                    await proc.wait()
        accounts = sim.snapshot()["accounts"]
        for n in range(ORDERS):
            assert [d["domain"] for d in accounts[f"user{n}"]["domains"]] == [f"site{n}.example.com"]
            assert accounts[f"user{n}"]["databases"] == [f"user{n}_wp"]
        # The killed worker's call went on in the panel after its death (its gate went with its
        # connection), and the survivor, finding the gate never let go, waited before its next call.
        assert most_at_once(sim.snapshot()["calls"]) == 1
