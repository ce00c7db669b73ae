"""One load generator for the bridge and for the baselines alike.

Every request is built (and, for the bridge, signed) before the clock starts, so
both sides see the same client: ``concurrency`` connections kept alive, each
sending its next request as soon as the previous answer arrived. The first
``warmup`` requests are sent the same way but not measured.

Alone: ``python bench/loadgen.py --url http://127.0.0.1:8099/hook --kind bare -n 5000``
or ``--kind bridge --secret whsec_...`` (the bridge's BRIDGE_WEBHOOK_SECRETS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bridge.webhooks.signature import sign

JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Request:
    body: bytes
    headers: dict[str, str]


@dataclass
class Result:
    """What one measured phase saw."""

    label: str
    elapsed_s: float
    latencies_s: list[float]
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    warmup: Result | None = None

    @property
    def count(self) -> int:
        return len(self.latencies_s)

    @property
    def rps(self) -> float:
        return self.count / self.elapsed_s if self.elapsed_s else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    @property
    def p50_ms(self) -> float:
        return self.percentile(0.50) * 1000

    @property
    def p99_ms(self) -> float:
        return self.percentile(0.99) * 1000

    def line(self) -> str:
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        return (
            f"{self.label:<14} {self.rps:8.0f} req/s   p50 {self.p50_ms:6.1f} ms   p99 {self.p99_ms:6.1f} ms"
            f"   ({self.count} requests; {codes}; errors {self.errors})"
        )


def order_event(
    n: int, run: str, *, callback_url: str | None = None, ssl: bool = True, panel: str = "default"
) -> dict[str, Any]:
    """A ``service.create`` for account ``u<run><n>``: its own account, domain, database and cron job."""
    user = f"u{run}{n}"
    data: dict[str, Any] = {
        "service_id": f"svc-{run}-{n}",
        "panel": panel,
        "account": {"username": user, "password": f"Acct-Passw0rd-{n}"},
        "domain": f"site{n}.r{run}.example.com",
        "php_version": "8.2",
        "ssl": ssl,
        "databases": [{"name": "wp", "user": "wpuser", "password": f"Db-Secret-Passw0rd-{n}!"}],
        "cron_jobs": [
            {
                "minute": "*/5",
                "hour": "*",
                "day": "*",
                "month": "*",
                "weekday": "*",
                "command": f"/usr/bin/php /home/{user}/public_html/cron.php",
            }
        ],
    }
    if callback_url:
        data["callback_url"] = callback_url
    return {"type": "service.create", "data": data}


def run_tag() -> str:
    """A short tag that keeps this run's accounts, ids and domains apart from other runs'."""
    return uuid.uuid4().hex[:6]


def bridge_requests(
    secret: str,
    count: int,
    *,
    run: str | None = None,
    callback_url: str | None = None,
    ssl: bool = True,
    panels: list[str] | None = None,
) -> tuple[list[Request], float]:
    """``count`` signed orders with unique webhook ids (round-robin over ``panels``), and the time
    spent signing one (seconds)."""
    run = run or run_tag()
    now = int(time.time())
    names = panels or ["default"]
    bodies = [
        json.dumps(order_event(n, run, callback_url=callback_url, ssl=ssl, panel=names[n % len(names)])).encode()
        for n in range(count)
    ]
    started = time.perf_counter()
    requests = [Request(body, {**sign(secret, f"msg_{run}_{n}", now, body), **JSON}) for n, body in enumerate(bodies)]
    return requests, (time.perf_counter() - started) / max(count, 1)


def bare_requests(count: int, *, run: str | None = None) -> list[Request]:
    """Bodies for bare_intake.py: a unique ``id`` plus the same order, so the sizes match."""
    run = run or run_tag()
    return [
        Request(json.dumps({"id": f"msg_{run}_{n}", **order_event(n, run)}).encode(), dict(JSON)) for n in range(count)
    ]


async def _send_all(
    session: aiohttp.ClientSession, url: str, requests: Sequence[Request], concurrency: int, label: str
) -> Result:
    result = Result(label, 0.0, [])
    position = 0

    async def client() -> None:
        nonlocal position
        while position < len(requests):
            request = requests[position]
            position += 1
            started = time.perf_counter()
            try:
                async with session.post(url, data=request.body, headers=request.headers) as response:
                    await response.read()
                    status = response.status
            except aiohttp.ClientError:
                result.errors += 1
                continue
            result.latencies_s.append(time.perf_counter() - started)
            result.statuses[status] += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    return result


async def run_load(
    url: str, requests: Sequence[Request], *, concurrency: int = 32, warmup: int = 0, label: str = ""
) -> Result:
    """Send ``requests`` (the first ``warmup`` of them unmeasured) at ``concurrency``; the measured Result."""
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        warm = await _send_all(session, url, requests[:warmup], concurrency, label) if warmup else None
        result = await _send_all(session, url, requests[warmup:], concurrency, label or url)
        result.warmup = warm
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--kind", choices=("bridge", "bare"), required=True)
    parser.add_argument("--secret", help="webhook secret (for --kind bridge)")
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("-n", "--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    args = parser.parse_args()
    total = args.requests + args.warmup
    if args.kind == "bridge":
        if not args.secret:
            parser.error("--kind bridge needs --secret")
        requests, per_request = bridge_requests(args.secret, total)
        print(f"signing: {per_request * 1e6:.0f} µs per request (before the clock starts)")
    else:
        requests = bare_requests(total)
    result = asyncio.run(run_load(args.url, requests, concurrency=args.concurrency, warmup=args.warmup))
    print(result.line())


if __name__ == "__main__":
    main()
