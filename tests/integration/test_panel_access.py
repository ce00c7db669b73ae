"""How a step reaches the panel: the check inside the gate (lease and breaker, in the
database) and when credentials the panel just accepted may go without it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from panel_fixtures import ALICE, BOB, panel, panel_http, panel_server, panel_sim, sim_clock
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.metrics import Metrics
from bridge.panel.client import PanelClient
from bridge.panel.config import PanelCredentials
from bridge.panel.simulator import PanelSimulator
from bridge.store import tables as t
from bridge.store.database import create_engine
from bridge.store.job_change import LeaseLost
from bridge.store.types import utcnow
from bridge.worker import panel_access
from bridge.worker.breaker import ACCEPTED_KEPT, PanelBreaker
from bridge.worker.panel_access import BreakerOpen, PanelAccess
from bridge.worker.panel_gate import PanelGate

__all__ = ["panel", "panel_http", "panel_server", "panel_sim", "sim_clock"]

NO_SUCH_JOB = 999_999  # a lease the database does not know: the check there says "lost"


@pytest.fixture
async def engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(pg_url)
    yield engine
    await engine.dispose()


LEASE_S = 60.0


def access(
    panel: PanelClient, engine: AsyncEngine, breaker: PanelBreaker, creds: PanelCredentials, lease_for: float = 200
) -> PanelAccess:
    """The access of an attempt whose start committed a lease of ``lease_for`` seconds."""
    return PanelAccess(
        client=panel,
        creds=creds,
        gate=PanelGate(engine),
        breaker=breaker,
        metrics=Metrics(),
        engine=engine,
        job_pk=NO_SUCH_JOB,
        owner="worker-a",
        lease_s=LEASE_S,
        lease_until=utcnow() + timedelta(seconds=lease_for),
    )


async def open_breaker_in_database(engine: AsyncEngine, panel: PanelClient) -> None:
    """As another worker process would, after three refused logins."""
    now, name = utcnow(), panel.server.name
    opened = {"panel": name, "failures": 3, "window_started_at": now, "open_until": now + timedelta(minutes=10)}
    async with engine.begin() as conn:
        await conn.execute(insert(t.panel_breakers).values(**opened))


def add_domain(domain: str):  # type: ignore[no-untyped-def]
    return lambda c, creds: c.add_domain(creds, domain, "8.2", "public_html")


async def test_unvouched_credentials_are_checked_in_the_database(
    panel: PanelClient, engine: AsyncEngine, panel_sim: PanelSimulator
) -> None:
    with pytest.raises(LeaseLost):
        await access(panel, engine, PanelBreaker(engine), ALICE).mutate("add_domain", add_domain("a.example.com"))
    assert panel_sim.snapshot()["counters"].get("add_domain", 0) == 0


async def test_credentials_just_accepted_go_on_the_lease_they_hold_and_the_breaker_last_seen(
    panel: PanelClient, engine: AsyncEngine, panel_sim: PanelSimulator
) -> None:
    breaker = PanelBreaker(engine)
    # The first read of a job proves the credentials (and reads the breaker, closed) in the database.
    first = access(panel, engine, breaker, ALICE)
    await first.read(lambda c, creds: c.account_info(creds))
    assert first.proven and breaker.vouched(panel.server.name, ALICE)

    # A later step's call: no look at the database (which would say the lease is lost) ...
    sent = await access(panel, engine, breaker, ALICE).mutate("add_domain", add_domain("a.example.com"))
    assert sent.record.http_status == 200
    # ... but only while the lease it committed outlasts the call by a lease, as a renewal would ...
    short = panel.server.timeout_for("add_domain") + LEASE_S - 1
    with pytest.raises(LeaseLost):
        await access(panel, engine, breaker, ALICE, lease_for=short).mutate("add_domain", add_domain("b.example.com"))
    # ... only for the credentials accepted (bob's never were) ...
    with pytest.raises(LeaseLost):
        await access(panel, engine, breaker, BOB).mutate("add_domain", add_domain("c.example.com"))
    # ... and never while the breaker, as this process last read it, is open: bob's first read
    # reads it in the database (open, opened by another worker), and alice's next call is held back.
    await open_breaker_in_database(engine, panel)
    with pytest.raises(BreakerOpen):
        await access(panel, engine, breaker, BOB).read(lambda c, creds: c.account_info(creds))
    with pytest.raises(BreakerOpen):
        await access(panel, engine, breaker, ALICE).mutate("add_domain", add_domain("d.example.com"))
    assert panel_sim.snapshot()["counters"]["add_domain"] == 1


async def test_a_refusal_withdraws_the_vouch(panel: PanelClient, engine: AsyncEngine) -> None:
    breaker = PanelBreaker(engine)
    await access(panel, engine, breaker, ALICE).read(lambda c, creds: c.account_info(creds))
    assert breaker.vouched(panel.server.name, ALICE)
    changed = PanelCredentials(ALICE.username, "Another-Pass-9")
    assert not breaker.vouched(panel.server.name, changed)
    await access(panel, engine, breaker, changed).read(lambda c, creds: c.account_info(creds))
    assert not breaker.vouched(panel.server.name, ALICE)


def test_a_process_remembers_only_the_most_recently_accepted_credentials() -> None:
    breaker = PanelBreaker(None)  # type: ignore[arg-type]  # no database needed for the view
    accounts = [PanelCredentials(f"user{n}", f"Pass-{n}-xyz") for n in range(ACCEPTED_KEPT + 10)]
    for creds in accounts:
        breaker.accepted("p", creds)
    assert not breaker.vouched("p", accounts[0]) and breaker.vouched("p", accounts[-1])
    breaker.accepted("p", accounts[10])  # seen again: the newest now
    breaker.accepted("p", PanelCredentials("one-more", "Pass-x-yz"))
    assert breaker.vouched("p", accounts[10]) and not breaker.vouched("p", accounts[11])


async def test_a_job_queued_for_the_gate_keeps_renewing_its_lease_after_a_renewal_fails(
    panel: PanelClient, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One failed renewal (the database away a moment) must not end the renewals: behind a
    # certificate issuance the job would lose its lease, and its attempt with it.
    tries: list[bool] = []

    async def renew_failing_once(*args: object) -> bool:
        tries.append(bool(tries))
        if len(tries) == 1:
            raise ConnectionError("the database is away a moment")
        return True

    monkeypatch.setattr(panel_access, "renew", renew_failing_once)
    queued = PanelAccess(
        client=panel,
        creds=ALICE,
        gate=PanelGate(engine),
        breaker=PanelBreaker(engine),
        metrics=Metrics(),
        engine=engine,
        job_pk=NO_SUCH_JOB,
        owner="worker-a",
        lease_s=0.3,
        lease_until=utcnow(),
    )
    other_process = create_engine(engine.url.render_as_string(hide_password=False))
    try:
        async with PanelGate(other_process).mutation(panel.server.name, quiet_s=0):
            waiting = asyncio.create_task(queued.mutate("add_domain", add_domain("a.example.com")))
            await asyncio.sleep(0.6)  # queued behind the call in another process
        with pytest.raises(LeaseLost):  # its turn: the check in the gate does not know the job
            await waiting
    finally:
        await other_process.dispose()
    assert len(tries) >= 3 and tries[0] is False
