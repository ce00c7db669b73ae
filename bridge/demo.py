"""``bridge demo``: the whole bridge on the embedded default, against the panel
simulator, with a few signed orders and a callback receiver, shown live.

Everything runs in this process on random local ports, with a fresh SQLite file
in a temporary directory, so the demo can be run again and again.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bridge.bootstrap import Role, background_services, build_app, open_runtime
from bridge.domain.jobs import JobStatus, StepStatus
from bridge.panel.simulator import PanelSimulator
from bridge.secrets_gen import new_secrets
from bridge.settings import Settings
from bridge.store.admin_ops import get_job
from bridge.store.database import migrate
from bridge.webhooks.signature import InvalidSignature, SignatureVerifier, sign

# Attempt outcomes that need no line of their own: the step's line says it.
SUCCESS_OUTCOMES = ("succeeded", "reconciled")

ACCOUNTS = [("john", "John-Demo-Pass-1", 5, 5), ("mary", "Mary-Demo-Pass-2", 5, 5), ("pete", "Pete-Demo-Pass-3", 5, 1)]


def _orders(callback_url: str) -> list[tuple[str, dict[str, Any]]]:
    def order(service: str, user: str, password: str, domain: str, **data: Any) -> dict[str, Any]:
        base = {
            "service_id": service,
            "account": {"username": user, "password": password},
            "domain": domain,
            "php_version": "8.2",
            "callback_url": callback_url,
        }
        return {"type": "service.create", "data": {**base, **data}}

    db = [{"name": "wp", "user": "wpuser", "password": "Str0ng-Db-Passw0rd"}]
    cron = [{"minute": "*/5", "hour": "*", "day": "*", "month": "*", "weekday": "*", "command": "php cron.php"}]
    return [
        (
            "a full order, panel fails once",
            order("4711", "john", "John-Demo-Pass-1", "john-shop.example", databases=db, cron_jobs=cron),
        ),
        ("a second order", order("4712", "mary", "Mary-Demo-Pass-2", "mary-blog.example", databases=db)),
        ("DNS not ready for SSL", order("4713", "pete", "Pete-Demo-Pass-3", "pete-site.example")),
        (
            "over the package limit",
            order(
                "4714",
                "pete",
                "Pete-Demo-Pass-3",
                "pete-two.example",
                ssl=False,
                databases=[*db, {"name": "shop", "user": "shopuser", "password": "An0ther-Db-Passw0rd"}],
            ),
        ),
    ]


class _DemoSettings(Settings):
    """What the demo passes, and the defaults: never the environment or ``BRIDGE_CONFIG``, so
    a machine set up for a real bridge runs the same demo as any other."""

    reads_environment = False


class _Receiver:
    """Plays the billing platform's callback endpoint: verifies signatures, keeps what came."""

    def __init__(self, secret: str) -> None:
        self.verifier = SignatureVerifier([secret])
        self.received: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            self.verifier.verify(body, request.headers)
        except InvalidSignature:
            return web.Response(status=401)
        self.received.append(json.loads(body))
        return web.Response(status=204)


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


def _say(text: str) -> None:
    print(text, flush=True)


async def run_demo(timeout_s: float = 60.0) -> int:
    secrets = new_secrets()
    sim = PanelSimulator()
    for user, password, domains, dbs in ACCOUNTS:
        sim.add_account(user, password, domain_limit=domains, db_limit=dbs)
    # The first add_domain (john's order, sent first) meets the panel's typical transient failure.
    sim.inject_fault("add_domain", "error:Failed to add mapping for 'john-shop.example'.")
    sim.fail_ssl("pete-site.example", 2)
    receiver = _Receiver(secrets["BRIDGE_CALLBACK_SECRET"])
    receiver_app = web.Application()
    receiver_app.router.add_post("/bridge-callback", receiver.handle)
    panel_runner, panel_port = await _serve(sim.app())
    receiver_runner, receiver_port = await _serve(receiver_app)
    with tempfile.TemporaryDirectory(prefix="bridge-demo-") as workdir:
        try:
            return await _run_in(Path(workdir), secrets, sim, receiver, panel_port, receiver_port, timeout_s)
        finally:
            await panel_runner.cleanup()
            await receiver_runner.cleanup()


async def _run_in(
    workdir: Path,
    secrets: dict[str, str],
    sim: PanelSimulator,
    receiver: _Receiver,
    panel_port: int,
    receiver_port: int,
    timeout_s: float,
) -> int:
    """The bridge on a database in ``workdir`` (removed when the demo ends)."""
    settings = _DemoSettings(
        database_url=f"sqlite+aiosqlite:///{workdir / 'bridge.db'}",
        webhook_secrets=[secrets["BRIDGE_WEBHOOK_SECRETS"]],
        callback_secret=secrets["BRIDGE_CALLBACK_SECRET"],
        callback_allowed_origins=[f"http://127.0.0.1:{receiver_port}"],
        secret_key=[secrets["BRIDGE_SECRET_KEY"]],
        admin_tokens=[secrets["BRIDGE_ADMIN_TOKENS"]],
        panels=[{"name": "default", "url": f"http://127.0.0.1:{panel_port}", "timeout_s": 5}],
        retry_delay_scale=0.002,
    )
    _say(f"panel simulator   http://127.0.0.1:{panel_port}  (accounts: {', '.join(a[0] for a in ACCOUNTS)})")
    _say(f"database          {workdir / 'bridge.db'}  (SQLite, in-process queue; removed at the end)")
    await migrate(settings.database_url)
    async with open_runtime(settings) as runtime:
        services = background_services(runtime, {Role.BACKGROUND, Role.WORKER})
        tasks = [asyncio.create_task(runtime.relay.run())] + [asyncio.create_task(s.run()) for s in services]
        bridge_runner, bridge_port = await _serve(build_app(runtime))
        _say(f"bridge            http://127.0.0.1:{bridge_port}  (webhook /webhooks/orders, admin /admin/)\n")
        try:
            jobs = await _send_orders(
                bridge_port, secrets["BRIDGE_WEBHOOK_SECRETS"], receiver_port, lambda: _first_add_domain(sim)
            )
            await _watch(runtime, jobs, timeout_s)
            await asyncio.sleep(0.5)  # let the last callbacks go out
            return _summary(runtime, jobs, sim, receiver, await _documents(runtime, jobs))
        finally:
            await bridge_runner.cleanup()
            for service in reversed(services):
                await service.stop()
            runtime.relay.stop()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _first_add_domain(sim: PanelSimulator) -> None:
    """Until the panel has had the first add_domain: the one its injected failure is meant for."""
    for _ in range(100):
        if sim.state.counters.get("add_domain"):
            return
        await asyncio.sleep(0.05)


async def _send_orders(
    port: int, secret: str, receiver_port: int, first_order_reached_panel: Callable[[], Awaitable[None]]
) -> dict[str, str]:
    jobs: dict[str, str] = {}
    callback_url = f"http://127.0.0.1:{receiver_port}/bridge-callback"
    async with aiohttp.ClientSession() as session:
        for number, (label, event) in enumerate(_orders(callback_url)):
            if number == 1:
                # The others follow once the first order's domain is on its way to the panel, so
                # the panel's one transient failure meets that order, as its label says.
                await first_order_reached_panel()
            body = json.dumps(event).encode()
            webhook_id = f"msg_{uuid.uuid4().hex}"
            for copy in ("", " (sent again: duplicate)") if event["data"]["service_id"] == "4711" else ("",):
                headers = {**sign(secret, webhook_id, int(time.time()), body), "Content-Type": "application/json"}
                async with session.post(f"http://127.0.0.1:{port}/webhooks/orders", data=body, headers=headers) as r:
                    answer = await r.json()
                _say(f"order {event['data']['service_id']} ({label}){copy}: HTTP {r.status} {json.dumps(answer)}")
            jobs[answer["job_id"]] = f"{event['data']['service_id']} {label}"
    _say("")
    return jobs


async def _documents(runtime: Any, jobs: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {job_id: await get_job(runtime.engine, job_id) for job_id in jobs}


def _settled(doc: dict[str, Any]) -> bool:
    # A failed job keeps its unfinished steps; a succeeded one may still have a deferred step to watch.
    status = JobStatus(doc["status"])
    deferred = status is JobStatus.SUCCEEDED and any(StepStatus(s["status"]).open for s in doc["steps"])
    return status.finished and not deferred


async def _watch(runtime: Any, jobs: dict[str, str], timeout_s: float) -> None:
    """Print every step change and every attempt that did not succeed as it happens, until
    every job has settled (a retry can come and go between two looks at a step)."""
    seen: dict[tuple[str, str], str] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        docs = await _documents(runtime, jobs)
        for job_id, doc in docs.items():
            for step in doc["steps"]:
                for attempt in doc["attempts"]:
                    key = (job_id, f"attempt {attempt['id']}")
                    failed = attempt["finished_at"] and attempt["outcome"] not in SUCCESS_OUTCOMES
                    if failed and attempt["step"] == step["kind"] and key not in seen:
                        seen[key] = attempt["outcome"]
                        what = f"attempt {attempt['number']} {attempt['outcome']}: {attempt['message']}"
                        _say(f"  {jobs[job_id]:<36} {step['kind']:<16} {what}"[:180])
                key = (job_id, f"{step['position']}")
                state = f"{step['status']}/{step['attempts']}"
                if seen.get(key) != state:
                    seen[key] = state
                    _say(f"  {jobs[job_id]:<36} {step['kind']:<16} {step['status']:<13} attempt {step['attempts']}")
        if all(_settled(doc) for doc in docs.values()):
            return
        await asyncio.sleep(0.1)
    _say("(demo timed out waiting for jobs)")


def _summary(
    runtime: Any, jobs: dict[str, str], sim: PanelSimulator, receiver: _Receiver, docs: dict[str, dict[str, Any]]
) -> int:
    _say("\nsummary")
    for job_id, doc in docs.items():
        _say(f"  {jobs[job_id]:<36} {doc['status']:<10} {doc['error'] or ''}"[:160])
        for comp in doc["compensations"]:
            if comp["status"] == "pending":
                _say(f"  {'':<36} to undo: {comp['action']}")
    counters = sim.snapshot()["counters"]
    _say(f"\npanel calls: {json.dumps(dict(sorted(counters.items())))}")
    _say(f"mutating calls ever in progress at once on the panel: {sim.snapshot()['max_concurrent_mutations']}")
    kinds = [c["type"] for c in receiver.received]
    _say(f"signed callbacks received and verified: {len(kinds)} ({', '.join(sorted(set(kinds)))})")
    expected = {"succeeded": 3, "failed": 1}
    got = {status: sum(d["status"] == status for d in docs.values()) for status in expected}
    return 0 if got == expected else 1


def main() -> int:
    return asyncio.run(run_demo())
