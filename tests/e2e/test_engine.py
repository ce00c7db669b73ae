"""The job engine end to end: webhook → queue → workers → simulator → callbacks."""

from __future__ import annotations

import asyncio

import pytest
from engine_harness import ACCOUNT, running_bridge
from orders import DB_PASSWORD, service_create
from sqlalchemy import select, update

from bridge.domain.events import OrderEvent
from bridge.panel.simulator import PanelSimulator
from bridge.store import admin_ops
from bridge.store import tables as t
from bridge.store.intake import store_event
from bridge.store.job_view import callback_body
from bridge.store.tables import metadata
from bridge.store.types import utcnow


async def dump_every_table(bridge) -> str:  # type: ignore[no-untyped-def]
    """Every row of every table, as text: where a secret in clear would show."""
    rows = []
    async with bridge.runtime.engine.connect() as conn:
        for table in metadata.sorted_tables:
            rows += [repr(tuple(row)) for row in (await conn.execute(select(table))).all()]
    return "\n".join(rows)


def order(bridge, **kw):  # type: ignore[no-untyped-def]
    return service_create(username=ACCOUNT[0], password=ACCOUNT[1], callback_url=bridge.callback_url, **kw)


async def test_happy_path_provisions_everything_once_and_calls_back(deployment: dict[str, str]) -> None:
    async with running_bridge(**deployment) as bridge:
        status, answer = await bridge.send(order(bridge))
        assert status == 202
        job = await bridge.wait_for(answer["job_id"], "succeeded")
        assert [s["status"] for s in job["steps"]] == ["succeeded"] * 5
        acct = bridge.sim.snapshot()["accounts"]["john"]
        assert [d["domain"] for d in acct["domains"]] == ["example.com"]
        assert acct["databases"] == ["john_wp"]
        assert acct["cron_lines"] == ["*/5 * * * * /usr/bin/php /home/john/public_html/cron.php"]
        assert bridge.sim.snapshot()["certificates"]["example.com"] == "issued"
        types = await bridge.wait_callbacks(answer["job_id"], 2)
        assert types == ["job.started", "job.succeeded"]
        done = next(c for c in bridge.receiver.received if c["type"] == "job.succeeded")
        assert done["data"]["status"] == "succeeded"
        assert done["data"]["domain"] == "example.com" and done["data"]["account"] == "john"
        assert done["data"] == callback_body(await bridge.job(answer["job_id"], detail=False), "job.succeeded")["data"]
        assert done["data"]["steps"][1]["result"]["domain_id"] is not None
        everything = str(bridge.receiver.received) + await dump_every_table(bridge)
        for secret in (DB_PASSWORD, ACCOUNT[1]):
            assert secret not in everything
        assert all(c["status"] == "not_needed" for c in job["compensations"])


async def test_transient_faults_are_retried_until_the_order_succeeds(deployment: dict[str, str]) -> None:
    async with running_bridge(**deployment) as bridge:
        bridge.sim.inject_fault("account_info", "html500")
        bridge.sim.inject_fault("add_domain", "error:Failed to add mapping for 'example.com'.")
        bridge.sim.inject_fault("db_make", "reset")
        status, answer = await bridge.send(order(bridge))
        job = await bridge.wait_for(answer["job_id"], "succeeded")
        attempts = {s["kind"]: s["attempts"] for s in job["steps"]}
        assert attempts["check_account"] == 2
        assert attempts["add_domain"] == 2
        assert attempts["create_database"] == 2
        acct = bridge.sim.snapshot()["accounts"]["john"]
        assert [d["domain"] for d in acct["domains"]] == ["example.com"]
        assert acct["databases"] == ["john_wp"] and acct["db_users"] == ["john_wpuser"]


async def test_an_answer_after_the_timeout_is_reconciled_not_repeated(deployment: dict[str, str]) -> None:
    async with running_bridge(**deployment) as bridge:
        # The panel adds the domain, but answers only after the client has given up (timeout 2 s).
        bridge.sim.inject_fault("add_domain", "late:3")
        status, answer = await bridge.send(order(bridge, ssl=False, databases=[], cron_jobs=[]))
        job = await bridge.wait_for(answer["job_id"], "succeeded", timeout=30)
        add = next(s for s in job["steps"] if s["kind"] == "add_domain")
        assert add["attempts"] == 2 and add["result"]["domain_id"] is not None
        outcomes = [a["outcome"] for a in job["attempts"] if a["step"] == "add_domain"]
        assert outcomes == ["unknown", "reconciled"]
        counters = bridge.sim.snapshot()["counters"]
        assert counters["add_domain"] == 1  # read back, never sent twice
        assert [d["domain"] for d in bridge.sim.snapshot()["accounts"]["john"]["domains"]] == ["example.com"]


@pytest.mark.parametrize(
    ("call", "kind"), [("add_domain", "add_domain"), ("db_make", "create_database"), ("cronjob_add", "add_cron_job")]
)
async def test_an_earlier_call_that_lands_after_the_read_back_is_reconciled_not_a_conflict(
    deployment: dict[str, str], call: str, kind: str
) -> None:
    # With no quiet period after the first call, the bridge sends again while the panel still works on it.
    async with running_bridge(**deployment, panel_options={"quiet_after_unknown_s": 0}) as bridge:
        # The first call works 3 s before it makes its change; the client gives up at 2 s.
        bridge.sim.set_latency(3.0, call)
        status, answer = await bridge.send(order(bridge, ssl=False))
        for _ in range(500):  # until the panel is working on the first call (it has read its delay)
            if any(c["call"] == call for c in bridge.sim.snapshot()["calls"]):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        # The read-back finds nothing yet; the call sent after it is worked 1.5 s, past the moment
        # the first one made the change, and so is answered "already exists".
        bridge.sim.set_latency(1.5, call)
        job = await bridge.wait_for(answer["job_id"], "succeeded", "failed", timeout=30)
        assert job["status"] == "succeeded", job["error"]
        assert [a["outcome"] for a in job["attempts"] if a["step"] == kind] == ["unknown", "reconciled"]
        snapshot = bridge.sim.snapshot()
        assert snapshot["counters"][call] == 2
        acct = snapshot["accounts"]["john"]
        assert [d["domain"] for d in acct["domains"]] == ["example.com"]
        assert acct["databases"] == ["john_wp"] and acct["db_users"] == ["john_wpuser"]
        assert acct["cron_lines"] == ["*/5 * * * * /usr/bin/php /home/john/public_html/cron.php"]
        actions = {c["step"]: c["action"] for c in job["compensations"]}
        domain_id = next(s for s in job["steps"] if s["kind"] == "add_domain")["result"]["domain_id"]
        assert domain_id == acct["domains"][0]["id"]
        assert actions["add_domain"] == f"remove domain example.com (panel id {domain_id}) from account john"
        assert set(actions) == {"add_domain", "create_database", "add_cron_job"}


async def test_no_mutating_call_goes_to_a_panel_still_working_on_one_given_up_on(
    deployment: dict[str, str],
) -> None:
    sim = PanelSimulator()
    sim.add_account("mary", "Mary-Panel-Pass-2")
    # Quiet for 2.5 s (scaled by the tests' 0.001) after a call that timed out at 2 s.
    async with running_bridge(**deployment, sim=sim, panel_options={"quiet_after_unknown_s": 2500}) as bridge:
        # The panel works 3 s on john's add_domain; the client gives up at 2 s.
        sim.set_latency(3.0, "add_domain")
        first = (await bridge.send(order(bridge, ssl=False, databases=[], cron_jobs=[])))[1]["job_id"]
        for _ in range(500):  # until the panel is working on it (it has read its delay)
            if any(c["call"] == "add_domain" for c in sim.snapshot()["calls"]):
                break
            await asyncio.sleep(0.01)
        sim.set_latency(0.0, "add_domain")
        event = service_create(
            service_id="other", username="mary", password="Mary-Panel-Pass-2", domain="mary.example.com", ssl=False
        )
        event["data"].update(databases=[], cron_jobs=[])
        second = (await bridge.send(event))[1]["job_id"]
        one = await bridge.wait_for(first, "succeeded", "failed", timeout=30)
        two = await bridge.wait_for(second, "succeeded", "failed", timeout=30)
        quiet = {"panel": "default", "reason": "no_answer"}
        assert bridge.runtime.metrics.registry.get_sample_value("bridge_panel_quiet_periods_total", quiet) == 1
    assert (one["status"], two["status"]) == ("succeeded", "succeeded"), (one["error"], two["error"])
    # Mary's add_domain waited for the panel to finish john's, which was then read back.
    snapshot = sim.snapshot()
    assert snapshot["max_concurrent_mutations"] == 1
    assert [a["outcome"] for a in one["attempts"] if a["step"] == "add_domain"] == ["unknown", "reconciled"]
    assert snapshot["counters"]["add_domain"] == 2


async def test_a_panel_that_answered_even_with_an_error_page_is_not_kept_quiet(deployment: dict[str, str]) -> None:
    # An error page comes once the panel is done with the call: unknown effect, but nothing in flight.
    async with running_bridge(**deployment, panel_options={"quiet_after_unknown_s": 600_000}) as bridge:
        bridge.sim.inject_fault("add_domain", "html500")
        status, answer = await bridge.send(order(bridge, ssl=False, databases=[], cron_jobs=[]))
        job = await bridge.wait_for(answer["job_id"], "succeeded", "failed", timeout=30)
        assert job["status"] == "succeeded", job["error"]
        assert next(a["outcome"] for a in job["attempts"] if a["step"] == "add_domain") == "unknown"
        quiet = {"panel": "default", "reason": "no_answer"}
        assert bridge.runtime.metrics.registry.get_sample_value("bridge_panel_quiet_periods_total", quiet) is None


async def test_a_permanent_failure_fails_the_job_with_compensation_records(deployment: dict[str, str]) -> None:
    async with running_bridge(**deployment) as bridge:
        bridge.sim.inject_fault("db_make", "error:Access denied for user 'root'@'localhost'")
        status, answer = await bridge.send(order(bridge))
        job = await bridge.wait_for(answer["job_id"], "failed")
        by_kind = {s["kind"]: s for s in job["steps"]}
        assert by_kind["create_database"]["status"] == "failed"
        assert by_kind["add_cron_job"]["status"] == "pending"
        assert "Access denied" in job["error"]
        actions = [(c["step"], c["status"]) for c in job["compensations"]]
        assert actions == [("add_domain", "pending")]
        domain_id = by_kind["add_domain"]["result"]["domain_id"]
        assert (
            job["compensations"][0]["action"] == f"remove domain example.com (panel id {domain_id}) from account john"
        )
        types = await bridge.wait_callbacks(answer["job_id"], 2)
        assert types == ["job.started", "job.failed"]
        failed = next(c for c in bridge.receiver.received if c["type"] == "job.failed")
        assert failed["data"]["compensations"][0]["action"].startswith("remove domain example.com")
        assert failed["data"]["error"] == job["error"]
        # The worker writes the body from the job it holds: it must say what the admin read says.
        assert failed["data"] == callback_body(await bridge.job(answer["job_id"], detail=False), "job.failed")["data"]


async def test_bad_credentials_fail_the_job_after_one_call(deployment: dict[str, str]) -> None:
    async with running_bridge(**deployment) as bridge:
        status, answer = await bridge.send(
            service_create(username="john", password="wrong-password", callback_url=bridge.callback_url)
        )
        job = await bridge.wait_for(answer["job_id"], "failed")
        assert "credentials" in job["error"]
        assert len(job["panel_calls"]) == 1
        assert sum(bridge.sim.snapshot()["counters"].values()) <= 2


async def test_repeated_bad_credentials_open_the_breaker_before_the_firewall_bans(deployment: dict[str, str]) -> None:
    # A delay scale of 0.01 keeps the breaker open for 6 s: long enough to see the jobs wait.
    async with running_bridge(**deployment, retry_delay_scale=0.01) as bridge:
        job_ids = []
        for n in range(14):  # more than the 12 failed logins the panel's firewall allows
            event = service_create(service_id=f"s{n}", username="john", password="wrong", domain=f"d{n}.example.com")
            job_ids.append((await bridge.send(event))[1]["job_id"])
        for _ in range(200):
            if sum([(await bridge.job(j))["status"] == "failed" for j in job_ids]) >= 3:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        snapshot = bridge.sim.snapshot()
        assert not snapshot["banned"]
        # Three failed logins open the breaker; the remaining jobs wait instead of calling.
        docs = [await bridge.job(job_id) for job_id in job_ids]
        calls = sum(len(d["panel_calls"]) for d in docs)
        assert calls == 3, [d["status"] for d in docs]
        waiting = [d for d in docs if d["status"] != "failed"]
        assert len(waiting) == 11
        assert all("circuit breaker" in (d["steps"][0]["error"] or "") for d in waiting)
        # Held back by the breaker, nothing was sent: no attempt counts against the retry budget.
        assert all(d["steps"][0]["attempts"] == 0 for d in waiting)


async def test_ssl_is_deferred_then_issued_and_reported_with_job_updated(deployment: dict[str, str]) -> None:
    async with running_bridge(**deployment) as bridge:
        bridge.sim.fail_ssl("example.com", 2)
        status, answer = await bridge.send(order(bridge))
        # The order goes through while the certificate waits (shown by the first job.succeeded below).
        job = await bridge.wait_for(answer["job_id"], "succeeded", settled=True)
        ssl = next(s for s in job["steps"] if s["kind"] == "issue_ssl")
        assert ssl["status"] == "succeeded" and ssl["attempts"] == 3
        assert bridge.sim.snapshot()["certificates"]["example.com"] == "issued"
        types = await bridge.wait_callbacks(answer["job_id"], 3)
        assert types[:2] == ["job.started", "job.succeeded"]
        assert "job.updated" in types
        first_success = next(c for c in bridge.receiver.received if c["type"] == "job.succeeded")
        assert first_success["data"]["deferred"] == ["issue_ssl"]
        updated = next(c for c in bridge.receiver.received if c["type"] == "job.updated")
        assert updated["data"]["deferred"] == []
        assert updated["data"] == callback_body(await bridge.job(answer["job_id"], detail=False), "job.updated")["data"]


async def test_a_retry_after_an_admin_undid_the_domain_adds_it_and_its_certificate_again(
    deployment: dict[str, str],
) -> None:
    async with running_bridge(**deployment) as bridge:
        bridge.sim.inject_fault("db_make", "error:Access denied for user 'root'@'localhost'")
        status, answer = await bridge.send(order(bridge, cron_jobs=[]))
        job_id = answer["job_id"]
        failed = await bridge.wait_for(job_id, "failed")
        # The admin follows the compensation record: removes the domain on the panel, marks it done.
        bridge.sim.state.accounts["john"].domains.clear()
        undo = next(c for c in failed["compensations"] if c["step"] == "add_domain")
        await admin_ops.resolve_compensation(bridge.runtime.engine, undo["id"], "done")
        await admin_ops.retry_job(bridge.runtime.engine, bridge.runtime.box, job_id)
        job = await bridge.wait_for(job_id, "succeeded", settled=True)
    snapshot = bridge.sim.snapshot()
    assert [d["domain"] for d in snapshot["accounts"]["john"]["domains"]] == ["example.com"]
    assert snapshot["certificates"]["example.com"] == "issued"
    assert snapshot["counters"]["add_domain"] == 2 and snapshot["counters"]["domain_issue_ssl"] == 2
    domain_records = [c["status"] for c in job["compensations"] if c["step"] == "add_domain"]
    assert domain_records == ["done", "not_needed"]  # the undo kept; the domain added again not to undo


async def test_mutating_calls_to_one_panel_never_overlap(deployment: dict[str, str]) -> None:
    sim = PanelSimulator()
    for n in range(10):
        sim.add_account(f"user{n}", f"Password-{n}-xyz")
    sim.set_latency(0.05)
    async with running_bridge(**deployment, sim=sim) as bridge:
        ids = []
        for n in range(10):
            event = service_create(
                service_id=f"svc{n}", username=f"user{n}", password=f"Password-{n}-xyz", domain=f"site{n}.example.com"
            )
            ids.append((await bridge.send(event))[1]["job_id"])
        for job_id in ids:
            await bridge.wait_for(job_id, "succeeded", timeout=60)
        snapshot = bridge.sim.snapshot()
        assert snapshot["max_concurrent_mutations"] == 1
        assert snapshot["counters"]["add_domain"] == 10


async def test_callbacks_are_retried_until_the_receiver_is_back(deployment: dict[str, str]) -> None:
    async with running_bridge(**deployment) as bridge:
        bridge.receiver.fail_next = 3
        status, answer = await bridge.send(order(bridge))
        await bridge.wait_for(answer["job_id"], "succeeded")
        types = await bridge.wait_callbacks(answer["job_id"], 2, timeout=30)
        assert sorted(types) == ["job.started", "job.succeeded"]
        job = await bridge.job(answer["job_id"])
        deliveries = [d for c in job["callbacks"] for d in c["deliveries"]]
        assert len(deliveries) == 5
        assert [d["http_status"] for d in deliveries].count(503) == 3
        assert all(c["status"] == "delivered" for c in job["callbacks"])
        # Redeliveries of one callback carry its one webhook-id, so receivers can deduplicate.
        ids = bridge.receiver.delivery_ids
        assert len(ids) == 5 and len(set(ids)) == 2
        assert {c["id"] for c in job["callbacks"]} == set(ids)


async def test_a_callback_url_outside_the_allowed_origins_is_never_called(deployment: dict[str, str]) -> None:
    async with running_bridge(**deployment) as bridge:
        outside = bridge.callback_url.replace("127.0.0.1", "localhost")
        status, answer = await bridge.send(
            service_create(username=ACCOUNT[0], password=ACCOUNT[1], callback_url=outside)
        )
        job = await bridge.wait_for(answer["job_id"], "succeeded")
        await asyncio.sleep(0.3)
        assert bridge.receiver.received == []
        assert job["callbacks"] and all(c["status"] == "refused" and c["deliveries"] == [] for c in job["callbacks"])


async def test_jobs_of_one_service_run_in_arrival_order(deployment: dict[str, str]) -> None:
    async with running_bridge(**deployment) as bridge:
        bridge.sim.set_latency(0.05)
        first = (await bridge.send(order(bridge, service_id="same", ssl=False)))[1]["job_id"]
        second = (
            await bridge.send(
                {
                    "type": "domain.add",
                    "data": {
                        "service_id": "same",
                        "account": {"username": ACCOUNT[0], "password": ACCOUNT[1]},
                        "domain": "second.example.com",
                    },
                }
            )
        )[1]["job_id"]
        one = await bridge.wait_for(first, "succeeded")
        two = await bridge.wait_for(second, "succeeded")
        assert one["finished_at"] <= min(a["started_at"] for a in two["attempts"])
        # The second was woken by the first's finish (a wake-up of its own), not left to the scheduler.
        async with bridge.runtime.engine.connect() as conn:
            wake_ups = await conn.execute(select(t.outbox.c.created_at).where(t.outbox.c.job_public_id == second))
            assert one["finished_at"] in [w.isoformat() for w in wake_ups.scalars()]


async def test_a_lost_wake_up_only_delays_the_job(deployment: dict[str, str]) -> None:
    async with running_bridge(**deployment) as bridge:
        event = OrderEvent.model_validate(order(bridge, ssl=False))
        stored = await store_event(bridge.runtime.engine, bridge.runtime.box, "msg_lost", event)
        # As if the relay had published the wake-up and the broker had lost it.
        async with bridge.runtime.engine.begin() as conn:
            await conn.execute(update(t.outbox).values(sent_at=utcnow()))
        job = await bridge.wait_for(stored.job_id, "succeeded", timeout=30)
        assert [s["status"] for s in job["steps"]] == ["succeeded"] * 4


async def test_a_worker_whose_lease_ran_out_during_a_call_writes_and_sends_nothing_more(
    deployment: dict[str, str],
) -> None:
    # An account read outlasts the lease: another delivery of the job, in the same worker process,
    # leases it again and runs it on. Only that one may go on; the first may not send add_domain too.
    sim = PanelSimulator()
    timeouts = {"timeout_s": 5.0, "read_timeout_s": 5.0}
    async with running_bridge(**deployment, sim=sim, lease_s=1.0, panel_options=timeouts) as bridge:
        earlier = await bridge.send(order(bridge, service_id="earlier", domain="one.example.com", ssl=False))
        await bridge.wait_for(earlier[1]["job_id"], "succeeded")
        sim.inject_fault("account_info", "late:3")
        sim.set_latency(3.0, "add_domain")
        status, answer = await bridge.send(
            order(bridge, domain="two.example.com", ssl=False, databases=[], cron_jobs=[])
        )
        job = await bridge.wait_for(answer["job_id"], "succeeded", "failed", timeout=30)
        await asyncio.sleep(4)  # the first delivery's read has come back meanwhile
        assert job["status"] == "succeeded", job["error"]
        assert [c["call"] for c in sim.snapshot()["calls"]].count("add_domain") == 2


async def test_a_job_waiting_for_its_turn_at_the_panel_keeps_its_lease(deployment: dict[str, str]) -> None:
    # A certificate issuance holds the panel's gate for longer than the lease of the add_domain
    # queued behind it. Waiting is not trying: the step is sent once, after one wait, and counts
    # one attempt, not one more for every lease that ran out in the queue.
    sim = PanelSimulator()
    sim.add_account("mary", "Mary-Panel-Pass-2")
    sim.set_latency(5.0, "domain_issue_ssl")
    timeouts = {"timeout_s": 1.0, "read_timeout_s": 1.0, "ssl_timeout_s": 10.0}
    async with running_bridge(**deployment, sim=sim, lease_s=1.0, panel_options=timeouts) as bridge:
        first = (await bridge.send(order(bridge, databases=[], cron_jobs=[])))[1]["job_id"]
        for _ in range(200):
            if any(c["call"] == "domain_issue_ssl" and c["finished"] is None for c in sim.snapshot()["calls"]):
                break
            await asyncio.sleep(0.02)
        event = service_create(
            service_id="other", username="mary", password="Mary-Panel-Pass-2", domain="mary.example.com", ssl=False
        )
        event["data"].update(databases=[], cron_jobs=[])
        second = (await bridge.send(event))[1]["job_id"]
        job = await bridge.wait_for(second, "succeeded", "failed", timeout=30)
        await bridge.wait_for(first, "succeeded", timeout=30)
    add = next(s for s in job["steps"] if s["kind"] == "add_domain")
    outcomes = [a["outcome"] for a in job["attempts"] if a["step"] == "add_domain"]
    assert (add["attempts"], outcomes) == (1, ["succeeded"])
    assert [c["call"] for c in sim.snapshot()["calls"] if c["account"] == "mary"].count("add_domain") == 1
