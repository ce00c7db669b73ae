"""`bridge run` as a real process on the embedded default: orders in, provisioning,
metrics and JSON-lines logs out, no secret anywhere, clean exit on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer
from conftest import FERNET_KEY, WEBHOOK_SECRET
from orders import ACCOUNT_PASSWORD, DB_PASSWORD, service_create, signed
from sqlalchemy import select

from bridge.panel.simulator import PanelSimulator
from bridge.store import tables as t
from bridge.store.database import create_engine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def job_status(db_url: str, job_id: str) -> str | None:
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(select(t.jobs.c.status).where(t.jobs.c.public_id == job_id))).scalar()
    finally:
        await engine.dispose()


async def test_bridge_run_provisions_reports_metrics_and_logs_without_secrets(tmp_path: Path) -> None:
    sim = PanelSimulator()
    sim.add_account("john", ACCOUNT_PASSWORD)
    async with TestServer(sim.app()) as panel:
        port = free_port()
        db_url = f"sqlite+aiosqlite:///{tmp_path / 'bridge.db'}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(
            BRIDGE_DATABASE_URL=db_url,
            BRIDGE_HTTP_PORT=str(port),
            BRIDGE_WEBHOOK_SECRETS=WEBHOOK_SECRET,
            BRIDGE_SECRET_KEY=FERNET_KEY,
            BRIDGE_PANELS=json.dumps([{"name": "default", "url": str(panel.make_url("/")).rstrip("/")}]),
            BRIDGE_LOG_FORMAT="json",
            BRIDGE_LOG_LEVEL="DEBUG",
            BRIDGE_RETRY_DELAY_SCALE="0.001",
        )
        log_path = tmp_path / "bridge.log"
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge.cli", "run", env=env, stderr=log_file, stdout=log_file
            )
            try:
                base = f"http://127.0.0.1:{port}"
                async with aiohttp.ClientSession() as http:
                    for _ in range(200):
                        try:
                            async with http.get(f"{base}/healthz") as r:
                                if r.status == 200:
                                    break
                        except aiohttp.ClientError:
                            await asyncio.sleep(0.05)
                    body, headers = signed(WEBHOOK_SECRET, service_create())
                    async with http.post(f"{base}/webhooks/orders", data=body, headers=headers) as r:
                        assert r.status == 202
                        job_id = (await r.json())["job_id"]
                    for _ in range(300):
                        if await job_status(db_url, job_id) == "succeeded":
                            break
                        await asyncio.sleep(0.05)
                    assert await job_status(db_url, job_id) == "succeeded"
                    async with http.get(f"{base}/readyz") as r:
                        assert r.status == 200
                    async with http.get(f"{base}/metrics") as r:
                        metrics = await r.text()
                # A second `bridge run` on the same database would call the panel beside this one.
                second = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bridge.cli",
                    "run",
                    env={**env, "BRIDGE_HTTP_PORT": str(free_port())},
                    stderr=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.DEVNULL,
                )
                try:
                    _, second_err = await asyncio.wait_for(second.communicate(), 30)
                finally:
                    if second.returncode is None:  # it started after all: the check below fails
                        second.kill()
                        await second.wait()
            finally:
                proc.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(proc.wait(), 20)
    assert code == 0
    assert second.returncode == 2
    assert second_err.decode().strip() == (
        f"bridge: cannot start: BRIDGE_DATABASE_URL: {tmp_path / 'bridge.db'} is in use by another "
        f"`bridge run` (process {proc.pid}); one process runs the embedded mode on a database"
    )
    assert 'bridge_webhooks_total{outcome="accepted"} 1.0' in metrics
    assert 'bridge_jobs{status="succeeded"} 1.0' in metrics
    assert 'bridge_step_attempts_total{kind="add_domain",outcome="succeeded"} 1.0' in metrics
    assert "bridge_panel_call_seconds_count" in metrics
    log_text = log_path.read_text()
    entries = [json.loads(line) for line in log_text.splitlines() if line.strip()]
    assert any(entry.get("job_id") == job_id and entry.get("step") == "add_domain" for entry in entries)
    for secret in (ACCOUNT_PASSWORD, DB_PASSWORD, WEBHOOK_SECRET, FERNET_KEY):
        assert secret not in log_text
        assert secret not in metrics
