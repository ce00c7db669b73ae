"""What every benchmark needs: a database and a queue prefix of its own, the
bridge's environment, child processes, free ports, and the baselines' location.

Benchmarks are programs run by hand, never tests: they print figures and ratios
and assert nothing about timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import asyncpg

from bridge.broker.rabbitmq import RabbitQueue
from bridge.secrets_gen import new_secrets
from bridge.store.database import migrate

REPO = Path(__file__).resolve().parent.parent
BASELINES = Path(os.environ.get("BENCH_BASELINES", "/work/shared/bench"))
PG_ADMIN_DSN = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PYTHON = sys.executable


def dsn_for(name: str) -> str:
    """The plain libpq DSN of database ``name`` on the benchmark's server."""
    return PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name


def sqlalchemy_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s") from None
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def bench_database(name: str, *, bridge_schema: bool = True) -> AsyncIterator[str]:
    """A fresh database ``bench_<name>`` (migrated to the bridge's schema unless told), dropped afterwards."""
    db = f"bench_{name}"
    admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{db}"')
    finally:
        await admin.close()
    dsn = dsn_for(db)
    try:
        if bridge_schema:
            await migrate(sqlalchemy_url(dsn))
        yield dsn
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        finally:
            await admin.close()


def new_prefix(name: str) -> str:
    return f"bench_{name}_{uuid.uuid4().hex[:6]}"


async def delete_queues(prefix: str) -> None:
    """Remove every queue a RabbitQueue with ``prefix`` declares (the bridge's default delay buckets)."""
    from bridge.bootstrap import DELAY_BUCKETS_S

    names = RabbitQueue(AMQP_URL, prefix=prefix, delay_buckets_s=DELAY_BUCKETS_S).names.all
    connection = await aio_pika.connect(AMQP_URL)
    try:
        for name in names:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
            with contextlib.suppress(Exception):
                await channel.close()
    finally:
        await connection.close()


async def queue_depth(prefix: str) -> tuple[int, int]:
    """(messages ready, consumers) of the bridge's work queue."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{prefix}.jobs", passive=True)
        result = queue.declaration_result
        return int(result.message_count or 0), int(result.consumer_count or 0)
    finally:
        await connection.close()


async def take_wake_ups(prefix: str) -> tuple[int, Counter[str]]:
    """Empty the bridge's work queue: (messages taken, how often each job id was in them)."""
    from bridge.broker.rabbitmq import wake_up_ids

    messages, ids = 0, Counter[str]()
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{prefix}.jobs", passive=True)
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            messages += 1
            ids.update(wake_up_ids(message.body))
    finally:
        await connection.close()
    return messages, ids


@dataclass(frozen=True)
class BridgeConfig:
    """What the bridge's processes are started with."""

    database_url: str  # SQLAlchemy URL
    prefix: str
    panel_url: str
    webhook_secret: str
    callback_secret: str
    callback_origins: tuple[str, ...] = ()
    http_port: int = 0
    prefetch: int = 32
    panels: int = 1
    # One URL per panel server; when empty, every panel is at panel_url.
    panel_urls: tuple[str, ...] = ()

    def panel_names(self) -> list[str]:
        count = len(self.panel_urls) or self.panels
        return ["default"] + [f"panel{n}" for n in range(1, count)]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        secrets = new_secrets()
        panels = [
            {"name": name, "url": url, "timeout_s": 30.0, "read_timeout_s": 15.0, "ssl_timeout_s": 30.0}
            for name, url in zip(self.panel_names(), self.panel_urls or [self.panel_url] * self.panels, strict=True)
        ]
        env.update(
            BRIDGE_DATABASE_URL=self.database_url,
            BRIDGE_AMQP_URL=AMQP_URL,
            BRIDGE_AMQP_PREFIX=self.prefix,
            BRIDGE_WEBHOOK_SECRETS=self.webhook_secret,
            BRIDGE_CALLBACK_SECRET=self.callback_secret,
            BRIDGE_CALLBACK_ALLOWED_ORIGINS=",".join(self.callback_origins),
            BRIDGE_ADMIN_TOKENS=secrets["BRIDGE_ADMIN_TOKENS"],
            BRIDGE_SECRET_KEY=FERNET_KEY,
            BRIDGE_PANELS=json.dumps(panels),
            BRIDGE_HTTP_HOST="127.0.0.1",
            BRIDGE_HTTP_PORT=str(self.http_port),
            BRIDGE_WORKER_PREFETCH=str(self.prefetch),
            BRIDGE_WORKER_METRICS_PORT="0",  # any free port: several workers share this host
            BRIDGE_LOG_LEVEL="WARNING",
            BRIDGE_SHUTDOWN_GRACE_S="5",
        )
        return env


# One key per benchmark run, shared by the bench (which may write rows itself) and the bridge.
FERNET_KEY = new_secrets()["BRIDGE_SECRET_KEY"]


def fresh_webhook_secrets() -> tuple[str, str]:
    secrets = new_secrets()
    return secrets["BRIDGE_WEBHOOK_SECRETS"], secrets["BRIDGE_CALLBACK_SECRET"]


def start(args: list[str], env: dict[str, str] | None = None, *, quiet: bool = True) -> subprocess.Popen[bytes]:
    """A child process in its own process group (so stopping it stops its children too)."""
    return subprocess.Popen(
        args,
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL if quiet else None,
        stderr=None,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; only this process's own group."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def running(*procs: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in reversed(procs):
            stop(proc)


def bridge_cmd(*args: str) -> list[str]:
    return [PYTHON, "-m", "bridge.cli", *args]


def baseline_cmd(program: str) -> list[str]:
    return [PYTHON, str(BASELINES / program)]


def baseline_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["AMQP_URL"] = AMQP_URL
    env.update(extra)
    return env


def machine_note() -> str:
    load = os.getloadavg()
    return (
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        f"load average before the run {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
    )


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (from /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far, in seconds (from /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def backend_pids(database: str) -> list[int]:
    """The PostgreSQL server processes serving ``database`` right now."""
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        rows = await conn.fetch(
            "select pid from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()", database
        )
    finally:
        await conn.close()
    return [int(row["pid"]) for row in rows]


async def cpu_of(pid: int, database: str | None) -> tuple[float, dict[int, float]]:
    """(CPU seconds of ``pid``, CPU seconds by PostgreSQL backend serving ``database``)."""
    own = cpu_seconds(pid)
    backends: dict[int, float] = {}
    for backend in await backend_pids(database) if database else []:
        with contextlib.suppress(OSError):
            backends[backend] = cpu_seconds(backend)
    return own, backends


def backend_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the backends used between two readings (a backend gone by the second is not counted)."""
    return sum(used - before.get(pid, 0.0) for pid, used in after.items())
