"""`bridge worker` serves what it counted: the worker role, started as the CLI starts
it, answers GET /metrics and /healthz on BRIDGE_WORKER_METRICS_PORT, on PostgreSQL +
RabbitMQ beside a serving side in the same test."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cli_process import run_bridge
from engine_harness import ACCOUNT, running_bridge
from orders import service_create

from bridge.bootstrap import CannotListen, Role, run_roles, start_http
from bridge.settings import Settings


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


@pytest.mark.parametrize(
    ("command", "setting"), [("worker", "BRIDGE_WORKER_METRICS_PORT"), ("serve", "BRIDGE_HTTP_PORT")]
)
def test_a_port_already_taken_stops_the_start_with_one_line(
    pg_url: str, amqp_url: str, secrets_env: dict[str, str], tmp_path: Path, command: str, setting: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = {
            **{f"BRIDGE_{name.upper()}": value for name, value in secrets_env.items()},
            "BRIDGE_DATABASE_URL": pg_url,
            "BRIDGE_AMQP_URL": amqp_url,
            "BRIDGE_HTTP_HOST": "127.0.0.1",
            "BRIDGE_PANELS": json.dumps([{"name": "default", "url": "http://127.0.0.1:1"}]),
            setting: str(port),
        }
        done = run_bridge(command, settings, tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"bridge: cannot start: {setting}: cannot listen on 127.0.0.1:{port}: address already in use"
    ), done.stderr
    assert "Traceback" not in done.stderr


async def test_a_host_name_that_does_not_resolve_is_named_with_the_reason() -> None:
    # The resolver's errors are not system errors: their number has no strerror of its own.
    settings = Settings(http_host="no-such-host.invalid")
    with pytest.raises(CannotListen) as refused:
        await start_http(web.Application(), settings, 0, "BRIDGE_WORKER_METRICS_PORT")
    message = str(refused.value)
    assert message.startswith("BRIDGE_HTTP_HOST: cannot listen on no-such-host.invalid:0: "), message
    assert "unknown error" not in message, message
