"""The admin API (CONTRACT.md §5) against the whole bridge and the panel simulator."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from admin_helpers import (
    AUTH,
    add_domain_being_sent,
    admin_bridge,
    failed_at_database,
    failed_job_of_its_own,
    order,
    run_state,
    wait_until,
)
from aiohttp.test_utils import TestClient, TestServer
from conftest import ADMIN_TOKEN
from engine_harness import ACCOUNT, Bridge
from orders import ACCOUNT_PASSWORD, DB_PASSWORD
from raw_http import raw_request

from bridge.admin.auth import ADMIN_AUTH, UNAUTHORIZED, FailureLimiter
from bridge.admin.openapi import routed_operations
from bridge.bootstrap import Role, build_app, open_runtime
from bridge.logs import quiet_malformed_requests
from bridge.settings import Settings
from bridge.store.admin_queries import encode_cursor

RETRY_FAILED = "/admin/api/jobs/retry-failed"


def job_endpoints(job_id: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/admin/api/jobs/{job_id}"),
        ("POST", f"/admin/api/jobs/{job_id}/retry"),
        ("POST", f"/admin/api/jobs/{job_id}/cancel"),
        ("POST", f"/admin/api/jobs/{job_id}/callbacks/resend"),
    ]


def endpoints(job_id: str) -> list[tuple[str, str]]:
    return [
        ("GET", "/admin/api/jobs"),
        ("POST", RETRY_FAILED),
        *job_endpoints(job_id),
        ("POST", "/admin/api/compensations/1/resolve"),
    ]


async def call(bridge: Bridge, method: str, path: str, **kw: Any) -> tuple[int, Any, str]:
    kw.setdefault("headers", AUTH)
    response = await bridge.client.request(method, path, **kw)
    text = await response.text()
    body = await response.json() if response.content_type == "application/json" else None
    return response.status, body, text


async def test_every_endpoint_refuses_a_missing_or_wrong_token_alike(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        job_id = await failed_at_database(bridge)
        listed = {(m, p.replace(job_id, "{job_id}").replace("/1/", "/{id}/")) for m, p in endpoints(job_id)}
        api_routes = {op for op in routed_operations(bridge.client.app) if op[1].startswith("/admin/api/")}
        assert listed == api_routes  # a new endpoint must be added here, and so gets this test
        for method, path in endpoints(job_id):
            bridge.client.app[ADMIN_AUTH].limiter = FailureLimiter()  # this test is about 401, not 429
            for headers in (
                {},
                {"Authorization": "Bearer wrong-token"},
                {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
                {"Authorization": f"Basic {ADMIN_TOKEN}"},
                {"Authorization": "Bearer "},
            ):
                status, body, text = await call(bridge, method, path, headers=headers)
                assert (status, body) == (401, UNAUTHORIZED), (method, path, headers)
                assert job_id not in text and "example.com" not in text
        assert (await bridge.job(job_id))["status"] == "failed"  # nothing was done


async def test_no_configured_token_refuses_everyone(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url, admin_tokens=[]) as bridge:
        for headers in ({}, AUTH, {"Authorization": "Bearer "}):
            assert (await call(bridge, "GET", "/admin/api/jobs", headers=headers))[:2] == (401, UNAUTHORIZED)


async def test_repeated_wrong_tokens_are_rate_limited(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url, admin_tokens=[ADMIN_TOKEN, "second-token-abcdef"]) as bridge:
        assert (await call(bridge, "GET", "/admin/api/jobs", headers={"Authorization": "Bearer second-token-abcdef"}))[
            0
        ] == 200
        for _ in range(10):
            assert (await call(bridge, "GET", "/admin/api/jobs", headers={"Authorization": "Bearer guess"}))[0] == 401
        response = await bridge.client.get("/admin/api/jobs", headers={"Authorization": "Bearer guess"})
        assert response.status == 429 and 1 <= int(response.headers["Retry-After"]) <= 60
        # Even the right token waits: the address is blocked, not the guess.
        assert (await call(bridge, "GET", "/admin/api/jobs"))[0] == 429


async def test_retry_resumes_without_repeating_an_effect(deployment: dict[str, str]) -> None:
    async with admin_bridge(**deployment) as bridge:
        job_id = await failed_at_database(bridge)
        status, body, _ = await call(bridge, "POST", f"/admin/api/jobs/{job_id}/cancel")
        assert status == 409 and "only an unfinished job" in body["error"]
        failed = await bridge.job(job_id)
        assert [c["step"] for c in failed["compensations"]] == ["add_domain"]
        status, body, _ = await call(bridge, "POST", f"/admin/api/jobs/{job_id}/retry")
        assert status == 202 and body["job_id"] == job_id and body["status"] in ("accepted", "running", "succeeded")
        done = await bridge.wait_for(job_id, "succeeded")
        counters = bridge.sim.snapshot()["counters"]
        assert counters["add_domain"] == 1  # the effect that took place before the failure is not repeated
        assert counters["db_make"] == 2
        assert bridge.sim.snapshot()["accounts"]["john"]["databases"] == ["john_wp"]
        assert [s["status"] for s in done["steps"]] == ["succeeded"] * 5
        status, body, _ = await call(bridge, "POST", f"/admin/api/jobs/{job_id}/retry")
        assert status == 409 and "only a failed job can be retried" in body["error"]
        types = await bridge.wait_callbacks(job_id, 4)
        assert types == ["job.started", "job.failed", "job.started", "job.succeeded"]


async def test_retry_with_fresh_credentials(deployment: dict[str, str]) -> None:
    async with admin_bridge(**deployment) as bridge:
        status, answer = await bridge.send(order(bridge, password=ACCOUNT_PASSWORD))
        job_id = answer["job_id"]
        failed = await bridge.wait_for(job_id, "failed")
        assert "credentials" in failed["error"].lower()
        status, body, text = await call(bridge, "GET", f"/admin/api/jobs/{job_id}")
        assert status == 200 and body["panel_calls"] and body["attempts"]
        assert ACCOUNT_PASSWORD not in text and DB_PASSWORD not in text
        wrong_user = {"account": {"username": "mary", "password": ACCOUNT[1]}}
        status, body, _ = await call(bridge, "POST", f"/admin/api/jobs/{job_id}/retry", json=wrong_user)
        assert status == 422 and body["fields"][0]["loc"] == "account.username"
        fresh = {"account": {"username": ACCOUNT[0], "password": ACCOUNT[1]}}
        status, body, text = await call(bridge, "POST", f"/admin/api/jobs/{job_id}/retry", json=fresh)
        assert status == 202 and ACCOUNT[1] not in text
        await bridge.wait_for(job_id, "succeeded")
        assert bridge.sim.snapshot()["counters"]["add_domain"] == 1
        text = (await call(bridge, "GET", f"/admin/api/jobs/{job_id}"))[2]
        for secret in (ACCOUNT_PASSWORD, ACCOUNT[1], DB_PASSWORD):
            assert secret not in text
        listed = (await call(bridge, "GET", "/admin/api/jobs"))[2]
        assert ACCOUNT[1] not in listed and ACCOUNT_PASSWORD not in listed


async def test_retry_failed_takes_the_failed_jobs_that_match_oldest_first_a_limit_at_a_time(db_url: str) -> None:
    async with admin_bridge(db_url) as bridge:
        before = await failed_job_of_its_own(bridge, 0, service_id="40")
        since = datetime.now(UTC).isoformat()
        # One service each: a worker may start a retried job before the next of its service is retried.
        ids = [await failed_job_of_its_own(bridge, n, service_id=f"4{n}") for n in (1, 2, 3)]
        done = order(bridge, service_id="44", domain="done.example.com", ssl=False, databases=[], cron_jobs=[])
        succeeded = await bridge.wait_for((await bridge.send(done))[1]["job_id"], "succeeded")

        status, body, _ = await call(bridge, "POST", RETRY_FAILED, params={"from": since, "limit": "2"})
        assert (status, body["retried"], body["skipped"], body["more"]) == (202, ids[:2], [], True)
        going_on = {"from": since, "status": "failed", "cursor": body["next_cursor"]}
        status, body, _ = await call(bridge, "POST", RETRY_FAILED, params=going_on)
        assert (status, body) == (202, {"retried": ids[2:], "skipped": [], "more": False, "next_cursor": None})
        for job_id in ids:
            await bridge.wait_for(job_id, "succeeded")
        assert (await bridge.job(before))["status"] == "failed"
        assert run_state(await bridge.job(succeeded["job_id"])) == run_state(succeeded)
        # The route is not read as a job id, and the job routes still work beside it.
        assert (await call(bridge, "GET", f"/admin/api/jobs/{ids[0]}"))[0] == 200
        status, body, _ = await call(bridge, "POST", f"/admin/api/jobs/{before}/retry")
        assert status == 202 and body["job_id"] == before


async def test_retry_failed_skips_a_job_whose_service_has_one_running(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        waiting = await failed_job_of_its_own(bridge, 1, service_id="77")
        elsewhere = await failed_job_of_its_own(bridge, 2, service_id="78")
        running = await add_domain_being_sent(bridge, service_id="77")
        status, body, _ = await call(bridge, "POST", RETRY_FAILED)
        assert status == 202 and body["retried"] == [elsewhere] and body["more"] is False
        reason = f"job {running} of service 77 is running; retry this one after it has finished"
        assert body["skipped"] == [{"job_id": waiting, "error": reason}]
        assert (await bridge.job(waiting))["status"] == "failed"
        await bridge.wait_for(running, "succeeded")
        status, body, _ = await call(bridge, "POST", RETRY_FAILED, data=b"")
        assert (status, body) == (202, {"retried": [waiting], "skipped": [], "more": False, "next_cursor": None})
        await bridge.wait_for(waiting, "succeeded")


async def test_retry_failed_names_what_it_does_not_take(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        job_id = await failed_at_database(bridge)
        for params, named in [
            ({"status": "succeeded"}, "status"),
            ({"status": "done"}, "status"),
            ({"cursor": "not-a-cursor"}, "cursor"),
            ({"stauts": "failed"}, "stauts"),
            # Given empty, a filter would match every failed job: refused, not taken as "any".
            ({"service_id": ""}, "service_id"),
            ({"domain": " "}, "domain"),
            ({"q": ""}, "q"),
            ({"limit": "0"}, "limit"),
            ({"q": "\x00"}, "q"),
            ({"from": "yesterday"}, "from"),
        ]:
            status, body, _ = await call(bridge, "POST", RETRY_FAILED, params=params)
            assert status == 422 and body["fields"][0]["loc"] == named, (params, status, body)
            assert body["error"].startswith(f"{named}: ")
        status, body, _ = await call(bridge, "POST", RETRY_FAILED, json={"limit": 1})
        assert status == 422 and body["fields"][0]["loc"] == "body.limit"
        assert (await call(bridge, "POST", RETRY_FAILED, data=b"{not json"))[0] == 400
        twice = b'{"account": {"username": "john", "password": "a-new-pass", "password": "another"}}'
        status, body, _ = await call(bridge, "POST", f"/admin/api/jobs/{job_id}/retry", data=twice)
        assert status == 422 and body["fields"][0]["loc"] == "body.account.password"
        assert (await bridge.job(job_id))["status"] == "failed"  # nothing was retried


async def test_cancel_waits_for_the_running_step_and_keeps_what_to_undo(deployment: dict[str, str]) -> None:
    async with admin_bridge(**deployment) as bridge:
        bridge.sim.set_latency(1.0, "add_domain")
        first = (await bridge.send(order(bridge, service_id="900")))[1]["job_id"]
        second = (await bridge.send(order(bridge, service_id="900", domain="second.example.com")))[1]["job_id"]

        async def add_domain_running() -> bool:
            return (await bridge.job(first))["steps"][1]["status"] == "running"

        await wait_until(add_domain_running)
        # The second job waits its turn (no worker holds it): cancelled at once.
        status, body, _ = await call(bridge, "POST", f"/admin/api/jobs/{second}/cancel")
        assert status == 200 and body["status"] == "cancelled"
        assert {s["status"] for s in body["steps"]} == {"cancelled"}
        # The first is being sent to the panel: only asked to stop.
        status, body, _ = await call(bridge, "POST", f"/admin/api/jobs/{first}/cancel")
        assert status == 202 and body["cancel_requested"] is True and body["status"] == "running"
        job = await bridge.wait_for(first, "cancelled")
        assert job["error"] == "cancelled by an admin"
        assert [s["status"] for s in job["steps"]] == ["succeeded", "succeeded", "cancelled", "cancelled", "cancelled"]
        assert [(c["step"], c["status"]) for c in job["compensations"]] == [("add_domain", "pending")]
        counters = bridge.sim.snapshot()["counters"]
        assert counters.get("domain_issue_ssl", 0) == 0 and counters.get("db_make", 0) == 0
        # The step after the one that was running never reached the panel, and is not left looking
        # as if it might have (an attempt it started is closed as never sent).
        ssl = job["steps"][2]
        assert ssl["in_flight"] is False
        assert all(a["outcome"] == "abandoned" for a in job["attempts"] if a["step"] == "issue_ssl")
        assert (await call(bridge, "POST", f"/admin/api/jobs/{first}/cancel"))[0] == 409
        assert "job.cancelled" in await bridge.wait_callbacks(first, 2)
        assert await bridge.wait_callbacks(second, 1) == ["job.cancelled"]


async def test_a_job_cancelled_at_once_counts_as_finished(sqlite_url: str) -> None:
    # No worker: the job waits, held by nobody, and the admin API finishes it itself.
    async with admin_bridge(sqlite_url, roles={Role.BACKGROUND}) as bridge:
        job_id = (await bridge.send(order(bridge)))[1]["job_id"]
        status, body, _ = await call(bridge, "POST", f"/admin/api/jobs/{job_id}/cancel")
        assert status == 200 and body["status"] == "cancelled"
        assert finished(bridge, "cancelled") == 1
        assert (await call(bridge, "POST", f"/admin/api/jobs/{job_id}/cancel"))[0] == 409
        assert finished(bridge, "cancelled") == 1


def finished(bridge: Bridge, status: str) -> float | None:
    return bridge.runtime.metrics.registry.get_sample_value("bridge_jobs_finished_total", {"status": status})


async def test_resolve_and_resend(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        job_id = await failed_at_database(bridge)
        await bridge.wait_callbacks(job_id, 2)
        comp = (await bridge.job(job_id))["compensations"][0]
        path = f"/admin/api/compensations/{comp['id']}/resolve"
        status, body, _ = await call(bridge, "POST", path, json={"status": "maybe"})
        assert status == 422 and body["fields"][0]["loc"] == "status"
        status, body, _ = await call(bridge, "POST", path, json={"status": "not_needed"})
        assert status == 200 and body["status"] == "not_needed" and body["job_id"] == job_id
        status, body, _ = await call(bridge, "POST", path)
        assert status == 200 and body["status"] == "done"
        assert (await bridge.job(job_id))["compensations"][0]["status"] == "done"
        assert (await call(bridge, "POST", "/admin/api/compensations/999999/resolve"))[0] == 404
        assert (await call(bridge, "POST", "/admin/api/compensations/abc/resolve"))[0] == 404
        status, body, _ = await call(bridge, "POST", f"/admin/api/jobs/{job_id}/callbacks/resend")
        assert status == 202 and body["type"] == "job.failed" and body["status"] == "pending"
        await bridge.wait_callbacks(job_id, 3)
        copies = [c for c in bridge.receiver.received if c["data"]["job_id"] == job_id and c["type"] == "job.failed"]
        assert len(copies) == 2 and copies[0]["id"] != copies[1]["id"] and copies[0]["data"] == copies[1]["data"]


async def test_list_pages_and_filters(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        ids = []
        for i in range(7):
            ids.append(
                (
                    await bridge.send(
                        order(
                            bridge,
                            service_id=f"p{i}",
                            domain=f"site{i}.example.com",
                            ssl=False,
                            databases=[],
                            cron_jobs=[],
                        )
                    )
                )[1]["job_id"]
            )
        for job_id in ids:
            await bridge.wait_for(job_id, "succeeded")
        seen: list[str] = []
        cursor: str | None = None
        sizes = []
        while True:
            params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
            status, body, _ = await call(bridge, "GET", "/admin/api/jobs", params=params)
            assert status == 200
            sizes.append(len(body["jobs"]))
            seen += [j["job_id"] for j in body["jobs"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert sizes == [3, 3, 1] and seen == list(reversed(ids))
        first = (await call(bridge, "GET", "/admin/api/jobs", params={"limit": "1"}))[1]["jobs"][0]
        assert [(s["kind"], s["status"]) for s in first["steps"]] == [
            ("check_account", "succeeded"),
            ("add_domain", "succeeded"),
        ]
        assert first["deferred"] == []
        for params, expected in [
            ({"service_id": "p3"}, [ids[3]]),
            ({"domain": "site5"}, [ids[5]]),
            ({"status": "succeeded", "limit": "2"}, [ids[6], ids[5]]),
            ({"status": "failed"}, []),
            ({"from": "2000-01-01T00:00:00Z", "to": "2000-01-02"}, []),
        ]:
            body = (await call(bridge, "GET", "/admin/api/jobs", params=params))[1]
            assert [j["job_id"] for j in body["jobs"]] == expected, params


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"status": "done"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "²"}, "limit"),
        ({"limit": "9" * 5000}, "limit"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2025-13-01"}, "to"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"stauts": "failed"}, "stauts"),
    ],
)
async def test_bad_query_parameters_are_named(sqlite_url: str, params: dict[str, str], named: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        status, body, _ = await call(bridge, "GET", "/admin/api/jobs", params=params)
        assert status == 422 and body["error"].startswith(f"{named}: ") and body["fields"][0]["loc"] == named


# Values PostgreSQL cannot compare (a NUL) or hold (a date past year 9999 once in UTC, a
# job id past a bigint): each was a 5xx.
UNUSABLE_QUERIES = [
    ({"service_id": "47\x0011"}, "service_id"),
    ({"domain": "example\x00.com"}, "domain"),
    ({"q": "\x00"}, "q"),
    ({"cursor": encode_cursor(2**64)}, "cursor"),
    ({"from": "0001-01-01T00:00:00+14:00"}, "from"),
    ({"to": "9999-12-31T23:59:59-14:00"}, "to"),
]


async def test_values_the_database_cannot_take_are_422_naming_the_parameter(db_url: str) -> None:
    async with admin_bridge(db_url) as bridge:
        for params, named in UNUSABLE_QUERIES:
            status, body, _ = await call(bridge, "GET", "/admin/api/jobs", params=params)
            assert status == 422 and body["fields"][0]["loc"] == named, (params, status, body)
            assert body["error"].startswith(f"{named}: ")


async def test_a_job_id_with_a_nul_is_unknown(db_url: str) -> None:
    async with admin_bridge(db_url) as bridge:
        for method, path in job_endpoints("x%00y"):
            status, body, _ = await call(bridge, method, path)
            assert status == 404 and body["error"].startswith("job "), (method, path, status, body)


async def test_a_password_that_is_not_unicode_text_is_422(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        job_id = await failed_at_database(bridge)
        body = b'{"account": {"username": "%s", "password": "abc\\ud800def"}}' % ACCOUNT[0].encode()
        status, answer, _ = await call(bridge, "POST", f"/admin/api/jobs/{job_id}/retry", data=body)
        assert status == 422 and answer["fields"][0]["loc"] == "account.password", answer
        assert (await bridge.job(job_id))["status"] == "failed"


async def test_a_bearer_token_that_is_not_utf8_is_401(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        head = b"GET /admin/api/jobs HTTP/1.1\r\nHost: bridge\r\nAuthorization: Bearer tok\xff\xfeen"
        status, body = await raw_request(bridge.client, head)
        assert status == 401 and body == b'{"error": "missing or invalid admin token"}'


async def test_a_request_the_http_parser_refuses_is_logged_as_one_line_without_the_token(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A control character makes aiohttp refuse the header line before the bridge sees it; its
    # log quoted that line (the token with it) under a traceback.
    quiet_malformed_requests()
    async with admin_bridge(sqlite_url) as bridge:
        head = f"GET /admin/api/jobs HTTP/1.1\r\nHost: bridge\r\nAuthorization: Bearer {ADMIN_TOKEN}\x01".encode()
        with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
            status, body = await raw_request(bridge.client, head)
    assert status == 400 and b"Invalid header value char" in body
    refused = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(refused) == 1, [r.getMessage() for r in refused]
    assert refused[0].levelno == logging.WARNING and refused[0].exc_info is None
    assert refused[0].getMessage().startswith("refused a malformed HTTP request from 127.0.0.1 (400): ")
    assert ADMIN_TOKEN not in caplog.text


async def test_an_oversized_body_is_413_naming_the_body(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        padding = "x" * (70 * 1024)
        status, body, _ = await call(bridge, "POST", "/admin/api/jobs/x/cancel", json={"padding": padding})
        assert status == 413 and body["error"].startswith("body: ")


async def test_unknown_jobs_and_bad_bodies(sqlite_url: str) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        for method, path in job_endpoints("no-such-job"):
            status, body, _ = await call(bridge, method, path)
            assert status == 404 and body == {"error": "job no-such-job not found"}
        job_id = await failed_at_database(bridge)
        retry = f"/admin/api/jobs/{job_id}/retry"
        assert (await call(bridge, "POST", retry, data=b"{not json"))[0] == 400
        assert (await call(bridge, "POST", retry, json=[1]))[0] == 422
        status, body, _ = await call(bridge, "POST", retry, json={"acount": {}})
        assert status == 422 and body["fields"][0]["loc"] == "body.acount"
        status, body, _ = await call(bridge, "POST", retry, json={"account": "john"})
        assert status == 422 and body["fields"][0]["loc"] == "account"
        assert (await bridge.job(job_id))["status"] == "failed"


async def test_database_unavailable_is_503() -> None:
    settings = Settings(
        database_url="postgresql+asyncpg://postgres@127.0.0.1:1/nowhere",
        admin_tokens=[ADMIN_TOKEN],
    )
    async with open_runtime(settings) as runtime, TestClient(TestServer(build_app(runtime))) as client:
        for method, path in [
            ("GET", "/admin/api/jobs"),
            ("GET", "/admin/api/jobs/x"),
            ("POST", "/admin/api/jobs/x/cancel"),
        ]:
            response = await client.request(method, path, headers=AUTH)
            assert response.status == 503
            assert (await response.json())["error"] == "the database is unavailable; try again later"


def test_failure_limit_forgets_after_its_window() -> None:
    now = [1000.0]
    limiter = FailureLimiter(max_failures=10, window_s=60, clock=lambda: now[0])
    for _ in range(9):
        limiter.record_failure("10.0.0.1")
        now[0] += 1
    assert limiter.retry_after("10.0.0.1") is None
    limiter.record_failure("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 51  # the first failure leaves the window at 1060
    assert limiter.retry_after("10.0.0.2") is None  # per address
    now[0] = 1060.5
    assert limiter.retry_after("10.0.0.1") is None
