"""`bridge worker` serves what it counted: the worker role, started as the CLI starts
it, answers GET /metrics and /healthz on BRIDGE_WORKER_METRICS_PORT, on PostgreSQL +
RabbitMQ beside a serving side in the same test."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
from engine_harness import ACCOUNT, running_bridge
from orders import service_create

from bridge.bootstrap import Role, run_roles


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def scrape(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


async def test_a_worker_publishes_its_job_step_and_panel_metrics_over_http(pg_url: str, amqp_url: str) -> None:
    async with running_bridge(pg_url, amqp_url=amqp_url, roles={Role.BACKGROUND}) as bridge:
        port = free_port()
        settings = bridge.runtime.settings.model_copy(update={"worker_metrics_port": port})
        stop = asyncio.Event()
        worker = asyncio.create_task(run_roles(settings, {Role.WORKER}, stop=stop))
        try:
            order = service_create(password=ACCOUNT[1], databases=[], cron_jobs=[], ssl=False)
            status, answer = await bridge.send(order)
            assert status == 202
            job = await bridge.wait_for(answer["job_id"], "succeeded", "failed")
            assert job["status"] == "succeeded", job["error"]

            base = f"http://127.0.0.1:{port}"
            assert (await scrape(f"{base}/healthz"))[0] == 200
            status, text = await scrape(f"{base}/metrics")
        finally:
            stop.set()
            await asyncio.wait_for(worker, 15)
    assert status == 200
    assert 'bridge_jobs_finished_total{status="succeeded"} 1.0' in text
    assert 'bridge_step_attempts_total{kind="add_domain",outcome="succeeded"} 1.0' in text
    assert 'bridge_panel_call_seconds_count{call="add_domain",panel="default"} 1.0' in text
    assert "bridge_outbox_published_total" in text
    # The database gauges are bridge serve's: a worker does not report them (as zeros).
    assert "bridge_outbox_backlog" not in text and "bridge_jobs{" not in text
