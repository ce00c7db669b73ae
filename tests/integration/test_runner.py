"""The job runner against the panel simulator, one wake-up at a time, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from conftest import FERNET_KEY, WEBHOOK_SECRET
from orders import ACCOUNT_PASSWORD, DB_PASSWORD, service_create
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import TimeoutError as PoolTimeout

from bridge.bootstrap import Runtime, gate_pool_size, open_runtime
from bridge.domain.events import OrderEvent
from bridge.panel.simulator import PanelSimulator
from bridge.settings import Settings
from bridge.store import admin_ops
from bridge.store import tables as t
from bridge.store.database import create_engine
from bridge.store.intake import store_event
from bridge.store.types import utcnow
from bridge.worker.panel_gate import GateWaitLost, PanelGate
from bridge.worker.runner import JobRunner


@pytest.fixture
def sim() -> PanelSimulator:
    sim = PanelSimulator()
    sim.add_account("john", ACCOUNT_PASSWORD)
    return sim


@pytest.fixture
async def runtime(db_url: str, sim: PanelSimulator) -> AsyncIterator[Runtime]:
    """The bridge's parts, nothing running: the test hands each wake-up to a runner itself."""
    async with TestServer(sim.app()) as panel:
        settings = Settings(
            database_url=db_url,
            webhook_secrets=[WEBHOOK_SECRET],
            secret_key=[FERNET_KEY],
            panels=[{"name": "default", "url": str(panel.make_url("/")).rstrip("/")}],  # type: ignore[list-item]
            retry_delay_scale=0.001,
        )
        async with open_runtime(settings) as runtime:
            yield runtime


async def set_breaker(runtime: Runtime, *, open_for: timedelta | None) -> None:
    """Open the panel's circuit breaker (as after refused logins elsewhere), or close it."""
    async with runtime.engine.begin() as conn:
        await conn.execute(delete(t.panel_breakers))
        if open_for is not None:
            until = utcnow() + open_for
            await conn.execute(insert(t.panel_breakers).values(panel="default", failures=3, open_until=until))


async def make_due(runtime: Runtime, job_id: str) -> None:
    """The job and its waiting step due now, as when the wait for the breaker is over."""
    now = utcnow()
    job_pk = select(t.jobs.c.id).where(t.jobs.c.public_id == job_id).scalar_subquery()
    waiting = t.steps.c.next_attempt_at.is_not(None)
    async with runtime.engine.begin() as conn:
        await conn.execute(update(t.jobs).where(t.jobs.c.id == job_pk).values(next_run_at=now))
        await conn.execute(update(t.steps).where(t.steps.c.job_id == job_pk, waiting).values(next_attempt_at=now))


async def test_attempts_held_back_by_the_breaker_are_numbered_apart_but_cost_no_budget(runtime: Runtime) -> None:
    event = OrderEvent.model_validate(service_create())
    job_id = (await store_event(runtime.engine, runtime.box, "msg_breaker", event)).job_id
    # Twice the breaker holds the first step back; then it is closed and the job runs through.
    for open_for in (timedelta(minutes=10), timedelta(minutes=10), None):
        await set_breaker(runtime, open_for=open_for)
        await make_due(runtime, job_id)
        await runtime.runner().handle(job_id)  # a runner of its own: no breaker reading remembered

    job = await admin_ops.get_job(runtime.engine, job_id)
    assert job["status"] == "succeeded"
    first = [(a["number"], a["outcome"]) for a in job["attempts"] if a["step"] == "check_account"]
    assert first == [(1, "breaker_open"), (2, "breaker_open"), (3, "succeeded")]
    assert job["steps"][0]["attempts"] == 1  # only the attempt sent counts against the retry budget
    # ... and the step's total time counts from that attempt, not from the first held back.
    async with runtime.engine.connect() as conn:
        first_attempt_at = (
            await conn.execute(select(t.steps.c.first_attempt_at).where(t.steps.c.kind == "check_account"))
        ).scalar_one()
    sent = next(a for a in job["attempts"] if a["step"] == "check_account" and a["outcome"] == "succeeded")
    assert first_attempt_at.isoformat() == sent["started_at"]


async def add_domain_queued(runtime: Runtime, runner: JobRunner, job_id: str) -> asyncio.Task[None]:
    """Run the job until its add_domain attempt has started (and waits for the panel's gate)."""
    steps, attempts = t.steps.c, t.attempts.c
    add_domain_started = (
        select(func.count())
        .select_from(t.attempts.join(t.steps, steps.id == attempts.step_id))
        .where(steps.kind == "add_domain")
    )
    running = asyncio.create_task(runner.handle(job_id))
    for _ in range(200):
        async with runtime.engine.connect() as conn:
            if (await conn.execute(add_domain_started)).scalar_one():
                break
        await asyncio.sleep(0.02)
    return running


async def assert_add_domain_abandoned(runtime: Runtime, job_id: str) -> None:
    """add_domain was never sent: abandoned, not counted, and the job given back."""
    job = await admin_ops.get_job(runtime.engine, job_id)
    add = next(s for s in job["steps"] if s["kind"] == "add_domain")
    assert [a["outcome"] for a in job["attempts"] if a["step"] == "add_domain"] == ["abandoned"]
    assert add["attempts"] == 0 and add["status"] == "waiting_retry" and not add["in_flight"]
    assert job["lease_owner"] is None  # given back, for another worker at once


async def test_a_step_waiting_for_its_turn_gives_it_up_as_soon_as_the_worker_begins_to_stop(
    runtime: Runtime, db_url: str
) -> None:
    # Queued behind a call that goes on for minutes (a certificate issuance): the worker's shutdown
    # grace would cut the waiting step off, leaving it in flight until its lease ran out.
    event = OrderEvent.model_validate(service_create(ssl=False))
    job_id = (await store_event(runtime.engine, runtime.box, "msg_give_up", event)).job_id
    runner = runtime.runner()
    # Another process's holder (PostgreSQL), or another job's in this process (the embedded mode).
    other_process = create_engine(runtime.settings.database_url) if "postgresql" in db_url else None
    holder = PanelGate(other_process) if other_process is not None else runtime.panel_gate()
    try:
        async with holder.mutation("default", quiet_s=0):
            running = await add_domain_queued(runtime, runner, job_id)
            await asyncio.sleep(0.1)
            runner.stop()
            await asyncio.wait_for(running, 5)  # the gate is still held: the step did not wait for it
    finally:
        if other_process is not None:
            await other_process.dispose()

    await assert_add_domain_abandoned(runtime, job_id)


@pytest.mark.parametrize("db_url", ["pg"], indirect=True)
async def test_a_call_whose_turn_comes_after_the_worker_began_to_stop_is_not_sent(runtime: Runtime) -> None:
    # Queued behind another process's call, the job's add_domain gets its turn only after the
    # worker began to stop: sent then, the shutdown grace could cut it off with its outcome unknown.
    event = OrderEvent.model_validate(service_create(ssl=False))
    job_id = (await store_event(runtime.engine, runtime.box, "msg_stopping", event)).job_id
    runner = runtime.runner()
    other_process = create_engine(runtime.settings.database_url)
    try:
        async with PanelGate(other_process).mutation("default", quiet_s=0):
            running = await add_domain_queued(runtime, runner, job_id)
            runner.stopping = True
        await asyncio.wait_for(running, 10)
    finally:
        await other_process.dispose()

    await assert_add_domain_abandoned(runtime, job_id)
    async with runtime.engine.connect() as conn:
        panel_calls = (await conn.execute(select(t.panel_calls.c.call))).scalars().all()
    assert "add_domain" not in panel_calls


async def wake_ups_written(runtime: Runtime, job_id: str) -> int:
    async with runtime.engine.connect() as conn:
        found = select(func.count()).select_from(t.outbox).where(t.outbox.c.job_public_id == job_id)
        return int((await conn.execute(found)).scalar_one())


async def test_a_step_still_queued_at_the_gate_when_the_jobs_time_is_up_goes_back_to_the_queue(
    runtime: Runtime, db_url: str, sim: PanelSimulator
) -> None:
    # Behind a long line at a busy panel, a job holding its message on would outlast RabbitMQ's
    # consumer_timeout: the broker would close the channel and redeliver every message on it.
    event = OrderEvent.model_validate(service_create(ssl=False))
    job_id = (await store_event(runtime.engine, runtime.box, "msg_hand_back", event)).job_id
    wake_ups = await wake_ups_written(runtime, job_id)
    other_process = create_engine(runtime.settings.database_url) if "postgresql" in db_url else None
    holder = PanelGate(other_process) if other_process is not None else runtime.panel_gate()
    try:
        async with holder.mutation("default", quiet_s=0):
            running = await add_domain_queued(runtime, runtime.runner(hand_back_after_s=1.0), job_id)
            await asyncio.wait_for(running, 5)  # while the gate is still held
    finally:
        if other_process is not None:
            await other_process.dispose()

    job = await admin_ops.get_job(runtime.engine, job_id)
    add = next(s for s in job["steps"] if s["kind"] == "add_domain")
    attempts = [a for a in job["attempts"] if a["step"] == "add_domain"]
    assert [a["outcome"] for a in attempts] == ["handed_back"]
    assert "no turn at the panel within 1 s" in attempts[0]["message"]
    assert add["attempts"] == 0 and add["status"] == "waiting_retry" and not add["in_flight"]
    assert job["lease_owner"] is None and job["status"] == "running"
    assert await wake_ups_written(runtime, job_id) == wake_ups + 1  # its next wake-up, due now
    # A wait given up is measured too: the longest waits, when the panel is busiest.
    registry, labels = runtime.metrics.registry, {"panel": "default"}
    assert registry.get_sample_value("bridge_panel_turn_wait_seconds_count", labels) == 1
    assert registry.get_sample_value("bridge_panel_turn_wait_seconds_sum", labels) >= 0.5  # of the 1 s

    await runtime.runner().handle(job_id)  # the next wake-up, with the panel free
    job = await admin_ops.get_job(runtime.engine, job_id)
    assert job["status"] == "succeeded"
    assert [d.domain for d in sim.account("john").domains] == ["example.com"]


async def test_a_job_whose_time_is_up_after_a_step_goes_back_to_the_queue_before_the_next(
    runtime: Runtime, sim: PanelSimulator
) -> None:
    event = OrderEvent.model_validate(service_create(ssl=False))
    job_id = (await store_event(runtime.engine, runtime.box, "msg_slow_step", event)).job_id
    wake_ups = await wake_ups_written(runtime, job_id)
    sim.set_latency(0.5, "add_domain")

    await runtime.runner(hand_back_after_s=0.3).handle(job_id)

    job = await admin_ops.get_job(runtime.engine, job_id)
    assert [(s["kind"], s["status"]) for s in job["steps"]] == [
        ("check_account", "succeeded"),
        ("add_domain", "succeeded"),  # a call under way is never cut short
        ("create_database", "pending"),
        ("add_cron_job", "pending"),
    ]
    assert not [a for a in job["attempts"] if a["step"] == "create_database"]
    assert job["lease_owner"] is None and job["status"] == "running"
    assert await wake_ups_written(runtime, job_id) == wake_ups + 1

    await runtime.runner().handle(job_id)
    job = await admin_ops.get_job(runtime.engine, job_id)
    assert job["status"] == "succeeded"
    assert [d.domain for d in sim.account("john").domains] == ["example.com"]


async def test_the_wait_for_each_turn_at_the_panel_is_measured(runtime: Runtime, db_url: str) -> None:
    event = OrderEvent.model_validate(service_create(ssl=False))
    job_id = (await store_event(runtime.engine, runtime.box, "msg_turn_wait", event)).job_id
    other_process = create_engine(runtime.settings.database_url) if "postgresql" in db_url else None
    holder = PanelGate(other_process) if other_process is not None else runtime.panel_gate()
    try:
        async with holder.mutation("default", quiet_s=0):
            running = await add_domain_queued(runtime, runtime.runner(), job_id)
            await asyncio.sleep(0.7)  # add_domain waits behind another call
        await asyncio.wait_for(running, 10)
    finally:
        if other_process is not None:
            await other_process.dispose()

    assert (await admin_ops.get_job(runtime.engine, job_id))["status"] == "succeeded"
    registry = runtime.metrics.registry
    labels = {"panel": "default"}
    # add_domain, create_database and add_cron_job: one wait each, the first the long one.
    assert registry.get_sample_value("bridge_panel_turn_wait_seconds_count", labels) == 3
    assert registry.get_sample_value("bridge_panel_turn_wait_seconds_bucket", {**labels, "le": "0.5"}) == 2
    assert registry.get_sample_value("bridge_panel_turn_wait_seconds_sum", labels) >= 0.7


@pytest.mark.parametrize(
    "lost",
    [
        GateWaitLost("the database session 42 waiting for the panel's gate stopped waiting"),
        PoolTimeout("QueuePool limit of size 10 overflow 10 reached"),
    ],
    ids=["wait lost", "no database connection"],
)
async def test_an_attempt_lost_before_its_call_went_costs_nothing_and_is_tried_again(
    runtime: Runtime, sim: PanelSimulator, monkeypatch: pytest.MonkeyPatch, lost: Exception
) -> None:
    event = OrderEvent.model_validate(service_create(ssl=False))
    job_id = (await store_event(runtime.engine, runtime.box, "msg_lost_wait", event)).job_id

    @contextlib.asynccontextmanager
    async def never_a_turn(panel: str, *, quiet_s: float, turn_by: float | None = None) -> AsyncIterator[None]:
        raise lost
        yield

    gate = runtime.panel_gate()
    with monkeypatch.context() as patched:
        patched.setattr(gate, "mutation", never_a_turn)
        await runtime.runner().handle(job_id)

    job = await admin_ops.get_job(runtime.engine, job_id)
    add = next(s for s in job["steps"] if s["kind"] == "add_domain")
    [attempt] = [a for a in job["attempts"] if a["step"] == "add_domain"]
    assert attempt["outcome"] == "abandoned" and type(lost).__name__ in attempt["message"]
    assert add["attempts"] == 0 and add["status"] == "waiting_retry" and not add["in_flight"]
    assert job["lease_owner"] is None

    await make_due(runtime, job_id)
    await runtime.runner().handle(job_id)
    assert (await admin_ops.get_job(runtime.engine, job_id))["status"] == "succeeded"
    assert [d.domain for d in sim.account("john").domains] == ["example.com"]


@pytest.mark.parametrize("db_url", ["pg"], indirect=True)
async def test_the_panel_gate_has_connections_of_its_own(runtime: Runtime) -> None:
    # Each panel being waited for keeps a connection for its advisory lock: taken from the pool
    # every other statement needs, many busy panels would leave none for them, and the other way round.
    held: list[object] = []
    async with contextlib.AsyncExitStack() as stack:
        with pytest.raises(PoolTimeout):
            while True:  # every connection of the process's main pool
                held.append(await stack.enter_async_context(runtime.engine.connect()))
        async with asyncio.timeout(5), runtime.panel_gate().mutation("default", quiet_s=0) as locked:
            assert locked is not None and not locked.is_closed()
    assert len(held) == 20


@pytest.mark.parametrize(("panels", "prefetch", "pool"), [(1, 16, 3), (16, 16, 17), (50, 16, 17), (2, 32, 5)])
def test_the_gate_pool_is_sized_as_the_readme_says(panels: int, prefetch: int, pool: int) -> None:
    # One connection per gate held or waited for (two gates per panel), no more than the jobs a
    # process runs at once, one for checks; as many again under load (README: Database connections).
    settings = Settings(
        panels=[{"name": f"p{n}", "url": "https://panel.example.com:2083"} for n in range(panels)],  # type: ignore[misc]
        worker_prefetch=prefetch,
    )
    assert gate_pool_size(settings) == pool


@pytest.mark.parametrize("call", ["account_info", "add_domain"])
async def test_a_job_turned_away_by_the_panels_firewall_waits_for_the_ban_to_lift(
    runtime: Runtime, sim: PanelSimulator, call: str
) -> None:
    # Someone else's failed logins from the bridge's address get it banned, just before a read
    # (check_account) or a mutating call (add_domain) of a job: the job waits, it does not fail.
    sim.inject_fault(call, "ban")
    event = OrderEvent.model_validate(service_create())
    job_id = (await store_event(runtime.engine, runtime.box, "msg_banned", event)).job_id
    await runtime.runner().handle(job_id)

    job = await admin_ops.get_job(runtime.engine, job_id)
    step = next(s for s in job["steps"] if s["kind"] == ("check_account" if call == "account_info" else call))
    assert job["status"] != "failed" and step["status"] == "waiting_retry"
    assert step["attempts"] == 0  # turned away before the panel saw it: no retry spent
    (turned_away,) = [a for a in job["attempts"] if a["step"] == step["kind"]]
    assert turned_away["outcome"] == "breaker_open" and "firewall" in turned_away["message"]
    async with runtime.engine.connect() as conn:
        breaker = (await conn.execute(select(t.panel_breakers))).one()
    assert breaker.last_reason == "firewall" and breaker.open_until is not None  # (10 min, scaled down here)

    sim.state.firewall.lift("127.0.0.1")  # an admin unblocks the address; the breaker's wait is over
    await set_breaker(runtime, open_for=None)
    await make_due(runtime, job_id)
    await runtime.runner().handle(job_id)
    job = await admin_ops.get_job(runtime.engine, job_id)
    assert job["status"] == "succeeded"
    assert [d.domain for d in sim.account("john").domains] == ["example.com"]


async def test_a_database_user_already_on_the_account_fails_the_step_with_the_database_made_recorded(
    runtime: Runtime, sim: PanelSimulator
) -> None:
    # db_make makes the database, then finds its user taken (made by hand, say): the job fails as
    # a conflict, and the database the panel made for it is recorded, to be dropped.
    sim.account("john").db_users.append("john_wpuser")
    event = OrderEvent.model_validate(service_create(ssl=False, cron_jobs=[]))
    job_id = (await store_event(runtime.engine, runtime.box, "msg_user_taken", event)).job_id
    await runtime.runner().handle(job_id)

    job = await admin_ops.get_job(runtime.engine, job_id)
    assert job["status"] == "failed" and "john_wpuser already exists" in job["error"]
    assert sim.account("john").databases == ["john_wp"]
    (drop,) = [c for c in job["compensations"] if c["step"] == "create_database"]
    assert drop["status"] == "pending" and drop["action"].startswith("drop database john_wp from account john")

    # The admin removes the user and drops the database, marks the record done, and retries.
    sim.account("john").db_users.remove("john_wpuser")
    sim.account("john").databases.remove("john_wp")
    await admin_ops.resolve_compensation(runtime.engine, drop["id"], "done")
    await admin_ops.retry_job(runtime.engine, runtime.box, job_id)
    await runtime.runner().handle(job_id)
    assert (await admin_ops.get_job(runtime.engine, job_id))["status"] == "succeeded"
    assert (sim.account("john").databases, sim.account("john").db_users) == (["john_wp"], ["john_wpuser"])


def domain_add(domain: str) -> OrderEvent:
    data = service_create(domain=domain)["data"]
    fields = ("service_id", "panel", "account", "domain", "php_version")
    return OrderEvent.model_validate({"type": "domain.add", "data": {k: data[k] for k in fields}})


async def run_to_the_end(runtime: Runtime, event: OrderEvent, webhook_id: str) -> dict[str, Any]:
    job_id = (await store_event(runtime.engine, runtime.box, webhook_id, event)).job_id
    await runtime.runner().handle(job_id)
    return await admin_ops.get_job(runtime.engine, job_id)


async def test_an_order_beyond_the_accounts_domain_limit_fails_before_anything_is_sent(
    runtime: Runtime, sim: PanelSimulator
) -> None:
    sim.account("john").domain_limit = 1
    assert (await run_to_the_end(runtime, domain_add("example.com"), "msg_first"))["status"] == "succeeded"

    job = await run_to_the_end(runtime, domain_add("example.org"), "msg_second")
    assert job["status"] == "failed"
    assert "has used 1 of its 1 domains (domain_limit)" in job["error"] and "needs 1 more" in job["error"]
    assert sim.snapshot()["counters"]["add_domain"] == 1  # only the first order's
    assert [d.domain for d in sim.account("john").domains] == ["example.com"]


async def test_subdomains_are_not_held_to_the_domain_limit_as_the_panel_counts_it(
    runtime: Runtime, sim: PanelSimulator
) -> None:
    # The panel's domain_used counts subdomains too, but its add_domain holds a subdomain to the
    # subdomain limit and counts only domains against domain_limit.
    sim.account("john").domain_limit = 2
    for n, domain in enumerate(["example.com", "blog.example.com", "shop.example.com"]):
        assert (await run_to_the_end(runtime, domain_add(domain), f"msg_{n}"))["status"] == "succeeded"
    # domain_used is 3 now, of 2; one domain is used, so one more fits ...
    assert (await run_to_the_end(runtime, domain_add("example.org"), "msg_org"))["status"] == "succeeded"
    # ... and then no more.
    job = await run_to_the_end(runtime, domain_add("example.net"), "msg_net")
    assert job["status"] == "failed" and "has used 2 of its 2 domains" in job["error"]
    assert [d.kind for d in sim.account("john").domains] == ["domain", "subdomain", "subdomain", "domain"]


async def test_a_service_provisioned_again_takes_what_its_earlier_job_made_as_its_own(
    runtime: Runtime, sim: PanelSimulator
) -> None:
    # A re-create after a success (the billing platform sends no deprovisioning): everything is
    # on the panel already, made by the service's first job. The account's package is full with
    # it, and the panel checks its database limit before it looks for the database.
    sim.account("john").domain_limit = 1
    sim.account("john").db_limit = 1
    first = await run_to_the_end(runtime, OrderEvent.model_validate(service_create()), "msg_first_create")
    assert first["status"] == "succeeded"

    again = await run_to_the_end(runtime, OrderEvent.model_validate(service_create()), "msg_create_again")
    assert again["status"] == "succeeded", again["error"]
    made_before = [a for a in again["attempts"] if a["step"] in ("add_domain", "create_database", "add_cron_job")]
    assert [a["outcome"] for a in made_before] == ["reconciled"] * 3
    assert all(f"made by job {first['job_id']} of this service: taken over" in a["message"] for a in made_before)
    # What would undo them is the new job's too (settled, as every succeeded job's records are).
    assert [c["action"] for c in again["compensations"]] == [c["action"] for c in first["compensations"]]
    account = sim.account("john")
    assert ([d.domain for d in account.domains], account.databases, account.db_users) == (
        ["example.com"],
        ["john_wp"],
        ["john_wpuser"],
    )
    assert account.cron_lines is not None and len(account.cron_lines) == 1


async def test_what_the_service_made_but_an_admin_undid_is_not_taken_as_its_own(
    runtime: Runtime, sim: PanelSimulator
) -> None:
    first = await run_to_the_end(runtime, domain_add("example.com"), "msg_first_add")
    (undo,) = first["compensations"]
    # Resolved "done" (undone), though the domain is there: someone else's now, for all the bridge knows.
    await admin_ops.resolve_compensation(runtime.engine, undo["id"], "done")
    again = await run_to_the_end(runtime, domain_add("example.com"), "msg_add_again")
    assert again["status"] == "failed" and "was not added by this order" in again["error"]


@pytest.mark.parametrize(
    ("changed", "field"),
    [
        ({"php_version": "8.1"}, "php_version"),
        ({"databases": [{"name": "wp", "user": "wpuser", "password": "Another-Db-Pass-1"}]}, "password"),
        # The read-back for this order's user finds only half: the difference is still what is named.
        ({"databases": [{"name": "wp", "user": "otheruser", "password": DB_PASSWORD}]}, "user"),
    ],
)
async def test_what_the_service_made_differently_is_a_conflict_naming_the_difference(
    runtime: Runtime, changed: dict[str, Any], field: str
) -> None:
    first = await run_to_the_end(runtime, OrderEvent.model_validate(service_create(ssl=False)), "msg_made")
    assert first["status"] == "succeeded"
    order = service_create(ssl=False)
    order["data"].update(changed)
    again = await run_to_the_end(runtime, OrderEvent.model_validate(order), "msg_made_differently")
    assert again["status"] == "failed"
    assert (
        f"made by job {first['job_id']} of this service with another {field} than this order asks for"
        in (again["error"])
    )
    assert "Another-Db-Pass-1" not in str(again)  # the difference is named, never shown


async def test_a_read_back_that_fails_while_taking_over_leaves_the_step_as_unsure_as_it_was(
    runtime: Runtime, sim: PanelSimulator
) -> None:
    assert (await run_to_the_end(runtime, domain_add("example.com"), "msg_made_it"))["status"] == "succeeded"
    sim.inject_fault("domain_list", "html500")
    event = domain_add("example.com")
    job_id = (await store_event(runtime.engine, runtime.box, "msg_again", event)).job_id
    await runtime.runner().handle(job_id)
    job = await admin_ops.get_job(runtime.engine, job_id)
    add = next(s for s in job["steps"] if s["kind"] == "add_domain")
    # "Already exists" answered this attempt: nothing it sent can have landed.
    assert add["status"] == "waiting_retry" and not add["in_flight"]


async def test_what_a_failed_job_made_is_taken_over_with_its_undo_by_the_order_that_replaced_it(
    runtime: Runtime, sim: PanelSimulator
) -> None:
    # The first order fails at its database; the billing platform sends it changed (another
    # database), and the new job fails later in turn: what would undo the domain is its now.
    sim.inject_fault("db_make", "error:Access denied for user 'john'@'localhost'")
    first = await run_to_the_end(runtime, OrderEvent.model_validate(service_create(ssl=False)), "msg_failed_first")
    assert first["status"] == "failed"
    assert [(c["step"], c["status"]) for c in first["compensations"]] == [("add_domain", "pending")]

    sim.inject_fault("cronjob_add", "error:No crontab for you")
    changed = service_create(ssl=False, databases=[{"name": "shop", "user": "shopuser", "password": DB_PASSWORD}])
    again = await run_to_the_end(runtime, OrderEvent.model_validate(changed), "msg_changed_order")
    assert again["status"] == "failed" and again["error"].startswith("add_cron_job")
    assert [(c["step"], c["status"]) for c in again["compensations"]] == [
        ("add_domain", "pending"),
        ("create_database", "pending"),
    ]
    first = await admin_ops.get_job(runtime.engine, first["job_id"])
    assert [(c["step"], c["status"]) for c in first["compensations"]] == [("add_domain", "not_needed")]
    assert [d.domain for d in sim.account("john").domains] == ["example.com"]


async def test_what_was_taken_over_and_then_undone_is_nobodys_whatever_older_records_say(
    runtime: Runtime, sim: PanelSimulator
) -> None:
    made = await run_to_the_end(runtime, domain_add("example.com"), "msg_made")
    taken = await run_to_the_end(runtime, domain_add("example.com"), "msg_taken")
    assert taken["status"] == "succeeded" and f"made by job {made['job_id']}" in taken["attempts"][-1]["message"]
    # The admin undid it through the record they see, the newer job's; it is back on the panel,
    # put there by someone else, for all the bridge knows. The first job's record still says
    # "not_needed" (settled when that job succeeded), which must not speak for it.
    (undo,) = taken["compensations"]
    await admin_ops.resolve_compensation(runtime.engine, undo["id"], "done")
    again = await run_to_the_end(runtime, domain_add("example.com"), "msg_after_undo")
    assert again["status"] == "failed" and "was not added by this order" in again["error"]


async def test_a_limit_the_panel_refuses_with_leaves_the_step_as_unsure_as_it_was(
    runtime: Runtime, sim: PanelSimulator
) -> None:
    # The subdomain limit, which the account information does not show: the panel refuses before
    # it changes anything, so nothing is left to read back.
    sim.account("john").subdomain_limit = 1
    for n, domain in enumerate(["example.com", "blog.example.com"]):
        assert (await run_to_the_end(runtime, domain_add(domain), f"msg_{n}"))["status"] == "succeeded"
    job = await run_to_the_end(runtime, domain_add("shop.example.com"), "msg_one_too_many")
    add = next(s for s in job["steps"] if s["kind"] == "add_domain")
    assert job["status"] == "failed" and "Subdomain add limit exceeded" in job["error"]
    assert not add["in_flight"]
