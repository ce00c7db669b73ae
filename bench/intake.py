"""Intake throughput: ``bridge serve`` against bare_intake.py (MODE=pg and MODE=pgmq).

Three servers, one process each, all started by this program:

- ``bridge serve`` on PostgreSQL + RabbitMQ (database ``bench_intake``, its own
  queue prefix, one panel configured but never called at intake, log level
  WARNING). Its one process also runs the outbox relay, the scheduler and the
  callback sender, as in production;
- ``bare_intake.py`` MODE=pg and MODE=pgmq (database ``bench_intake_bare``).

The same load generator (bench/loadgen.py, this process) drives each in turn,
round after round, so drift on a shared machine hits all three alike; the
ratios are taken within each round and their median is reported. After the
run it checks that every accepted event has exactly one job and that the
outbox has been published, then drops the databases and deletes the queues.

Run: ``.venv/bin/python bench/intake.py [--rounds 3] [--requests 6000] [--profile]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aio_pika
import asyncpg
from common import (
    AMQP_URL,
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
    running,
    sqlalchemy_url,
    start,
    take_wake_ups,
    wait_for_port,
)
from loadgen import Result, bare_requests, bridge_requests, order_event, run_load, run_tag

from bridge.domain.events import parse_event
from bridge.web import json_body

TARGETS = {"ratio bridge/pg": (0.7, ">="), "ratio bridge/pgmq": (1.2, ">="), "p99 bridge / p99 pg": (2.0, "<=")}


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def broker_pids() -> list[int]:
    """RabbitMQ's Erlang VM, when it runs on this machine (its CPU is shown per request too)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "beam.smp":
                    pids.append(int(entry.name))
    return pids


def others_cpu_s(brokers: list[int]) -> tuple[float, float, float]:
    """(machine busy, broker, this load generator) CPU seconds so far."""
    broker = 0.0
    for pid in brokers:
        with contextlib.suppress(OSError):
            broker += cpu_seconds(pid)
    return machine_busy_s(), broker, cpu_seconds(os.getpid())


def verdict(name: str, value: float) -> str:
    target, sense = TARGETS[name]
    met = value >= target if sense == ">=" else value <= target
    return f"{name:<22} {value:5.2f}   (target {sense} {target}: {'met' if met else 'NOT met'})"


async def check_bridge_store(dsn: str, prefix: str, accepted: int) -> list[str]:
    """Every accepted event has exactly one job; the outbox drains; the queue holds one wake-up per job
    (taken from it: this is the end of the run)."""
    lines = []
    conn = await asyncpg.connect(dsn)
    try:
        events = await conn.fetchval("select count(*) from events")
        jobs = await conn.fetchval("select count(*) from jobs")
        not_one = await conn.fetchval(
            "select count(*) from events e where (select count(*) from jobs j where j.event_id = e.id) <> 1"
        )
        lines.append(
            f"accepted (202) {accepted}, events {events}, jobs {jobs}, events without exactly one job {not_one}"
        )
        started = time.monotonic()
        unsent = await conn.fetchval("select count(*) from outbox where sent_at is null")
        first_unsent = unsent
        while unsent and time.monotonic() - started < 30:
            await asyncio.sleep(0.2)
            unsent = await conn.fetchval("select count(*) from outbox where sent_at is null")
        lines.append(
            f"outbox: {first_unsent} unsent right after the load, {unsent} after "
            f"{time.monotonic() - started:.1f} s of drain"
        )
    finally:
        await conn.close()
    _, consumers = await queue_depth(prefix)
    messages, wake_ups = await take_wake_ups(prefix)
    lines.append(
        f"work queue {prefix}.jobs: {messages} messages waiting (no worker runs here), {consumers} consumers, "
        f"carrying {sum(wake_ups.values())} wake-ups for {len(wake_ups)} jobs"
    )
    ok = accepted == events == jobs and not_one == 0 and unsent == 0 and set(wake_ups.values()) == {1}
    ok = ok and len(wake_ups) == jobs
    lines.append("store check: " + ("OK" if ok else "MISMATCH"))
    return lines


async def purge_bare_queue() -> None:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue("bare_events", durable=True)
        await queue.purge()
    finally:
        await connection.close()


def start_profiler(pid: int, out: Path, seconds: int = 600) -> subprocess.Popen[bytes] | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy not found; no profile taken")
        return None
    out.parent.mkdir(exist_ok=True)
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "-p",
            str(pid),
            "-d",
            str(seconds),
            "-r",
            "200",
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def main(args: argparse.Namespace) -> None:
    note = machine_note()
    secret, callback_secret = fresh_webhook_secrets()
    prefix = new_prefix("intake")
    async with bench_database("intake") as bridge_dsn, bench_database("intake_bare", bridge_schema=False) as bare_dsn:
        ports = {"bridge": free_port(), "pg": free_port(), "pgmq": free_port()}
        config = BridgeConfig(
            database_url=sqlalchemy_url(bridge_dsn),
            prefix=prefix,
            panel_url="http://127.0.0.1:9",  # never called at intake
            webhook_secret=secret,
            callback_secret=callback_secret,
            http_port=ports["bridge"],
        )
        serve = bridge_cmd("serve")
        if args.uvloop:
            # The same CLI, on uvloop's event loop (as the baselines run), to measure what the loop costs.
            serve = [
                serve[0],
                "-c",
                "import sys, uvloop; uvloop.install(); from bridge.cli import main; sys.exit(main(['serve']))",
            ]
        procs = {"bridge": start(serve, config.env())}
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(running(procs["bridge"]))
                for mode in ("pg", "pgmq"):
                    if mode in args.targets:
                        env = baseline_env(MODE=mode, PG_DSN=bare_dsn, PORT=str(ports[mode]))
                        procs[mode] = start(baseline_cmd("bare_intake.py"), env)
                        stack.enter_context(running(procs[mode]))
                        # One at a time: both create the same table at start, and two
                        # concurrent CREATE TABLE IF NOT EXISTS can collide.
                        await wait_for_port(ports[mode], procs[mode])
                await wait_for_port(ports["bridge"], procs["bridge"])
                await asyncio.sleep(1.0)
                urls = {
                    "bridge": f"http://127.0.0.1:{ports['bridge']}/webhooks/orders",
                    "pg": f"http://127.0.0.1:{ports['pg']}/hook",
                    "pgmq": f"http://127.0.0.1:{ports['pgmq']}/hook",
                }
                rounds: list[dict[str, Result]] = []
                brokers = broker_pids()
                accepted = 0
                signing: list[float] = []
                print(
                    f"intake: concurrency {args.concurrency}, {args.requests} measured requests per target per round "
                    f"after {args.warmup} warm-up; {args.rounds} rounds; {note}"
                )
                for number in range(args.rounds):
                    results: dict[str, Result] = {}
                    for name in procs:
                        total = args.requests + args.warmup
                        if name == "bridge":
                            requests, per_request = bridge_requests(secret, total)
                            signing.append(per_request)
                        else:
                            requests = bare_requests(total)
                        profiler = None
                        if args.profile and name == "bridge" and number == args.rounds - 1:
                            out = REPO / "bench" / "out" / "intake-serve.pyspy.txt"
                            out.parent.mkdir(exist_ok=True)
                            profiler = start_profiler(procs["bridge"].pid, out)
                        database = dbname(bridge_dsn if name == "bridge" else bare_dsn)
                        # CPU is counted over the whole call (warm-up included), per request sent.
                        cpu_before = await cpu_of(procs[name].pid, database)
                        others_before = others_cpu_s(brokers)
                        result = await run_load(
                            urls[name], requests, concurrency=args.concurrency, warmup=args.warmup, label=name
                        )
                        cpu_after = await cpu_of(procs[name].pid, database)
                        others_after = others_cpu_s(brokers)
                        result.cpu_ms = (  # type: ignore[attr-defined]
                            (cpu_after[0] - cpu_before[0]) * 1000 / total,
                            backend_cpu_delta(cpu_before[1], cpu_after[1]) * 1000 / total,
                            *(
                                (after - before) * 1000 / total
                                for before, after in zip(others_before, others_after, strict=True)
                            ),
                        )
                        if profiler is not None:
                            profiler.send_signal(2)  # SIGINT: py-spy writes what it has
                            profiler.wait(30)
                            print(f"profile of the serve process written to {out}")
                        if name == "bridge":
                            accepted += result.statuses[202] + (result.warmup.statuses[202] if result.warmup else 0)
                        results[name] = result
                        server_ms, pg_ms, machine_ms, broker_ms, loadgen_ms = result.cpu_ms  # type: ignore[attr-defined]
                        print(
                            f"  round {number + 1}: {result.line()}  CPU/request: server {server_ms:.2f} ms, "
                            f"postgres {pg_ms:.2f} ms, broker {broker_ms:.2f} ms, load generator {loadgen_ms:.2f} ms, "
                            f"whole machine {machine_ms:.2f} ms"
                        )
                        await asyncio.sleep(0.5)
                    rounds.append(results)
                per_request = statistics.median(signing) * 1e6
                print(f"signing cost (done before the clock starts): {per_request:.0f} µs per request")
                print(f"parsing and checking one order as the webhook does (in this process): {checking_us():.0f} µs")
                summarise(rounds)
                for line in await check_bridge_store(bridge_dsn, prefix, accepted):
                    print(line)
        finally:
            await delete_queues(prefix)
            if "pgmq" in procs:
                await purge_bare_queue()


def checking_us(repeat: int = 5, number: int = 2000) -> float:
    """What the webhook spends on one of the benchmark's orders between its signature and its store:
    JSON and the domain's checks (best of ``repeat``, so other load counts least)."""
    body = json.dumps(order_event(1, run_tag())).encode()
    best = min(timeit.repeat(lambda: parse_event(json_body.loads(body)), repeat=repeat, number=number))
    return best / number * 1e6


def dbname(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1]


def summarise(rounds: list[dict[str, Result]]) -> None:
    names = list(rounds[0])
    print()
    print(f"medians over {len(rounds)} rounds; CPU in ms per request")
    print(
        f"{'target':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'server':>8} {'postgres':>9} {'broker':>8}"
        f" {'loadgen':>8} {'machine':>8}"
    )
    for name in names:
        rps = statistics.median(r[name].rps for r in rounds)
        p50 = statistics.median(r[name].p50_ms for r in rounds)
        p99 = statistics.median(r[name].p99_ms for r in rounds)
        cpu = [statistics.median(r[name].cpu_ms[i] for r in rounds) for i in range(5)]  # type: ignore[attr-defined]
        server, pg, machine, broker, loadgen = cpu
        print(
            f"{name:<10} {rps:8.0f} {p50:8.1f} {p99:8.1f} {server:8.2f} {pg:9.2f} {broker:8.2f} {loadgen:8.2f}"
            f" {machine:8.2f}"
        )
    print()
    if "pg" in names:
        print(verdict("ratio bridge/pg", statistics.median(r["bridge"].rps / r["pg"].rps for r in rounds)))
    if "pgmq" in names:
        print(verdict("ratio bridge/pgmq", statistics.median(r["bridge"].rps / r["pgmq"].rps for r in rounds)))
    if "pg" in names:
        print(verdict("p99 bridge / p99 pg", statistics.median(r["bridge"].p99_ms / r["pg"].p99_ms for r in rounds)))
    print("(ratios: median of the per-round ratios, each round driving every target with the same load generator)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=6000, help="measured requests per target per round")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--targets", nargs="+", default=["bridge", "pg", "pgmq"], choices=["bridge", "pg", "pgmq"])
    parser.add_argument("--uvloop", action="store_true", help="run bridge serve on uvloop (as the baselines do)")
    parser.add_argument("--profile", action="store_true", help="py-spy the serve process during the last bridge round")
    args = parser.parse_args()
    if "bridge" not in args.targets:
        parser.error("the bridge is always measured")
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
