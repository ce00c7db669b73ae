"""Admin operations on the store, on SQLite and PostgreSQL: what retry (of one job or of
every failed job that matches), cancel, resolve and resend change, and what they refuse."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from conftest import FERNET_KEY
from orders import ACCOUNT_PASSWORD, service_create
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.callbacks.origins import normalise_origin
from bridge.domain.events import parse_event
from bridge.store import admin_ops, leases
from bridge.store import tables as t
from bridge.store.admin_errors import Conflict, InvalidInput, NotFound
from bridge.store.callback_rows import CallbackPolicy
from bridge.store.crypto import SecretBox
from bridge.store.database import create_engine
from bridge.store.intake import store_event
from bridge.store.types import utcnow

BOX = SecretBox([FERNET_KEY])
CALLBACK_URL = "https://billing.example.com/bridge-callback"
POLICY = CallbackPolicy([normalise_origin("https://billing.example.com")], secret_configured=True)


async def new_job(engine: AsyncEngine, **kw: Any) -> str:
    event = parse_event(service_create(**kw))
    return (await store_event(engine, BOX, f"msg_{uuid.uuid4().hex}", event)).job_id


async def job_row(engine: AsyncEngine, job_id: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(select(t.jobs).where(t.jobs.c.public_id == job_id))).one()


async def step_rows(engine: AsyncEngine, job_id: str) -> list[Any]:
    row = await job_row(engine, job_id)
    async with engine.connect() as conn:
        query = select(t.steps).where(t.steps.c.job_id == row.id).order_by(t.steps.c.position)
        return list((await conn.execute(query)).all())


async def outbox_for(engine: AsyncEngine, job_id: str) -> int:
    async with engine.connect() as conn:
        rows = await conn.execute(select(t.outbox.c.id).where(t.outbox.c.job_public_id == job_id))
        return len(rows.all())


async def make_failed(engine: AsyncEngine, job_id: str) -> None:
    """As the engine leaves a job that failed at create_database with an unknown outcome."""
    row = await job_row(engine, job_id)
    now = utcnow()
    async with engine.begin() as conn:
        steps = t.steps.c
        for position, status, attempts, in_flight in [
            (0, "succeeded", 1, False),
            (1, "succeeded", 2, False),
            (2, "succeeded", 1, False),
            (3, "failed", 3, True),
            (4, "pending", 0, False),
        ]:
            await conn.execute(
                update(t.steps)
                .where(steps.job_id == row.id, steps.position == position)
                .values(
                    status=status,
                    attempts=attempts,
                    in_flight=in_flight,
                    first_attempt_at=now if attempts else None,
                    error="boom" if status == "failed" else None,
                    result={"domain_id": 7} if position == 1 else None,
                )
            )
        step1 = (await conn.execute(select(steps.id).where(steps.job_id == row.id, steps.position == 1))).scalar_one()
        await conn.execute(
            insert(t.compensations).values(
                job_id=row.id, step_id=step1, step="add_domain", action="remove it", status="pending", created_at=now
            )
        )
        await conn.execute(
            update(t.jobs)
            .where(t.jobs.c.id == row.id)
            .values(status="failed", error="create_database: boom", finished_at=now, next_run_at=None)
        )


async def test_list_pages_newest_first_without_overlap(engine: AsyncEngine) -> None:
    ids = [await new_job(engine, service_id=f"svc-{i}") for i in range(7)]
    pages, cursor = [], None
    while True:
        jobs, cursor = await admin_ops.list_jobs(engine, limit=3, cursor=cursor)
        pages.append([j["job_id"] for j in jobs])
        if cursor is None:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [j for page in pages for j in page] == list(reversed(ids))
    assert "account_password" not in str(pages) and "password" not in (await admin_ops.list_jobs(engine))[0][0]


async def test_list_filters(engine: AsyncEngine) -> None:
    a = await new_job(engine, service_id="100", domain="shop.example.com")
    b = await new_job(engine, service_id="200", domain="blog.example.org")
    await make_failed(engine, b)

    async def ids(**kw: Any) -> list[str]:
        return [j["job_id"] for j in (await admin_ops.list_jobs(engine, **kw))[0]]

    assert await ids(status="failed") == [b]
    assert await ids(status="accepted") == [a]
    assert await ids(service_id="100") == [a]
    assert await ids(service_id="10") == []  # exact, not a prefix
    assert await ids(domain="EXAMPLE.ORG") == [b]
    assert await ids(domain="%") == []  # wildcards are literal
    assert await ids(search="100") == [a]
    assert await ids(search="blog") == [b]
    now = utcnow()
    assert await ids(created_from=now) == []
    assert await ids(created_to=now) == [b, a]
    assert await ids(created_from=now - timedelta(minutes=1), created_to=now + timedelta(minutes=1)) == [b, a]
    for bad in ({"status": "done"}, {"limit": 0}, {"cursor": "bm9wZQ"}, {"cursor": "!!"}):
        with pytest.raises(InvalidInput) as info:
            await admin_ops.list_jobs(engine, **bad)  # type: ignore[arg-type]
        assert info.value.field == next(iter(bad))


async def test_retry_reopens_only_what_did_not_take_effect(engine: AsyncEngine) -> None:
    job_id = await new_job(engine)
    with pytest.raises(Conflict, match="only a failed job"):
        await admin_ops.retry_job(engine, BOX, job_id)
    await make_failed(engine, job_id)
    before = await outbox_for(engine, job_id)
    job = await admin_ops.retry_job(engine, BOX, job_id)
    assert job["status"] == "accepted" and job["error"] is None and job["finished_at"] is None
    steps = await step_rows(engine, job_id)
    assert [(s.status, s.attempts) for s in steps] == [
        ("succeeded", 1),
        ("succeeded", 2),
        ("succeeded", 1),
        ("pending", 0),
        ("pending", 0),
    ]
    assert steps[3].in_flight is True  # read back before anything is sent again
    assert steps[3].first_attempt_at is None and steps[3].error is None
    assert steps[1].result == {"domain_id": 7}
    row = await job_row(engine, job_id)
    assert row.next_run_at is not None and row.lease_owner is None and row.cancel_requested is False
    assert await outbox_for(engine, job_id) == before + 1
    assert [c["status"] for c in job["compensations"]] == ["pending"]
    with pytest.raises(Conflict):
        await admin_ops.retry_job(engine, BOX, job_id)
    with pytest.raises(NotFound):
        await admin_ops.retry_job(engine, BOX, "no-such-job")


async def test_retry_runs_again_what_an_admin_undid(engine: AsyncEngine) -> None:
    job_id = await new_job(engine)
    await make_failed(engine, job_id)
    domain_undo = (await admin_ops.get_job(engine, job_id))["compensations"][0]["id"]
    await admin_ops.resolve_compensation(engine, domain_undo, "done")  # the admin removed the domain
    await admin_ops.retry_job(engine, BOX, job_id)
    steps = await step_rows(engine, job_id)
    # The domain is added again, and its certificate, which went with it, issued again.
    assert [(s.kind, s.status) for s in steps] == [
        ("check_account", "succeeded"),
        ("add_domain", "pending"),
        ("issue_ssl", "pending"),
        ("create_database", "pending"),
        ("add_cron_job", "pending"),
    ]
    assert (steps[1].attempts, steps[1].result, steps[1].in_flight) == (0, None, False)
    assert steps[3].in_flight is True  # unknown before: still read back first

    # Added again, and the job failed once more: the domain's latest record is pending again, so
    # the next retry leaves the domain alone.
    await make_failed(engine, job_id)
    await admin_ops.retry_job(engine, BOX, job_id)
    assert [s.status for s in await step_rows(engine, job_id)][:3] == ["succeeded"] * 3


async def test_retry_runs_again_only_the_step_undone_not_its_siblings(engine: AsyncEngine) -> None:
    shop = {"name": "shop", "user": "shopuser", "password": "Shop-Db-Pass-99"}
    wp = {"name": "wp", "user": "wpuser", "password": "Wp-Db-Pass-99"}
    job_id = await new_job(engine, databases=[wp, shop])
    row, now = await job_row(engine, job_id), utcnow()
    steps = t.steps.c
    async with engine.begin() as conn:
        # Both databases made; the cron line failed after a call that may have added it.
        for position in range(6):
            failed = position == 5
            await conn.execute(
                update(t.steps)
                .where(steps.job_id == row.id, steps.position == position)
                .values(
                    status="failed" if failed else "succeeded", attempts=1, in_flight=failed, result={"n": position}
                )
            )
        wp_step = (await conn.execute(select(steps.id).where(steps.job_id == row.id, steps.position == 3))).scalar_one()
        drop_wp = insert(t.compensations).values(
            job_id=row.id, step_id=wp_step, step="create_database", action="drop wp", status="pending", created_at=now
        )
        undo = (await conn.execute(drop_wp.returning(t.compensations.c.id))).scalar_one()
        await conn.execute(update(t.jobs).where(t.jobs.c.id == row.id).values(status="failed", finished_at=now))
    await admin_ops.resolve_compensation(engine, undo, "done")  # the admin dropped wp, and only wp
    await admin_ops.retry_job(engine, BOX, job_id)
    after = await step_rows(engine, job_id)
    assert [(s.kind, s.status) for s in after] == [
        ("check_account", "succeeded"),
        ("add_domain", "succeeded"),
        ("issue_ssl", "succeeded"),
        ("create_database", "pending"),  # wp: made again
        ("create_database", "succeeded"),  # shop: still there
        ("add_cron_job", "pending"),
    ]
    assert (after[3].result, after[3].in_flight) == (None, False)
    assert after[4].result == {"n": 4}
    assert after[5].in_flight is True  # the cron line may exist: read back first


async def test_retry_with_fresh_password_for_the_same_account_only(engine: AsyncEngine) -> None:
    job_id = await new_job(engine, username="john", password=ACCOUNT_PASSWORD)
    await make_failed(engine, job_id)
    for account, field in [
        ({"username": "mary", "password": "x-new-pass"}, "account.username"),
        ({"username": "john"}, "account.password"),
        ({"password": "x"}, "account.username"),
        ({"username": "john", "password": "new\r\npass"}, "account.password"),  # it goes in a header
        ({"username": "john", "password": " new-pass"}, "account.password"),
    ]:
        with pytest.raises(InvalidInput) as info:
            await admin_ops.retry_job(engine, BOX, job_id, account)
        assert info.value.field == field
    assert (await job_row(engine, job_id)).status == "failed"  # a refusal changes nothing
    await admin_ops.retry_job(engine, BOX, job_id, {"username": "john", "password": "Fresh-Pass-42"})
    stored = (await job_row(engine, job_id)).account_password
    assert "Fresh-Pass-42" not in stored and BOX.decrypt(stored) == "Fresh-Pass-42"


async def set_status(engine: AsyncEngine, job_id: str, status: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(update(t.jobs).where(t.jobs.c.public_id == job_id).values(status=status))


async def test_retry_failed_takes_only_the_failed_jobs_that_match_oldest_first(engine: AsyncEngine) -> None:
    first = await new_job(engine, service_id="100", domain="shop.example.com")
    other_service = await new_job(engine, service_id="200", domain="blog.example.org")
    succeeded = await new_job(engine, service_id="100", domain="shop.example.com")
    later = await new_job(engine, service_id="100", domain="shop.example.com")
    for job_id in (first, other_service, later):
        await make_failed(engine, job_id)
    await set_status(engine, succeeded, "succeeded")
    outbox = await outbox_for(engine, first)

    outcome = await admin_ops.retry_failed_jobs(engine, BOX, service_id="100")
    assert outcome == {"retried": [first, later], "skipped": [], "more": False, "next_cursor": None}
    assert (await job_row(engine, first)).status == "accepted"
    assert [s.status for s in await step_rows(engine, later)][3:] == ["pending", "pending"]  # as retry_job does
    assert await outbox_for(engine, first) == outbox + 1
    assert (await job_row(engine, other_service)).status == "failed"
    assert (await job_row(engine, succeeded)).status == "succeeded"
    # The other filters of the list, and nothing left to retry.
    assert (await admin_ops.retry_failed_jobs(engine, BOX, search="shop"))["retried"] == []
    assert await admin_ops.retry_failed_jobs(engine, BOX, domain="BLOG.example") == {
        "retried": [other_service],
        "skipped": [],
        "more": False,
        "next_cursor": None,
    }


async def test_retry_failed_at_most_limit_says_whether_more_match_and_goes_on_past_those_tried(
    engine: AsyncEngine,
) -> None:
    ids = [await new_job(engine, service_id=f"svc-{i}") for i in range(4)]
    for job_id in reversed(ids):  # failed newest first: the order is still the jobs' own
        await make_failed(engine, job_id)
    first = await admin_ops.retry_failed_jobs(engine, BOX, limit=2)
    assert (first["retried"], first["skipped"], first["more"]) == (ids[:2], [], True)
    # The first failed again at once (bad credentials, say): started over from the oldest, every
    # call would take it again and never reach the rest.
    await make_failed(engine, ids[0])
    second = await admin_ops.retry_failed_jobs(engine, BOX, limit=2, cursor=first["next_cursor"])
    assert second == {"retried": ids[2:], "skipped": [], "more": False, "next_cursor": None}
    again = {"retried": [ids[0]], "skipped": [], "more": False, "next_cursor": None}
    assert await admin_ops.retry_failed_jobs(engine, BOX) == again  # a new round starts at the oldest
    with pytest.raises(InvalidInput) as info:
        await admin_ops.retry_failed_jobs(engine, BOX, limit=0)
    assert info.value.field == "limit"


async def test_retry_failed_skips_a_job_whose_service_has_one_running(engine: AsyncEngine) -> None:
    waiting = await new_job(engine, service_id="77")
    running = await new_job(engine, service_id="77")
    elsewhere = await new_job(engine, service_id="78")
    for job_id in (waiting, elsewhere):
        await make_failed(engine, job_id)
    await set_status(engine, running, "running")
    outcome = await admin_ops.retry_failed_jobs(engine, BOX)
    assert outcome["retried"] == [elsewhere] and outcome["more"] is False
    assert outcome["skipped"] == [
        {
            "job_id": waiting,
            "error": f"job {running} of service 77 is running; retry this one after it has finished",
        }
    ]
    assert (await job_row(engine, waiting)).status == "failed"


async def test_cancel_without_a_worker_finishes_at_once(engine: AsyncEngine) -> None:
    first = await new_job(engine, service_id="77", callback_url=CALLBACK_URL)
    second = await new_job(engine, service_id="77")
    await make_failed(engine, first)
    row = await job_row(engine, first)
    async with engine.begin() as conn:  # the first job half-done and waiting for a retry
        await conn.execute(update(t.jobs).where(t.jobs.c.id == row.id).values(status="running", finished_at=None))
        waiting = update(t.steps).where(t.steps.c.job_id == row.id, t.steps.c.position == 3)
        await conn.execute(waiting.values(status="waiting_retry"))
    woken = await outbox_for(engine, second)
    job = await admin_ops.cancel_job(engine, first, policy=POLICY)
    assert job["status"] == "cancelled" and job["error"] == admin_ops.CANCELLED_BY_ADMIN
    assert job["finished_at"] is not None
    assert [s["status"] for s in job["steps"]] == ["succeeded"] * 3 + ["cancelled", "cancelled"]
    assert [c["status"] for c in job["compensations"]] == ["pending"]  # what to undo stays visible
    assert [(c["type"], c["status"]) for c in job["callbacks"]] == [("job.cancelled", "pending")]
    assert await outbox_for(engine, second) == woken + 1  # the service's next job gets its turn
    with pytest.raises(Conflict, match="only an unfinished job"):
        await admin_ops.cancel_job(engine, first, policy=POLICY)


async def test_cancel_while_a_worker_holds_the_job_only_asks(engine: AsyncEngine) -> None:
    job_id = await new_job(engine)
    row = await job_row(engine, job_id)
    async with engine.begin() as conn:
        await conn.execute(
            update(t.jobs)
            .where(t.jobs.c.id == row.id)
            .values(status="running", lease_owner="w1", lease_until=utcnow() + timedelta(seconds=30))
        )
    job = await admin_ops.cancel_job(engine, job_id, policy=POLICY)
    assert job["status"] == "running" and job["cancel_requested"] is True
    assert all(s["status"] == "pending" for s in job["steps"])
    assert job["callbacks"] == []


async def test_resolve_compensation(engine: AsyncEngine) -> None:
    job_id = await new_job(engine)
    await make_failed(engine, job_id)
    comp_id = (await admin_ops.get_job(engine, job_id))["compensations"][0]["id"]
    with pytest.raises(InvalidInput):
        await admin_ops.resolve_compensation(engine, comp_id, "maybe")
    with pytest.raises(NotFound):
        await admin_ops.resolve_compensation(engine, 999_999)
    record = await admin_ops.resolve_compensation(engine, comp_id, "not_needed")
    assert record["status"] == "not_needed" and record["job_id"] == job_id and record["resolved_at"]
    record = await admin_ops.resolve_compensation(engine, comp_id)
    assert record["status"] == "done"


async def test_resend_last_callback(engine: AsyncEngine) -> None:
    silent = await new_job(engine)
    with pytest.raises(Conflict, match="no callback_url"):
        await admin_ops.resend_last_callback(engine, silent, policy=POLICY)
    job_id = await new_job(engine, callback_url=CALLBACK_URL)
    with pytest.raises(Conflict, match="no callback yet"):
        await admin_ops.resend_last_callback(engine, job_id, policy=POLICY)
    await admin_ops.cancel_job(engine, job_id, policy=POLICY)
    copy = await admin_ops.resend_last_callback(engine, job_id, policy=POLICY)
    assert copy["type"] == "job.cancelled" and copy["status"] == "pending" and copy["id"] != copy["copy_of"]
    refused = await admin_ops.resend_last_callback(engine, job_id, policy=CallbackPolicy([], True))
    assert refused["status"] == "refused" and "ALLOWED_ORIGINS" in refused["last_error"]
    callbacks = (await admin_ops.get_job(engine, job_id))["callbacks"]
    assert [c["status"] for c in callbacks] == ["pending", "pending", "refused"]
    assert [c["attempts"] for c in callbacks] == [0, 0, 0]
    with pytest.raises(NotFound):
        await admin_ops.resend_last_callback(engine, "nope", policy=POLICY)


async def test_a_job_is_retried_while_an_earlier_job_of_its_service_runs_and_waits_for_it(
    engine: AsyncEngine,
) -> None:
    # So a retry of every failed job of a service never trips over the first of them, which a
    # worker may have started by the time the call reaches the second.
    earlier = await new_job(engine, service_id="77")
    failed = await new_job(engine, service_id="77")
    await make_failed(engine, failed)
    await set_status(engine, earlier, "running")

    assert (await admin_ops.retry_job(engine, BOX, failed))["status"] == "accepted"
    waiting = await leases.acquire(engine, failed, "worker-1", 30)
    assert waiting.outcome is not leases.LeaseOutcome.LEASED  # its turn comes after the earlier job's
    await set_status(engine, earlier, "succeeded")
    assert (await leases.acquire(engine, failed, "worker-1", 30)).outcome is leases.LeaseOutcome.LEASED


async def test_a_job_is_not_retried_while_a_later_job_of_its_service_holds_a_lease(engine: AsyncEngine) -> None:
    # Leased but not yet started: a worker took it past its wait for the earlier jobs.
    failed = await new_job(engine, service_id="77")
    later = await new_job(engine, service_id="77")
    await make_failed(engine, failed)
    assert (await leases.acquire(engine, later, "worker-1", 30)).outcome is leases.LeaseOutcome.LEASED
    assert (await job_row(engine, later)).status == "accepted"
    with pytest.raises(Conflict, match=f"job {later} of service 77 is running"):
        await admin_ops.retry_job(engine, BOX, failed)
    assert (await job_row(engine, failed)).status == "failed"


async def test_a_lease_in_the_midst_of_a_retry_of_an_earlier_job_waits_for_it_then_gives_way(pg_url: str) -> None:
    # PostgreSQL only: SQLite runs one writer at a time, so the two cannot overlap there. The
    # retry has checked that no later job is leased and reopened the failed one, but not yet
    # committed: a lease of the later job must not pass on the snapshot's "failed".
    engine = create_engine(pg_url)
    try:
        failed = await new_job(engine, service_id="79")
        later = await new_job(engine, service_id="79")
        await make_failed(engine, failed)
        async with engine.connect() as holder:
            # Holds the retry at its last write (the wake-up), after its checks and its update.
            hold = await holder.begin()
            await holder.execute(text("LOCK TABLE outbox IN SHARE MODE"))
            retry = asyncio.create_task(admin_ops.retry_job(engine, BOX, failed))
            await until(lambda: backends_waiting_for_a_lock(engine, 1), or_done=retry)
            lease = asyncio.create_task(leases.acquire(engine, later, "worker-1", 30))
            await until(lambda: backends_waiting_for_a_lock(engine, 2), or_done=lease)
            await hold.rollback()
        assert (await retry)["status"] == "accepted"
        assert (await lease).outcome is leases.LeaseOutcome.BLOCKED
        assert (await job_row(engine, later)).lease_owner is None
    finally:
        await engine.dispose()


async def backends_waiting_for_a_lock(engine: AsyncEngine, count: int) -> bool:
    async with engine.connect() as conn:
        waiting = await conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
        return int(waiting.scalar_one()) >= count


async def until(condition: Callable[[], Awaitable[bool]], *, or_done: asyncio.Task[Any]) -> None:
    """Until ``condition`` holds or the task has finished (then it did not wait at all)."""
    for _ in range(500):
        if or_done.done() or await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("neither waiting nor done after 10 s")


async def test_retry_failed_leaves_a_job_a_later_order_replaces(engine: AsyncEngine) -> None:
    # The billing platform sent the failed order again, changed, naming the one it replaces.
    replaced_event = parse_event(service_create(service_id="90", domain="taken.example.com"))
    replaced_id = (await store_event(engine, BOX, "whmcs-90-k1", replaced_event)).job_id
    await make_failed(engine, replaced_id)
    order = service_create(service_id="90", domain="mine.example.com")
    order["data"]["replaces"] = "whmcs-90-k1"
    replacing = (await store_event(engine, BOX, "whmcs-90-k2", parse_event(order))).job_id
    await make_failed(engine, replacing)  # failed too, for its own reasons

    outcome = await admin_ops.retry_failed_jobs(engine, BOX, service_id="90")
    why = f"job {replacing} replaces it (its order was sent again, changed)"
    assert outcome["retried"] == [replacing]
    assert outcome["skipped"] == [{"job_id": replaced_id, "error": why}]
    assert (await job_row(engine, replaced_id)).status == "failed"
    # One at a time, an admin who means it still can.
    assert (await admin_ops.retry_job(engine, BOX, replaced_id))["status"] == "accepted"
