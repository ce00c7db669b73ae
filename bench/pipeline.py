"""The whole pipeline: webhook -> outbox -> RabbitMQ -> workers -> panel simulator -> callbacks.

Three sub-benchmarks, each runnable alone:

``throughput``  1,000 orders (``--orders``) posted at concurrency 32 to ``bridge serve``,
                run by ``bridge worker`` processes against the simulator (no latency),
                timed from the first POST until the last job is ``succeeded`` in the
                database (the time of the last ``job.succeeded`` callback is shown too).
                In the same invocation: bare_pipeline.py (N=1000, P=32) and, when its
                dependencies are installed, celery_pipeline.py (N=1000, WORKERS=4).
``latency``     100 orders with 200 ms on every mutating panel call. The panel allows one
                mutating call at a time, so it alone needs (mutating calls x 0.2 s); the
                ratio of the measured time to that bound shows what the bridge adds.
``memory``      100,000 jobs written straight into the store in batches (same rows as the
                webhook writes), their wake-ups published by the outbox relay, then ONE
                ``bridge worker`` (prefetch 32) works through them while its RSS is
                sampled every second, for ``--minutes`` or ``--jobs``, whichever comes first.

Layout (throughput and latency): this process (load generator, callback receiver, clock),
one ``bridge serve`` (HTTP, outbox relay, scheduler, callback sender), ``--workers``
``bridge worker`` processes (default 2, prefetch ``--prefetch`` 32) and the simulator in
a process of its own (bench/sim_server.py). One panel; every order is for an account of
its own, with ssl=true, so the bridge makes the baseline's four mutating calls
(add_domain, domain_issue_ssl, db_make, cronjob_add) plus one read (account_info, the
check_account step): five calls per order against the baseline's four.

Run: ``.venv/bin/python bench/pipeline.py throughput|latency|memory|all [options]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import asyncpg
from aiohttp import web
from common import (
    FERNET_KEY,
    PYTHON,
    REPO,
    BridgeConfig,
    backend_cpu_delta,
    baseline_cmd,
    baseline_env,
    bench_database,
    bridge_cmd,
    cpu_of,
    cpu_seconds,
    delete_queues,
    free_port,
    fresh_webhook_secrets,
    machine_note,
    new_prefix,
    queue_depth,
    rss_kib,
    running,
    sqlalchemy_url,
    start,
    stop,
    wait_for_port,
)
from intake import start_profiler
from loadgen import bridge_requests, order_event, run_load, run_tag

# ---------------------------------------------------------------------------------------------
# Pieces shared by the sub-benchmarks.


class CallbackCounter:
    """The billing platform's callback endpoint, reduced to counting what arrives by type."""

    def __init__(self) -> None:
        self.types: Counter[str] = Counter()
        self.last_succeeded_at = 0.0
        self._arrived = asyncio.Event()

    async def wait_for(self, succeeded: int, timeout: float) -> None:
        """Until ``succeeded`` job.succeeded callbacks have arrived, or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while self.types["job.succeeded"] < succeeded and time.monotonic() < deadline:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), deadline - time.monotonic())

    def app(self) -> web.Application:
        async def receive(request: web.Request) -> web.Response:
            body = json.loads(await request.read())
            self.types[body.get("type", "?")] += 1
            if body.get("type") == "job.succeeded":
                self.last_succeeded_at = time.perf_counter()
            self._arrived.set()
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/callback", receive)
        return app


async def serve_app(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def sim_process(port: int, run: str, count: int, latency: float = 0.0, shared_password: str | None = None):  # type: ignore[no-untyped-def]
    args = [PYTHON, str(REPO / "bench" / "sim_server.py"), "--port", str(port), "--run", run, "--count", str(count)]
    if latency:
        args += ["--latency", str(latency)]
    if shared_password:
        args += ["--shared-password", shared_password]
    return start(args)


async def sim_state(port: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/_sim/state") as response:
        return await response.json()  # type: ignore[no-any-return]


async def wait_for_consumers(prefix: str, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, consumers = await queue_depth(prefix)
        except Exception:  # the queue is declared by the first process to start
            consumers = -1
        if consumers >= count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {consumers} of {count} workers consume after {timeout}s")
        await asyncio.sleep(0.2)


async def job_counts(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("select status, count(*) as n from jobs group by status")
    return {row["status"]: int(row["n"]) for row in rows}


async def wait_until_finished(conn: asyncpg.Connection, total: int, timeout: float) -> tuple[float, dict[str, int]]:
    """Poll until ``total`` jobs are finished; (perf_counter when the last finished, counts)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = await job_counts(conn)
        finished = sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
        if finished >= total or time.monotonic() > deadline:
            return time.perf_counter(), counts
        await asyncio.sleep(0.02)


def mutating_calls(state: dict[str, Any]) -> int:
    from bridge.panel.config import MUTATING_CALLS

    return sum(n for call, n in state["counters"].items() if call in MUTATING_CALLS)


async def run_bridge_orders(args: argparse.Namespace, name: str, orders: int, latency: float) -> dict[str, Any]:
    """Post ``orders`` to a full bridge deployment and time them to the last succeeded job."""
    secret, callback_secret = fresh_webhook_secrets()
    run = run_tag()
    prefix = new_prefix(name)
    panels = getattr(args, "panels", 1)
    ports = {"serve": free_port(), "callbacks": free_port()}
    sim_ports = [free_port() for _ in range(panels)]
    receiver = CallbackCounter()
    callback_runner = await serve_app(receiver.app(), ports["callbacks"])
    origin = f"http://127.0.0.1:{ports['callbacks']}"
    try:
        async with bench_database(name) as dsn:
            config = BridgeConfig(
                database_url=sqlalchemy_url(dsn),
                prefix=prefix,
                panel_url=f"http://127.0.0.1:{sim_ports[0]}",
                panel_urls=tuple(f"http://127.0.0.1:{port}" for port in sim_ports),
                webhook_secret=secret,
                callback_secret=callback_secret,
                callback_origins=(origin,),
                http_port=ports["serve"],
                prefetch=args.prefetch,
            )
            env = config.env()
            # One simulator process per panel server, each holding every account (orders go round-robin).
            sims = [sim_process(port, run, orders, latency) for port in sim_ports]
            serve = start(bridge_cmd("serve"), env)
            workers = [start(bridge_cmd("worker"), env) for _ in range(args.workers)]
            try:
                with running(*sims, serve, *workers):
                    for port, sim in zip(sim_ports, sims, strict=True):
                        await wait_for_port(port, sim)
                    await wait_for_port(ports["serve"], serve)
                    await wait_for_consumers(prefix, args.workers)
                    requests, _ = bridge_requests(
                        secret,
                        orders,
                        run=run,
                        callback_url=f"{origin}/callback",
                        ssl=True,
                        panels=config.panel_names(),
                    )
                    conn = await asyncpg.connect(dsn)
                    database = dsn.rsplit("/", 1)[1]
                    cpu_before = [await cpu_of(p.pid, database) for p in (serve, *workers)]
                    sim_cpu_before, own_cpu_before = sum(cpu_seconds(p.pid) for p in sims), time.process_time()
                    profiler = (
                        start_profiler(workers[0].pid, REPO / "bench" / "out" / f"{name}-worker.pyspy.txt")
                        if args.profile
                        else None
                    )
                    try:
                        started = time.perf_counter()
                        posted = await run_load(
                            f"http://127.0.0.1:{ports['serve']}/webhooks/orders", requests, concurrency=32
                        )
                        posted_at = time.perf_counter()
                        finished_at, counts = await wait_until_finished(conn, orders, timeout=args.timeout)
                        await receiver.wait_for(counts.get("succeeded", 0), timeout=30)
                        calls = await conn.fetchval("select count(*) from panel_calls")
                        cpu_after = [await cpu_of(p.pid, database) for p in (serve, *workers)]
                        sim_cpu = sum(cpu_seconds(p.pid) for p in sims) - sim_cpu_before
                        own_cpu = time.process_time() - own_cpu_before
                    finally:
                        await conn.close()
                        if profiler is not None:
                            profiler.send_signal(2)
                            profiler.wait(30)
                    states = [await sim_state(port) for port in sim_ports]
                    state = {
                        "counters": dict(sum((Counter(st["counters"]) for st in states), Counter())),
                        # Per panel server: each must have seen at most one mutating call at a time.
                        "max_concurrent_mutations": max(st["max_concurrent_mutations"] for st in states),
                    }
            finally:
                await delete_queues(prefix)
    finally:
        await callback_runner.cleanup()
    elapsed = finished_at - started
    cpu = {
        "serve": cpu_after[0][0] - cpu_before[0][0],
        "workers": sum(after[0] - before[0] for before, after in zip(cpu_before[1:], cpu_after[1:], strict=True)),
        "postgres": backend_cpu_delta(cpu_before[-1][1], cpu_after[-1][1]),
        "simulator": sim_cpu,
        "load+callbacks": own_cpu,
    }
    return {
        "cpu_ms_per_order": {k: v * 1000 / orders for k, v in cpu.items()},
        "orders": orders,
        "accepted": posted.statuses[202],
        "post_s": posted_at - started,
        "elapsed_s": elapsed,
        "orders_per_s": orders / elapsed,
        "counts": counts,
        "callbacks": dict(receiver.types),
        "last_callback_s": receiver.last_succeeded_at - started if receiver.last_succeeded_at else float("nan"),
        "panel_calls": calls,
        "mutating_calls": mutating_calls(state),
        "sim_counters": state["counters"],
        "max_concurrent_mutations": state["max_concurrent_mutations"],
    }


def describe_bridge(result: dict[str, Any]) -> list[str]:
    return [
        f"  {result['accepted']} accepted (posting took {result['post_s']:.2f} s), jobs {result['counts']}",
        f"  last job succeeded after {result['elapsed_s']:.2f} s; last job.succeeded callback after "
        f"{result['last_callback_s']:.2f} s; callbacks {result['callbacks']}",
        f"  panel calls recorded {result['panel_calls']}, simulator counters {result['sim_counters']}, "
        f"max concurrent mutations {result['max_concurrent_mutations']}",
        "  CPU per order: " + ", ".join(f"{k} {v:.1f} ms" for k, v in result["cpu_ms_per_order"].items()),
    ]


async def run_baseline(program: str, env: dict[str, str], pattern: str, timeout: float) -> tuple[float | None, str]:
    proc = await asyncio.create_subprocess_exec(
        *baseline_cmd(program), env=env, cwd=str(REPO), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None, f"{program}: timed out after {timeout}s"
    text = out.decode() + err.decode()
    lines = [line for line in text.splitlines() if re.search(pattern, line)]
    if not lines:
        return None, f"{program}: no figure in its output: {text.strip()[-500:]}"
    return float(re.search(pattern, lines[-1]).group(1)), lines[-1]  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# (a) throughput


async def throughput(args: argparse.Namespace) -> None:
    print(
        f"\n== throughput: {args.orders} orders; bridge: 1 serve + {args.workers} worker(s), prefetch "
        f"{args.prefetch}, {args.panels} panel(s), a simulator process each, without latency; {machine_note()}"
    )
    rounds: list[dict[str, float | None]] = []
    for number in range(args.rounds):
        figures: dict[str, float | None] = {}
        bridge = await run_bridge_orders(args, "pipeline", args.orders, 0.0)
        figures["bridge"] = bridge["orders_per_s"]
        print(f" round {number + 1}: bridge {bridge['orders_per_s']:.0f} orders/s")
        for line in describe_bridge(bridge):
            print(line)
        async with bench_database("pipeline_bare", bridge_schema=False) as dsn:
            env = baseline_env(PG_DSN=dsn, N=str(args.orders), P="32")
            figures["bare"], line = await run_baseline("bare_pipeline.py", env, r"([0-9.]+) orders/s", 600)
            print(f"  {line}")
            if not args.no_celery:
                env = baseline_env(
                    PG_DSN=dsn, N=str(args.orders), WORKERS="4", PANEL_URL=f"http://127.0.0.1:{free_port()}"
                )
                figures["celery"], line = await run_baseline("celery_pipeline.py", env, r"([0-9.]+) orders/s", 900)
                print(f"  {line}")
        rounds.append(figures)
    print("\norders/s (median over rounds):")
    for name in rounds[0]:
        values = [r[name] for r in rounds if r[name] is not None]
        print(f"  {name:<8} {statistics.median(values):6.0f}" if values else f"  {name:<8} (did not run)")
    ratios = [r["bridge"] / r["bare"] for r in rounds if r["bridge"] and r["bare"]]
    if ratios:
        ratio = statistics.median(ratios)
        print(f"  ratio bridge/bare_pipeline   {ratio:.2f}  (target >= 0.4: {'met' if ratio >= 0.4 else 'NOT met'})")
    peer = [r["bridge"] / r["celery"] for r in rounds if r["bridge"] and r.get("celery")]
    if peer:
        ratio = statistics.median(peer)
        print(
            f"  ratio bridge/celery_pipeline {ratio:.2f}  (the bridge should beat its peer: "
            f"{'yes' if ratio > 1 else 'NO'})"
        )


# ---------------------------------------------------------------------------------------------
# (b) latency


async def latency(args: argparse.Namespace) -> None:
    orders = args.latency_orders
    print(
        f"\n== latency: {orders} orders, {args.latency_s * 1000:.0f} ms on every mutating panel call; "
        f"bridge: 1 serve + {args.workers} worker(s), prefetch {args.prefetch}; {machine_note()}"
    )
    result = await run_bridge_orders(args, "pipeline_latency", orders, args.latency_s)
    for line in describe_bridge(result):
        print(line)
    bound = result["mutating_calls"] * args.latency_s
    ratio = result["elapsed_s"] / bound
    print(f"  {result['mutating_calls']} mutating calls x {args.latency_s} s = {bound:.1f} s is the panel's own bound")
    print(f"  measured {result['elapsed_s']:.1f} s (first POST to last succeeded job)")
    print(f"  ratio measured/bound {ratio:.3f}  (target <= 1.2: {'met' if ratio <= 1.2 else 'NOT met'})")


# ---------------------------------------------------------------------------------------------
# (c) memory


SHARED_PASSWORD = "Acct-Shared-Passw0rd"


async def insert_jobs(database_url: str, run: str, count: int, batch: int = 2000) -> float:
    """Write ``count`` accepted jobs (event, job, steps, unsent outbox row) in batches; seconds taken.

    The rows are those the webhook writes for bench/loadgen.py's orders; secrets are
    encrypted once (every account shares a password here) so inserting is not dominated
    by encryption.
    """
    import uuid

    from sqlalchemy import insert

    from bridge.domain.events import parse_event
    from bridge.domain.jobs import JobStatus, StepStatus, plan
    from bridge.store import tables as t
    from bridge.store.crypto import SecretBox
    from bridge.store.database import create_engine
    from bridge.store.types import utcnow

    box = SecretBox([FERNET_KEY])
    template = order_event(0, run)
    template["data"]["account"]["password"] = SHARED_PASSWORD
    event = parse_event(template)
    payload = box.encrypt_fields(event.model_dump(mode="json"))
    steps = [(step.kind.value, box.encrypt_fields(step.params)) for step in plan(event)]
    password = box.encrypt(SHARED_PASSWORD)
    user0, domain0 = template["data"]["account"]["username"], template["data"]["domain"]

    def personal(value: Any, n: int) -> Any:
        # The template's account and domain, made order n's (secrets stay as encrypted once).
        if isinstance(value, dict):
            return {k: personal(v, n) for k, v in value.items()}
        if isinstance(value, list):
            return [personal(v, n) for v in value]
        if isinstance(value, str) and not value.startswith("fernet:"):
            return value.replace(domain0, f"site{n}.r{run}.example.com").replace(user0, f"u{run}{n}")
        return value

    engine = create_engine(database_url)
    started = time.perf_counter()
    try:
        for first in range(0, count, batch):
            numbers = range(first, min(count, first + batch))
            now = utcnow()
            async with engine.begin() as conn:
                event_ids = (
                    (
                        await conn.execute(
                            insert(t.events).returning(t.events.c.id, sort_by_parameter_order=True),
                            [
                                {
                                    "webhook_id": f"msg_{run}_{n}",
                                    "type": "service.create",
                                    "payload": personal(payload, n),
                                    "received_at": now,
                                }
                                for n in numbers
                            ],
                        )
                    )
                    .scalars()
                    .all()
                )
                public_ids = [str(uuid.uuid4()) for _ in numbers]
                job_ids = (
                    (
                        await conn.execute(
                            insert(t.jobs).returning(t.jobs.c.id, sort_by_parameter_order=True),
                            [
                                {
                                    "public_id": public_id,
                                    "event_id": event_id,
                                    "webhook_id": f"msg_{run}_{n}",
                                    "type": "service.create",
                                    "service_id": f"svc-{run}-{n}",
                                    "panel": "default",
                                    "domain": f"site{n}.r{run}.example.com",
                                    "account_username": f"u{run}{n}",
                                    "account_password": password,
                                    "callback_url": None,
                                    "status": JobStatus.ACCEPTED,
                                    "next_run_at": now,
                                    "enqueued_at": now,
                                    "cancel_requested": False,
                                    "created_at": now,
                                    "updated_at": now,
                                }
                                for n, public_id, event_id in zip(numbers, public_ids, event_ids, strict=True)
                            ],
                        )
                    )
                    .scalars()
                    .all()
                )
                await conn.execute(
                    insert(t.steps),
                    [
                        {
                            "job_id": job_id,
                            "position": position,
                            "kind": kind,
                            "params": personal(params, n),
                            "status": StepStatus.PENDING,
                            "attempts": 0,
                            "in_flight": False,
                            "updated_at": now,
                        }
                        for n, job_id in zip(numbers, job_ids, strict=True)
                        for position, (kind, params) in enumerate(steps)
                    ],
                )
                await conn.execute(
                    insert(t.outbox),
                    [{"job_public_id": public_id, "delay_s": 0.0, "created_at": now} for public_id in public_ids],
                )
    finally:
        await engine.dispose()
    return time.perf_counter() - started


async def publish_outbox(database_url: str, prefix: str) -> tuple[int, float]:
    """Publish every unsent outbox row with the bridge's own relay; (count, seconds)."""
    from common import AMQP_URL

    from bridge.bootstrap import make_queue
    from bridge.metrics import Metrics
    from bridge.relay import OutboxRelay
    from bridge.settings import Settings
    from bridge.store.database import create_engine

    settings = Settings(database_url=database_url, amqp_url=AMQP_URL, amqp_prefix=prefix)
    queue = make_queue(settings)
    engine = create_engine(database_url)
    started = time.perf_counter()
    try:
        await queue.start()
        relay = OutboxRelay(engine, queue, Metrics(), batch_size=1000)
        published = await relay.drain()
    finally:
        await queue.close()
        await engine.dispose()
    return published, time.perf_counter() - started


async def memory(args: argparse.Namespace) -> None:
    count = args.memory_jobs
    print(
        f"\n== memory: {count} queued jobs, one bridge worker, prefetch {args.prefetch}; sampling RSS every "
        f"second for at most {args.minutes} min or {args.jobs} finished jobs; {machine_note()}"
    )
    run = run_tag()
    prefix = new_prefix("memory")
    sim_port = free_port()
    secret, callback_secret = fresh_webhook_secrets()
    async with bench_database("memory") as dsn:
        url = sqlalchemy_url(dsn)
        config = BridgeConfig(
            database_url=url,
            prefix=prefix,
            panel_url=f"http://127.0.0.1:{sim_port}",
            webhook_secret=secret,
            callback_secret=callback_secret,
            prefetch=args.prefetch,
        )
        sim = sim_process(sim_port, run, count, shared_password=SHARED_PASSWORD)
        worker: subprocess.Popen[bytes] | None = None
        try:
            with running(sim):
                seconds = await insert_jobs(url, run, count)
                print(
                    f"  inserted {count} jobs directly through the store's tables in batches of 2000: "
                    f"{seconds:.1f} s ({count / seconds:.0f} jobs/s)"
                )
                published, seconds = await publish_outbox(url, prefix)
                print(f"  outbox relay published {published} wake-ups: {seconds:.1f} s ({published / seconds:.0f}/s)")
                ready, _ = await queue_depth(prefix)
                print(f"  work queue holds {ready} messages (wake-ups due now travel up to 16 to a message)")
                await wait_for_port(sim_port, sim, timeout=120)
                worker = start(bridge_cmd("worker"), config.env())
                samples = await sample_worker(worker, dsn, args)
                trimmed = trim_heap(worker.pid) if args.trim else None
                stop(worker)
        finally:
            if worker is not None:
                stop(worker)
            await delete_queues(prefix)
    report_memory(samples)
    if trimmed is not None:
        before, after = trimmed
        print(
            f"  malloc_trim(0) in the worker at the end: RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB "
            f"({(after - before) / 1024:+.1f}): what the allocator held free, not live data"
        )


def trim_heap(pid: int) -> tuple[int, int] | None:
    """RSS (KiB) before and after glibc's malloc_trim(0) in ``pid``, called through gdb; None without gdb.

    Tells memory the allocator keeps after it was freed apart from memory still in use:
    what the trim gives back to the system was free.
    """
    if shutil.which("gdb") is None:
        print("  --trim: gdb not found, no trim")
        return None
    before = rss_kib(pid)
    subprocess.run(
        ["gdb", "-p", str(pid), "-batch", "-ex", "call (int) malloc_trim(0)"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    return before, rss_kib(pid)


async def sample_worker(
    worker: subprocess.Popen[bytes], dsn: str, args: argparse.Namespace
) -> list[tuple[float, int, int]]:
    """(seconds since start, RSS KiB, finished jobs) every second until the time or job budget is spent."""
    samples: list[tuple[float, int, int]] = []
    conn = await asyncpg.connect(dsn)
    started = time.monotonic()
    try:
        while worker.poll() is None:
            elapsed = time.monotonic() - started
            done = await conn.fetchval("select count(*) from jobs where finished_at is not null")
            samples.append((elapsed, rss_kib(worker.pid), int(done)))
            if elapsed > args.minutes * 60 or done >= args.jobs:
                break
            await asyncio.sleep(max(0.0, len(samples) - (time.monotonic() - started)))
    finally:
        await conn.close()
    return samples


def report_memory(samples: list[tuple[float, int, int]]) -> None:
    if len(samples) < 5:
        print("  too few samples")
        return
    # "Start" is taken once the worker runs jobs (imports and connections made), after 10 s.
    settled = [s for s in samples if s[0] >= 10] or samples
    first, last = settled[0], samples[-1]
    peak = max(samples, key=lambda s: s[1])
    minute = [s[1] for s in settled if s[0] >= samples[-1][0] - 60]
    print(f"  samples: {len(samples)} over {last[0]:.0f} s; jobs finished {last[2]} ({last[2] / last[0]:.0f}/s)")
    print(
        f"  RSS at 10 s {first[1] / 1024:.1f} MiB ({first[2]} jobs done), peak {peak[1] / 1024:.1f} MiB "
        f"at {peak[0]:.0f} s, end {last[1] / 1024:.1f} MiB"
    )
    growth = (last[1] - first[1]) / 1024
    per_k = growth / max(1, (last[2] - first[2]) / 1000)
    print(
        f"  growth from 10 s to the end: {growth:+.1f} MiB over {last[2] - first[2]} jobs "
        f"({per_k:+.2f} MiB per 1000 jobs); "
        f"last minute min/max {min(minute) / 1024:.1f}/{max(minute) / 1024:.1f} MiB"
    )
    flat = growth < 10 and peak[1] - first[1] < 15 * 1024
    print(f"  flat: {'yes' if flat else 'NO'} (flat = under 10 MiB growth and under 15 MiB above the settled start)")
    step = max(1, len(samples) // 12)
    print("  trace (s, MiB, jobs): " + ", ".join(f"{s[0]:.0f}:{s[1] / 1024:.1f}:{s[2]}" for s in samples[::step]))


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=("throughput", "latency", "memory", "all"))
    parser.add_argument("--workers", type=int, default=2, help="bridge worker processes (throughput, latency)")
    parser.add_argument("--prefetch", type=int, default=32)
    parser.add_argument("--orders", type=int, default=1000, help="orders in the throughput run")
    parser.add_argument("--rounds", type=int, default=1, help="throughput rounds (bridge, bare, celery each)")
    parser.add_argument("--no-celery", action="store_true")
    parser.add_argument(
        "--panels", type=int, default=1, help="throughput: panel servers (a simulator process each); orders round-robin"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the first worker (bench/out/)")
    parser.add_argument("--timeout", type=float, default=600, help="give up waiting for the jobs after this long")
    parser.add_argument("--latency-orders", type=int, default=100)
    parser.add_argument("--latency-s", type=float, default=0.2)
    parser.add_argument("--memory-jobs", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=4.0, help="memory: stop sampling after this long")
    parser.add_argument("--jobs", type=int, default=30_000, help="memory: stop sampling after this many jobs")
    parser.add_argument(
        "--trim", action="store_true", help="memory: at the end, call malloc_trim(0) in the worker (gdb) and report RSS"
    )
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    if args.which in ("throughput", "all"):
        await throughput(args)
    if args.which in ("latency", "all"):
        await latency(args)
    if args.which in ("memory", "all"):
        await memory(args)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
