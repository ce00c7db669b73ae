"""The WHMCS module and callback receiver (PHP) against the live bridge and the panel simulator.

The PHP code runs under php-cli with stand-ins for WHMCS (tests/php/whmcs_standins.php)
that record every logModuleCall and localAPI call. The module is called through
tests/php/run_module.php; bridge_callback.php is served by ``php -S`` from a web root
laid out as in a WHMCS installation, so the bridge's real callbacks reach it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ADMIN_TOKEN, CALLBACK_SECRET, WEBHOOK_SECRET, service_missing
from engine_harness import ACCOUNT, Bridge, running_bridge
from sqlalchemy import select

from bridge.bootstrap import Role
from bridge.store import admin_ops
from bridge.store import tables as t
from bridge.webhooks.signature import sign

pytestmark = pytest.mark.php

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ROOT / "hooks" / "whmcs"
PHP_TESTS = ROOT / "tests" / "php"
OTHER_SECRET = "whsec_b3RoZXItc2VjcmV0LW5vdC10aGUtYnJpZGdlcw=="
WRONG_SECRET = "whsec_d3Jvbmctc2VjcmV0LWtub3duLXRvLW5vYm9keQ=="
SERVICE_ID = 42
DATABASES = "wp wpuser\nshop shopuser"
CRON = "*/5 * * * * /usr/bin/php /home/john/public_html/cron.php"
WELCOME_EMAIL = "Hosting Account Welcome Email"


def _php() -> str:
    php = shutil.which("php")
    if php is None:
        service_missing("php-cli", "no php on PATH (apt-get install php-cli php-curl)")
    modules = subprocess.run([php, "-m"], capture_output=True, text=True, check=True).stdout.split()
    if "curl" not in modules:
        service_missing("php-curl", "php has no curl extension")
    return str(php)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Whmcs:
    """A stand-in WHMCS: the module runner, the callback web root, and what they recorded."""

    php: str
    standin_dir: Path
    state_dir: Path
    origin: str
    preexec_fn: Callable[[], None] | None = None

    @property
    def callback_url(self) -> str:
        return f"{self.origin}/bridge_callback.php"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "WHMCS_STANDIN_DIR": str(self.standin_dir),
            "PROVISIONINGBRIDGE_STATE_DIR": str(self.state_dir),
        }

    async def module(
        self, function: str, params: dict[str, Any] | None = None, *, raw: dict[str, bytes] | None = None
    ) -> Any:
        """Runs provisioningbridge_<function>($params) without blocking the bridge's event loop.

        ``raw``: params given as bytes, for values that are not UTF-8 (JSON cannot carry them).
        """
        proc = await asyncio.create_subprocess_exec(
            self.php,
            str(PHP_TESTS / "run_module.php"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env(),
            preexec_fn=self.preexec_fn,
        )
        request: dict[str, Any] = {"function": function} if params is None else {"function": function, "params": params}
        if raw:
            request["raw_params"] = {name: base64.b64encode(value).decode() for name, value in raw.items()}
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(request).encode()), 30)
        assert proc.returncode == 0, f"php failed: {err.decode()} {out.decode()}"
        return json.loads(out)["result"]

    def _lines(self, name: str) -> list[dict[str, Any]]:
        path = self.standin_dir / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def api_calls(self, command: str | None = None) -> list[dict[str, Any]]:
        return [c for c in self._lines("localapi.jsonl") if command is None or c["command"] == command]

    def effects(self) -> list[dict[str, Any]]:
        """The localAPI calls that change something (reads left out)."""
        return [c for c in self.api_calls() if c["command"] not in ("GetClientsProducts", "GetTicket")]

    def module_log(self) -> list[dict[str, Any]]:
        return self._lines("module_log.jsonl")

    def service_record(self, service_id: int = SERVICE_ID) -> dict[str, Any]:
        state = json.loads((self.state_dir / "state.json").read_text())
        return dict(state[f"service:{service_id}"]["value"])

    def set_ticket_status(self, ticket_id: int, status: str) -> None:
        path = self.standin_dir / "tickets.json"
        tickets = json.loads(path.read_text())
        tickets[str(ticket_id)]["status"] = status
        path.write_text(json.dumps(tickets))

    def set_services(self, *services: dict[str, Any]) -> None:
        """What GetClientsProducts answers from now on (none: WHMCS has no such service)."""
        (self.standin_dir / "products.json").write_text(json.dumps(list(services)))

    def fail_once(self, *commands: str) -> None:
        (self.standin_dir / "localapi_fail.json").write_text(json.dumps(list(commands)))

    def slow(self, command: str, seconds: float) -> None:
        (self.standin_dir / "localapi_slow.json").write_text(json.dumps({command: seconds}))

    def meet(self, action: str, count: int) -> None:
        """From now on a module call logged as `action` waits until `count` of them are logged."""
        (self.standin_dir / "module_log_barrier.json").write_text(json.dumps({action: count}))

    async def wait_api(self, command: str, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(calls := self.api_calls(command)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{command}: {len(calls)} call(s), expected {count}: {self.api_calls()}")
            await asyncio.sleep(0.05)
        return calls


@contextlib.contextmanager
def serve_whmcs(tmp_path: Path, preexec_fn: Callable[[], None] | None = None) -> Iterator[Whmcs]:
    """The stand-in WHMCS with bridge_callback.php served by ``php -S`` as in a WHMCS web root.

    ``preexec_fn``: run in every PHP process (the server and each module call) before it starts.
    """
    php = _php()
    standins, state, webroot = tmp_path / "standin", tmp_path / "state", tmp_path / "webroot"
    for path in (standins, state, webroot):
        path.mkdir()
    shutil.copy(HOOKS / "bridge_callback.php", webroot)
    shutil.copytree(HOOKS / "modules", webroot / "modules")
    (webroot / "init.php").write_text(f"<?php\nrequire {str(PHP_TESTS / 'whmcs_standins.php')!r};\n")
    # Two secrets: the bridge signs with the second (rotation keeps both valid).
    config = (
        f"<?php\nreturn ['secret' => '{OTHER_SECRET}, {CALLBACK_SECRET}', 'department_id' => 7,"
        f" 'welcome_email' => '{WELCOME_EMAIL}'];\n"
    )
    (webroot / "bridge_callback_config.php").write_text(config)
    port = _free_port()
    env = {**os.environ, "WHMCS_STANDIN_DIR": str(standins), "PROVISIONINGBRIDGE_STATE_DIR": str(state)}
    env.pop("BRIDGE_CALLBACK_SECRET", None)
    # Several workers: the bridge may deliver again while WHMCS is still handling a callback.
    env["PHP_CLI_SERVER_WORKERS"] = "4"
    server = subprocess.Popen(
        [php, "-S", f"127.0.0.1:{port}", "-t", str(webroot)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=preexec_fn,
        # A group of its own: the workers php forks are ended with it, not left behind.
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError("php -S did not start") from None
                time.sleep(0.05)
        yield Whmcs(php, standins, state, f"http://127.0.0.1:{port}", preexec_fn)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(5)


@pytest.fixture
def whmcs(tmp_path: Path) -> Iterator[Whmcs]:
    with serve_whmcs(tmp_path) as whmcs:
        yield whmcs


@pytest.fixture
def full_disk_whmcs(tmp_path: Path) -> Iterator[Whmcs]:
    """The stand-in WHMCS on a disk that is nearly full: no PHP process can write a file past 64 KiB."""
    with serve_whmcs(tmp_path, _limit_file_size) as whmcs:
        yield whmcs


@contextlib.asynccontextmanager
async def live_bridge(db_url: str, whmcs: Whmcs, **extra: Any) -> AsyncIterator[Bridge]:
    """The bridge, allowed to call the stand-in WHMCS back, with an admin token."""
    async with running_bridge(
        db_url, callback_allowed_origins=[whmcs.origin], admin_tokens=[ADMIN_TOKEN], **extra
    ) as bridge:
        yield bridge


def service_params(bridge: Bridge, whmcs: Whmcs, **overrides: Any) -> dict[str, Any]:
    """$params as WHMCS passes them to a server module, pointing at the live bridge."""
    url = bridge.client.make_url("/")
    access_hash = "\n".join(
        [
            f"webhook_secret={WEBHOOK_SECRET}",
            f"admin_token={ADMIN_TOKEN}",
            f"callback_url={whmcs.callback_url}",
        ]
    )
    params: dict[str, Any] = {
        "serviceid": SERVICE_ID,
        "userid": 1,
        "domain": "example.com",
        "username": ACCOUNT[0],
        "password": ACCOUNT[1],
        "serverhostname": url.host,
        "serverport": url.port,
        "serversecure": "",
        "serveraccesshash": access_hash,
        "configoption1": "default",
        "configoption2": "8.2",
        "configoption3": "on",
        "configoption4": DATABASES,
        "configoption5": CRON,
    }
    params.update(overrides)
    return params


async def jobs_of(bridge: Bridge, service_id: int = SERVICE_ID) -> list[str]:
    async with bridge.runtime.engine.connect() as conn:
        rows = await conn.execute(select(t.jobs.c.public_id).where(t.jobs.c.service_id == str(service_id)))
        return [row.public_id for row in rows]


def callback(event_type: str, *, service_id: int = SERVICE_ID, status: str = "succeeded", **data: Any) -> bytes:
    body = {
        "type": event_type,
        "data": {
            "job_id": f"job_{uuid.uuid4().hex[:8]}",
            "event_id": "evt",
            "service_id": str(service_id),
            "status": status,
            "steps": [],
            "deferred": [],
            "error": None,
            "compensations": [],
            **data,
        },
    }
    return json.dumps(body).encode()


async def post_callback(
    whmcs: Whmcs,
    body: bytes,
    *,
    secret: str = CALLBACK_SECRET,
    msg_id: str | None = None,
    timestamp: int | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """POSTs a callback signed the way the bridge signs them (or with the given headers)."""
    import aiohttp

    if headers is None:
        headers = sign(secret, msg_id or f"cb_{uuid.uuid4().hex}", timestamp or int(time.time()), body)
    async with aiohttp.ClientSession() as session, session.post(whmcs.callback_url, data=body, headers=headers) as r:
        text = await r.text()
        return r.status, json.loads(text) if text.startswith("{") else {"raw": text}


def strings_in(value: Any) -> Iterator[str]:
    """Every string inside decoded JSON, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def assert_no_password_in_api_calls(whmcs: Whmcs) -> None:
    """Tickets, notes and the activity log reach WHMCS through localAPI and are read by staff:
    neither the account's password nor a database password may be in them."""
    calls = whmcs.api_calls()
    assert calls, "no localAPI call to check"
    texts = list(strings_in(calls))
    passwords = {"account": ACCOUNT[1], **whmcs.service_record()["db_passwords"]}
    leaked = [name for name, password in passwords.items() if any(password in text for text in texts)]
    assert leaked == [], f"passwords in localAPI calls: {leaked}"


# --- the whole path: WHMCS → bridge → panel → bridge → WHMCS ------------------------------------


async def test_create_account_provisions_once_and_the_callback_activates_the_service(
    sqlite_url: str, whmcs: Whmcs
) -> None:
    async with live_bridge(sqlite_url, whmcs) as bridge:
        params = service_params(bridge, whmcs)
        # Still running when CreateAccount comes again: after a success it would start over, as documented.
        bridge.sim.set_latency(1.0, "add_domain")
        assert await whmcs.module("CreateAccount", params) == "success"  # signed in PHP, verified by the bridge
        assert await whmcs.module("CreateAccount", params) == "success"  # the same attempt: a duplicate
        [job_id] = await jobs_of(bridge)
        record = whmcs.service_record()
        assert (await bridge.job(job_id))["event_id"] == f"whmcs-{SERVICE_ID}-{record['attempt_key']}"
        await bridge.wait_for(job_id, "succeeded")

        # Signed by the bridge, verified in PHP: the service is made Active exactly once.
        updates = await whmcs.wait_api("UpdateClientProduct", 1)
        assert [u["values"] for u in updates] == [{"serviceid": SERVICE_ID, "status": "Active"}]
        await whmcs.wait_api("LogActivity", 2)  # job.started and job.succeeded
        assert [e["values"] for e in whmcs.api_calls("SendEmail")] == [{"messagename": WELCOME_EMAIL, "id": SERVICE_ID}]
        assert whmcs.api_calls("OpenTicket") == []

        snapshot = bridge.sim.snapshot()
        assert sorted(snapshot["accounts"]["john"]["databases"]) == ["john_shop", "john_wp"]
        assert snapshot["counters"]["add_domain"] == 1
        assert len(await jobs_of(bridge)) == 1

        passwords = whmcs.service_record()["db_passwords"]
        assert set(passwords) == {"wp", "shop"} and passwords["wp"] != passwords["shop"]
        for password in passwords.values():
            assert len(password) >= 16 and password.replace("-", "").replace("_", "").isalnum()
        assert whmcs.service_record()["job_status"] == "succeeded"

        # The client area shows what the panel was given.
        area = await whmcs.module("ClientArea", params)
        assert {(d["name"], d["password"]) for d in area["vars"]["pbDatabases"]} == {
            ("john_wp", passwords["wp"]),
            ("john_shop", passwords["shop"]),
        }

        # No secret reaches the module log; the request is logged with its fields masked.
        log = whmcs.module_log()
        text = json.dumps(log)
        secrets = [ACCOUNT[1], WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_"), ADMIN_TOKEN, *passwords.values()]
        for secret in secrets:
            assert secret not in text
        create = next(entry for entry in log if entry["action"] == "CreateAccount")
        assert "[password] => ********\n" in create["request"] and "example.com" in create["request"]
        assert "HTTP 202" in create["response"]
        assert_no_password_in_api_calls(whmcs)


async def test_a_new_attempt_only_after_the_previous_job_succeeded(sqlite_url: str, whmcs: Whmcs) -> None:
    async with live_bridge(sqlite_url, whmcs) as bridge:
        params = service_params(bridge, whmcs, configoption3="", configoption4="", configoption5="")
        assert await whmcs.module("CreateAccount", params) == "success"
        first_key = whmcs.service_record()["attempt_key"]
        [job_id] = await jobs_of(bridge)
        await bridge.wait_for(job_id, "succeeded")
        await whmcs.wait_api("UpdateClientProduct", 1)
        # Provisioning the service again (say after a terminate) is a new event, and a new job,
        # which finds the domain the first one added and takes it as the service's own.
        assert await whmcs.module("CreateAccount", params) == "success"
        assert whmcs.service_record()["attempt_key"] != first_key
        [second] = [job for job in await jobs_of(bridge) if job != job_id]
        await bridge.wait_for(second, "succeeded")
        await whmcs.wait_api("UpdateClientProduct", 2)
        assert [d.domain for d in bridge.sim.account(ACCOUNT[0]).domains] == ["example.com"]


async def an_order_that_fails(
    bridge: Bridge, whmcs: Whmcs, call: str, fault: str, **options: Any
) -> tuple[dict[str, Any], str]:
    """CreateAccount (no SSL, no cron jobs) with the panel answering ``call`` with ``fault``:
    its $params and its failed job."""
    bridge.sim.inject_fault(call, fault)
    params = service_params(bridge, whmcs, configoption3="", configoption5="", **options)
    assert await whmcs.module("CreateAccount", params) == "success"
    [failed] = await jobs_of(bridge)
    await bridge.wait_for(failed, "failed")
    return params, failed


async def test_a_failed_order_changed_in_whmcs_is_a_new_job_and_retry_takes_only_the_latest(
    sqlite_url: str, whmcs: Whmcs
) -> None:
    async with live_bridge(sqlite_url, whmcs) as bridge:
        # The domain turns out to be another customer's on the panel: a conflict, the job fails.
        conflict = "error:The domain 'example.com' already exists."
        params, failed = await an_order_that_fails(bridge, whmcs, "add_domain", conflict, configoption4="")
        first_key = whmcs.service_record()["attempt_key"]
        # Sent unchanged it is the same order (the module points at Retry), and so it is with
        # only a new password: the password is not part of what the order asks of the panel.
        for same in (params, {**params, "password": ACCOUNT[1] + "-new"}):
            assert "Retry provisioning" in await whmcs.module("CreateAccount", same)
        assert await jobs_of(bridge) == [failed]

        # The admin gives the service another domain: a new order, a job of its own.
        changed = {**params, "domain": "example.net"}
        assert await whmcs.module("CreateAccount", changed) == "success"
        assert whmcs.service_record()["attempt_key"] != first_key
        [new] = [job for job in await jobs_of(bridge) if job != failed]
        await bridge.wait_for(new, "succeeded")
        assert [d.domain for d in bridge.sim.account(ACCOUNT[0]).domains] == ["example.net"]

        # Retry takes the service's latest job only: the failed order it replaced stays as it is.
        answer = await whmcs.module("RetryProvisioning", changed)
        assert answer == f"There is no failed provisioning job for this service: its latest job, {new}, is succeeded."
        async with bridge.runtime.engine.connect() as conn:
            status = (await conn.execute(select(t.jobs.c.status).where(t.jobs.c.public_id == failed))).scalar()
        assert status == "failed"
        # The new order named the one it replaces, so "retry all failed" leaves that one be.
        runtime = bridge.runtime
        outcome = await admin_ops.retry_failed_jobs(runtime.engine, runtime.box, service_id=str(SERVICE_ID))
        assert outcome["retried"] == [] and [s["job_id"] for s in outcome["skipped"]] == [failed]
        assert f"job {new} replaces it" in outcome["skipped"][0]["error"]


async def test_an_order_changed_after_it_failed_half_way_takes_over_what_the_first_job_made(
    sqlite_url: str, whmcs: Whmcs
) -> None:
    async with live_bridge(sqlite_url, whmcs) as bridge:
        # The domain goes on, then the panel refuses the database (its name, say).
        denied = "error:Access denied for user 'john'@'localhost'"
        params, failed = await an_order_that_fails(bridge, whmcs, "db_make", denied, configoption4="wp wpuser")

        # The admin changes the database in WHMCS and creates again: a new job, which finds the
        # domain the first one added and takes it over, with what would undo it.
        changed = {**params, "configoption4": "shop shopuser"}
        assert await whmcs.module("CreateAccount", changed) == "success"
        [new] = [job for job in await jobs_of(bridge) if job != failed]
        done = await bridge.wait_for(new, "succeeded")
        add = next(a for a in done["attempts"] if a["step"] == "add_domain")
        assert add["outcome"] == "reconciled" and f"made by job {failed}" in add["message"]
        account = bridge.sim.account(ACCOUNT[0])
        assert ([d.domain for d in account.domains], account.databases) == (["example.com"], ["john_shop"])
        first = await bridge.job(failed)
        assert [(c["step"], c["status"]) for c in first["compensations"]] == [("add_domain", "not_needed")]


async def test_two_create_clicks_at_once_after_a_success_record_the_new_jobs_own_status(
    sqlite_url: str, whmcs: Whmcs
) -> None:
    """Both clicks read the finished job's status before either starts the new attempt; one
    sends the new order, the other's send is its duplicate. Neither may record the old job's
    "succeeded" against the new job: a later click would take it for finished and order again."""
    quick = {"configoption3": "", "configoption4": "", "configoption5": ""}
    async with live_bridge(sqlite_url, whmcs) as bridge:
        assert await whmcs.module("CreateAccount", service_params(bridge, whmcs, **quick)) == "success"
        [first_job] = await jobs_of(bridge)
        await bridge.wait_for(first_job, "succeeded")
        await whmcs.wait_api("UpdateClientProduct", 1)
        first = whmcs.service_record()
        assert (first["job_id"], first["job_status"]) == (first_job, "succeeded")
    # The same bridge without a worker: the new job waits in the queue and reports nothing yet.
    async with live_bridge(sqlite_url, whmcs, roles={Role.BACKGROUND}) as bridge:
        params = service_params(bridge, whmcs, **quick)
        whmcs.meet("JobStatus", 2)
        clicks = await asyncio.gather(*(whmcs.module("CreateAccount", params) for _ in range(2)))
        assert clicks == ["success", "success"]
        [new_job] = [job for job in await jobs_of(bridge) if job != first_job]
        record = whmcs.service_record()
        assert record["attempt_key"] != first["attempt_key"]
        assert (record["job_id"], record["job_status"]) == (new_job, "accepted")

        # Without the admin API the recorded status decides: the waiting job is no reason to order again.
        no_admin = f"webhook_secret={WEBHOOK_SECRET}\ncallback_url={whmcs.callback_url}"
        assert await whmcs.module("CreateAccount", {**params, "serveraccesshash": no_admin}) == "success"
        assert len(await jobs_of(bridge)) == 2


async def test_failures_open_one_ticket_then_add_notes_and_retry_resumes_without_repeating(
    sqlite_url: str, whmcs: Whmcs
) -> None:
    async with live_bridge(sqlite_url, whmcs) as bridge:
        bridge.sim.inject_fault("db_make", "error:Access denied for user <script>x()</script>")
        # A panel error that quotes the account's password back: it must not reach the ticket note.
        bridge.sim.inject_fault("db_make", f"error:Access denied for user 'john'@'localhost' (password '{ACCOUNT[1]}')")
        params = service_params(bridge, whmcs)
        assert await whmcs.module("CreateAccount", params) == "success"
        [job_id] = await jobs_of(bridge)
        await bridge.wait_for(job_id, "failed")

        [ticket] = await whmcs.wait_api("OpenTicket", 1)
        values = ticket["values"]
        assert values["deptid"] == 7
        assert f"#{SERVICE_ID}" in values["subject"] and "create_database" in values["subject"]
        assert "Access denied" in values["message"] and "remove domain example.com" in values["message"]

        # The services tab shows the failure, with the panel's text escaped.
        tab = await whmcs.module("AdminServicesTabFields", params)
        assert "failed" in tab["Provisioning job"] and "create_database" in tab["Steps"]
        assert "&lt;script&gt;x()&lt;/script&gt;" in tab["Error"]
        assert "<script>" not in json.dumps(tab)
        assert "remove domain example.com" in tab["To undo"]
        assert set(whmcs.service_record()["db_passwords"]) == {"wp", "shop"}
        assert "Database passwords" in tab

        # Sending the order again cannot restart it; the module says what to do instead.
        again = await whmcs.module("CreateAccount", params)
        assert "Retry provisioning" in again and job_id in again

        # The cause is still there: the retried job fails again, and the ticket gets a note.
        assert await whmcs.module("RetryProvisioning", params) == "success"
        [note] = await whmcs.wait_api("AddTicketNote", 1)
        assert note["values"]["ticketid"] == 1 and "Access denied" in note["values"]["message"]
        assert len(whmcs.api_calls("OpenTicket")) == 1

        # Fixed now: the retry resumes where it stopped and the service becomes Active.
        assert await whmcs.module("RetryProvisioning", params) == "success"
        await bridge.wait_for(job_id, "succeeded")
        await whmcs.wait_api("UpdateClientProduct", 1)
        assert len(whmcs.api_calls("OpenTicket")) == 1
        counters = bridge.sim.snapshot()["counters"]
        assert counters["add_domain"] == 1
        assert counters["cronjob_add"] == 1
        assert len(await jobs_of(bridge)) == 1

        nothing = await whmcs.module("RetryProvisioning", params)
        assert nothing.startswith("There is no failed provisioning job for this service")
        assert nothing.endswith(f"its latest job, {job_id}, is succeeded.")
        tab = await whmcs.module("AdminServicesTabFields", params)
        assert f'/admin/jobs/{job_id}"' in tab["Provisioning job"] and "succeeded" in tab["Provisioning job"]
        assert "create_database" in tab["Steps"]
        assert await whmcs.module("RefreshStatus", params) == "success"
        assert ACCOUNT[1] not in json.dumps(whmcs.module_log())
        assert_no_password_in_api_calls(whmcs)


async def test_test_connection_checks_readiness_the_webhook_secret_and_the_admin_token(
    sqlite_url: str, whmcs: Whmcs
) -> None:
    async with live_bridge(sqlite_url, whmcs) as bridge:
        assert await whmcs.module("TestConnection", service_params(bridge, whmcs)) == {"success": True, "error": ""}
        wrong_secret = service_params(bridge, whmcs, serveraccesshash=f"webhook_secret={OTHER_SECRET}")
        result = await whmcs.module("TestConnection", wrong_secret)
        assert result["success"] is False and "webhook_secret" in result["error"]
        wrong_token = service_params(
            bridge, whmcs, serveraccesshash=f"webhook_secret={WEBHOOK_SECRET}\nadmin_token=not-the-token"
        )
        result = await whmcs.module("TestConnection", wrong_token)
        assert result["success"] is False and "admin_token" in result["error"]
        assert "not-the-token" not in json.dumps(whmcs.module_log())
        assert await jobs_of(bridge) == []  # the probe event is never stored


async def test_create_account_reports_the_bridges_reasons(sqlite_url: str, whmcs: Whmcs) -> None:
    (whmcs.standin_dir / "settings.json").write_text(json.dumps({"SystemURL": "https://billing.example.com/"}))
    async with live_bridge(sqlite_url, whmcs) as bridge:
        bad_name = await whmcs.module("CreateAccount", service_params(bridge, whmcs, serviceid=50, username="John"))
        assert "HTTP 422" in bad_name and "data.account.username" in bad_name and "capital letters" in bad_name
        panel = await whmcs.module("CreateAccount", service_params(bridge, whmcs, serviceid=51, configoption1="eu"))
        assert "unknown panel 'eu'" in panel
        lines = await whmcs.module("CreateAccount", service_params(bridge, whmcs, serviceid=52, configoption4="wp"))
        assert lines == "Databases, line 1: expected 'name user', got 'wp'"

        # Without callback_url the callback goes to WHMCS's own address.
        params = service_params(bridge, whmcs, serviceid=53, serveraccesshash=f"webhook_secret={WEBHOOK_SECRET}")
        assert await whmcs.module("CreateAccount", params) == "success"
        [job_id] = await jobs_of(bridge, 53)
        async with bridge.runtime.engine.connect() as conn:
            url = (await conn.execute(select(t.jobs.c.callback_url).where(t.jobs.c.public_id == job_id))).scalar()
        assert url == "https://billing.example.com/bridge_callback.php"

        unconfigured = await whmcs.module("CreateAccount", service_params(bridge, whmcs, serveraccesshash=""))
        assert "webhook_secret" in unconfigured
        port = bridge.client.make_url("/").port
    down = await whmcs.module("CreateAccount", {**params, "serverport": port})
    assert "could not reach the bridge" in down


async def test_an_order_that_is_not_utf8_is_refused_before_sending_and_says_why(sqlite_url: str, whmcs: Whmcs) -> None:
    """A password from a WHMCS whose charset is not UTF-8 cannot be put into JSON: the order
    is not sent (never an empty body), and the admin reads why."""
    async with live_bridge(sqlite_url, whmcs) as bridge:
        params = service_params(bridge, whmcs, configoption4="", configoption5="")
        result = await whmcs.module("CreateAccount", params, raw={"password": b"Geheim-\xe4\xf6-2024"})
        assert "UTF-8" in result, result
        assert not [entry for entry in whmcs.module_log() if entry["action"] == "CreateAccount"]
        assert await jobs_of(bridge) == []


# --- the callback receiver on its own --------------------------------------------------------------


async def test_forged_or_replayed_callbacks_are_refused_and_change_nothing(whmcs: Whmcs) -> None:
    body = callback("job.succeeded")
    now = int(time.time())
    signed = sign(CALLBACK_SECRET, "cb_forged", now, body)
    cases = {
        "wrong secret": (body, sign(WRONG_SECRET, "cb_1", now, body), 401),
        "tampered body": (body.replace(b"succeeded", b"failed"), signed, 401),
        "stale": (body, sign(CALLBACK_SECRET, "cb_2", now - 400, body), 401),
        "future": (body, sign(CALLBACK_SECRET, "cb_3", now + 400, body), 401),
        "no signature": (body, {k: v for k, v in signed.items() if k != "webhook-signature"}, 400),
        "not a v1 signature": (body, {**signed, "webhook-signature": "v2,abc"}, 401),
        "not JSON": (b"nope", sign(CALLBACK_SECRET, "cb_4", now, b"nope"), 400),
    }
    for name, (payload, headers, expected) in cases.items():
        status, answer = await post_callback(whmcs, payload, headers=headers)
        assert status == expected, (name, answer)
        assert "error" in answer
    assert whmcs.api_calls() == []

    status, _ = await post_callback(whmcs, body, headers=signed)
    assert status == 200
    assert len(whmcs.api_calls("UpdateClientProduct")) == 1
    status, answer = await post_callback(whmcs, body, headers=signed)  # the very same message again
    assert status == 409 and "replay" in answer["error"]
    # The bridge's redelivery (same id, signed anew) is acknowledged, not acted on twice.
    status, answer = await post_callback(whmcs, body, msg_id="cb_forged", timestamp=now + 1)
    assert status == 200 and answer["duplicate"] is True
    assert len(whmcs.api_calls("UpdateClientProduct")) == 1

    # Several signatures: one valid is enough (rotation on the sender's side).
    other = callback("job.started")
    good = sign(CALLBACK_SECRET, "cb_5", now, other)
    bad = sign(WRONG_SECRET, "cb_5", now, other)["webhook-signature"]
    headers = {**good, "webhook-signature": f"{bad} {good['webhook-signature']}"}
    assert (await post_callback(whmcs, other, headers=headers))[0] == 200


async def test_callbacks_about_an_order_the_service_replaced_are_logged_without_ticket_or_e_mail(
    whmcs: Whmcs,
) -> None:
    # The module started over from attempt "k1" (its order changed after it failed) and the
    # bridge stored the new order ("k2", job_k2); an admin retried k1's job in the bridge.
    earlier, current = (f"whmcs-{SERVICE_ID}-{key}" for key in ("k1", "k2"))
    record = {"attempt_key": "k2", "job_id": "job_k2", "replaced": [earlier]}
    (whmcs.state_dir / "state.json").write_text(json.dumps({f"service:{SERVICE_ID}": {"value": record}}))
    failure = {"status": "failed", "error": "add_domain: conflict", "steps": []}
    assert (await post_callback(whmcs, callback("job.failed", event_id=current, **failure)))[0] == 200
    assert len(whmcs.api_calls("OpenTicket")) == 1  # the current order's failure, as ever

    gave_up = {"status": "succeeded", "steps": [{"kind": "issue_ssl", "status": "failed", "error": "DNS"}]}
    for event_type, data in (("job.failed", failure), ("job.succeeded", {}), ("job.updated", gave_up)):
        assert (await post_callback(whmcs, callback(event_type, event_id=earlier, **data)))[0] == 200
    assert len(whmcs.api_calls("OpenTicket")) == 1
    assert whmcs.api_calls("AddTicketNote") == [] and whmcs.api_calls("SendEmail") == []
    assert len(whmcs.api_calls("UpdateClientProduct")) == 1  # a success still activates
    logged = [c["values"]["description"] for c in whmcs.api_calls("LogActivity")][1:]
    assert len(logged) == 3 and all("an order of this service replaced since" in line for line in logged)
    assert "issue_ssl gave up: DNS" in logged[2]

    # Until the bridge has stored the new order (its job known), the old one is still current.
    path = whmcs.state_dir / "state.json"
    state = json.loads(path.read_text())
    del state[f"service:{SERVICE_ID}"]["value"]["job_id"]
    path.write_text(json.dumps(state))
    assert (await post_callback(whmcs, callback("job.failed", event_id=earlier, **failure)))[0] == 200
    assert len(whmcs.api_calls("AddTicketNote")) == 1  # on the service's open ticket


async def test_ticket_memory_per_service_and_a_failed_effect_is_redone_on_redelivery(whmcs: Whmcs) -> None:
    failure = {
        "status": "failed",
        "error": "create_database: Access denied",
        "steps": [{"kind": "create_database", "status": "failed", "attempts": 1, "result": None, "error": "denied"}],
        "compensations": [{"id": 1, "step": "add_domain", "action": "remove domain example.com", "status": "pending"}],
    }
    assert (await post_callback(whmcs, callback("job.failed", **failure)))[0] == 200
    assert (await post_callback(whmcs, callback("job.failed", **failure)))[0] == 200
    assert (await post_callback(whmcs, callback("job.failed", service_id=43, **failure)))[0] == 200
    assert [c["values"]["subject"] for c in whmcs.api_calls("OpenTicket")] == [
        "Provisioning failed: service #42 (example.com) at create_database",
        "Provisioning failed: service #43 (example.com) at create_database",
    ]
    assert [c["values"]["ticketid"] for c in whmcs.api_calls("AddTicketNote")] == [1]

    # Once the ticket is closed, the next failure opens a new one.
    whmcs.set_ticket_status(1, "Closed")
    assert (await post_callback(whmcs, callback("job.failed", **failure)))[0] == 200
    assert len(whmcs.api_calls("OpenTicket")) == 3

    # WHMCS could not record it: 500, and the bridge's redelivery does the work.
    whmcs.fail_once("UpdateClientProduct")
    body = callback("job.succeeded")
    status, _ = await post_callback(whmcs, body, msg_id="cb_again")
    assert status == 500
    status, answer = await post_callback(whmcs, body, msg_id="cb_again", timestamp=int(time.time()) + 1)
    assert status == 200 and answer["duplicate"] is False
    assert [c["values"]["serviceid"] for c in whmcs.api_calls("UpdateClientProduct")] == [42, 42]
    # The still-open ticket of service 42 (the third) hears that it worked out.
    assert whmcs.api_calls("AddTicketNote")[-1]["values"]["ticketid"] == 3


async def test_a_redelivery_after_a_failure_redoes_only_what_was_not_done(whmcs: Whmcs) -> None:
    """The activity log entry fails after the welcome e-mail went out: the redelivery must not
    send the customer a second one (nor add a second note to a ticket, nor open a second one)."""
    now = int(time.time())
    whmcs.fail_once("LogActivity")
    body = callback("job.succeeded")
    assert (await post_callback(whmcs, body, msg_id="cb_partial", timestamp=now))[0] == 500
    status, answer = await post_callback(whmcs, body, msg_id="cb_partial", timestamp=now + 1)
    assert status == 200 and answer["duplicate"] is False
    assert len(whmcs.api_calls("SendEmail")) == 1
    assert len(whmcs.api_calls("LogActivity")) == 2  # the one that failed, then the one that worked

    whmcs.fail_once("LogActivity")
    failure = callback("job.failed", status="failed", error="create_database: Access denied")
    assert (await post_callback(whmcs, failure, msg_id="cb_failed", timestamp=now))[0] == 500
    assert (await post_callback(whmcs, failure, msg_id="cb_failed", timestamp=now + 1))[0] == 200
    assert len(whmcs.api_calls("OpenTicket")) == 1
    assert whmcs.api_calls("AddTicketNote") == []


@pytest.mark.parametrize("status", ["Suspended", "Terminated", "Cancelled"])
async def test_a_late_success_does_not_reactivate_a_service_an_admin_has_since_stopped(
    whmcs: Whmcs, status: str
) -> None:
    # Callbacks are retried for a day: a job.succeeded may arrive after the service was stopped.
    whmcs.set_services({"id": SERVICE_ID, "clientid": 1, "domain": "example.com", "status": status})
    answer = await post_callback(whmcs, callback("job.succeeded"))
    assert answer == (200, {"ok": True, "duplicate": False})
    assert whmcs.api_calls("UpdateClientProduct") == [] and whmcs.api_calls("SendEmail") == []
    (log,) = whmcs.api_calls("LogActivity")
    assert f"not activated: the service is {status} in WHMCS" in log["values"]["description"]


async def test_a_callback_for_a_service_whmcs_no_longer_has_is_logged_and_acknowledged(whmcs: Whmcs) -> None:
    # Deleted in WHMCS: refusing it would only make the bridge retry for a day.
    whmcs.set_services()
    answer = await post_callback(whmcs, callback("job.succeeded"))
    assert answer == (200, {"ok": True, "duplicate": False})
    assert [c["command"] for c in whmcs.effects()] == ["LogActivity"]
    assert "WHMCS has no such service" in whmcs.api_calls("LogActivity")[0]["values"]["description"]


async def test_a_deferred_certificate_that_gives_up_opens_a_ticket(whmcs: Whmcs) -> None:
    # The service went live with SSL deferred; days later the bridge reports the certificate
    # gave up. The activity log alone would leave the site self-signed with nobody told.
    issued = {"kind": "issue_ssl", "status": "succeeded", "attempts": 2, "error": None}
    assert (await post_callback(whmcs, callback("job.updated", steps=[issued])))[0] == 200
    assert whmcs.api_calls("OpenTicket") == []
    gave_up = {"kind": "issue_ssl", "status": "failed", "attempts": 12, "error": "DNS does not point here"}
    assert (await post_callback(whmcs, callback("job.updated", steps=[gave_up])))[0] == 200
    (ticket,) = whmcs.api_calls("OpenTicket")
    assert ticket["values"]["subject"] == f"Provisioning failed: service #{SERVICE_ID} (example.com) at issue_ssl"
    message = ticket["values"]["message"]
    assert "is active, but its issue_ssl step gave up after 12 attempt(s)" in message
    assert "DNS does not point here" in message and "Retry provisioning" not in message
    assert whmcs.api_calls("UpdateClientProduct") == []


async def test_callback_ids_are_kept_at_least_as_long_as_the_bridge_redelivers(whmcs: Whmcs) -> None:
    # A minute would let a redelivery a day later (its first answer lost) be handled twice.
    config = whmcs.standin_dir.parent / "webroot" / "bridge_callback_config.php"
    short = config.read_text().replace("'department_id' => 7,", "'department_id' => 7, 'remember_ids_s' => 60,")
    config.write_text(short)
    assert (await post_callback(whmcs, callback("job.succeeded"), msg_id="cb_kept"))[0] == 200
    state = json.loads((whmcs.state_dir / "state.json").read_text())
    seen = state["seen:" + hashlib.sha256(b"cb_kept").hexdigest()]
    assert seen["expires_at"] - time.time() > 28 * 3600 - 60


async def test_a_redelivery_while_the_first_delivery_is_still_handled_is_not_acknowledged(whmcs: Whmcs) -> None:
    """The bridge gives up waiting on a slow WHMCS and delivers again. Answering that 2xx while the
    first delivery may still fail would lose the callback: the bridge counts it delivered."""
    now = int(time.time())
    whmcs.slow("SendEmail", 2.0)
    whmcs.fail_once("LogActivity")
    body = callback("job.succeeded")
    first = asyncio.create_task(post_callback(whmcs, body, msg_id="cb_slow", timestamp=now))
    await whmcs.wait_api("SendEmail", 1)
    status, answer = await post_callback(whmcs, body, msg_id="cb_slow", timestamp=now + 1)
    assert not 200 <= status < 300, answer
    assert (await first)[0] == 500
    # The bridge's next delivery finishes the work.
    status, answer = await post_callback(whmcs, body, msg_id="cb_slow", timestamp=now + 2)
    assert status == 200 and answer["duplicate"] is False
    assert len(whmcs.api_calls("SendEmail")) == 1
    assert len(whmcs.api_calls("LogActivity")) == 2


# --- the module's memory ------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["capsule", "file"])
def test_attempt_keys_passwords_and_claims_in_both_stores(store: str, tmp_path: Path) -> None:
    """The WHMCS database (through a Capsule stand-in) and the file fallback behave alike."""
    env = {**os.environ, "PROVISIONINGBRIDGE_STATE_DIR": str(tmp_path)}
    run = subprocess.run(
        [_php(), str(PHP_TESTS / "store_check.php"), store], capture_output=True, text=True, env=env, timeout=30
    )
    assert run.returncode == 0, run.stderr + run.stdout
    seen = json.loads(run.stdout)
    assert seen.pop("class").endswith("CapsuleStore" if store == "capsule" else "FileStore")
    assert seen == {
        "same_key_when_repeated": True,
        "wp_password_kept": True,
        "passwords_after_repeat": ["wp", "shop"],
        "job_recorded": ["job_1", "succeeded"],
        "new_key_after_success": True,
        "second_click_keeps_new_key": True,
        "passwords_survive_new_attempt": True,
        "same_order_after_failure_same_key": True,
        "changed_order_after_failure_new_key": True,
        "no_digest_after_failure_new_key": True,
        "changed_order_names_what_it_replaces": True,
        "clicked_again_still_names_it": True,
        "a_new_order_after_success_replaces_nothing": True,
        "replaced_ids_are_remembered": True,
        "claims": [True, False],
        "expired_is_gone": True,
        "deleted_is_gone": True,
    }


def test_a_claim_the_database_could_not_write_is_not_taken_for_a_duplicate() -> None:
    """With the WHMCS database failing (a deadlock), the claim of a new callback id fails: the
    receiver must not answer "already handled" and so drop a callback it never handled."""
    run = subprocess.run([_php(), str(PHP_TESTS / "claim_check.php")], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr + run.stdout
    assert json.loads(run.stdout) == {
        "first": "claimed",
        "present_while_failing": "already there",
        "absent_while_failing": "error",
    }


def _limit_file_size() -> None:
    """In the child: no file grows past 64 KiB; a write beyond fails (EFBIG) instead of killing it."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def _run_store_check(script: str, state_dir: Path, **popen: Any) -> dict[str, Any]:
    """Run one of the file store's PHP checks on ``state_dir``; what it printed, as JSON."""
    env = {**os.environ, "PROVISIONINGBRIDGE_STATE_DIR": str(state_dir)}
    run = subprocess.run(
        [_php(), "-d", "display_errors=stderr", str(PHP_TESTS / script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        **popen,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    return dict(json.loads(run.stdout))


def test_a_file_store_write_that_fails_part_way_is_an_error_and_the_file_keeps_what_it_held(tmp_path: Path) -> None:
    """The disk fills up while the state is written: the change must not be reported as stored,
    and the truncated write must not replace the state file (attempt keys, passwords, seen ids)."""
    seen = _run_store_check("store_write_check.php", tmp_path, preexec_fn=_limit_file_size)
    assert seen.pop("large").startswith("error: cannot write the state file"), seen
    assert seen == {"kept": {"attempt_key": "k1"}, "large_visible": False, "files": ["state.json", "state.lock"]}


async def test_a_state_file_that_cannot_be_written_is_reported_never_taken_for_stored(
    sqlite_url: str, full_disk_whmcs: Whmcs
) -> None:
    """Without Capsule the module's memory is state.json. When a change cannot be put in place,
    CreateAccount must say so rather than send an order it will not remember (each click would
    then be a new order), and a callback must be answered 500, not acknowledged as handled."""
    whmcs = full_disk_whmcs
    state = whmcs.state_dir / "state.json"
    # Readable, but no state holding it can be written again (not even by root).
    state.write_text(json.dumps({"service:7": {"value": {"padding": "x" * 100_000}, "expires_at": None}}))
    before = state.read_bytes()
    async with live_bridge(sqlite_url, whmcs) as bridge:
        result = await whmcs.module("CreateAccount", service_params(bridge, whmcs))
        assert result.startswith("Provisioning Bridge: cannot write the state file"), result
        assert await jobs_of(bridge) == []
    status, answer = await post_callback(whmcs, callback("job.succeeded"))
    assert status == 500, answer
    assert whmcs.effects() == []
    assert state.read_bytes() == before
    assert sorted(path.name for path in whmcs.state_dir.iterdir()) == ["state.json", "state.lock"]


async def test_the_client_area_does_not_show_the_customer_why_the_state_cannot_be_read(whmcs: Whmcs) -> None:
    state = whmcs.state_dir / "state.json"
    state.mkdir()
    area = await whmcs.module("ClientArea", {"serviceid": SERVICE_ID, "username": "john", "configoption4": "wp"})
    assert area["vars"] == {"pbDatabases": [], "pbUnavailable": True}
    assert str(whmcs.state_dir) not in json.dumps(area)
    logged = next(entry for entry in whmcs.module_log() if entry["action"] == "ClientArea")
    assert "cannot read the state file" in json.dumps(logged)


async def test_the_services_tab_shows_the_job_even_when_the_state_cannot_be_read(sqlite_url: str, whmcs: Whmcs) -> None:
    async with live_bridge(sqlite_url, whmcs) as bridge:
        params = service_params(bridge, whmcs)
        assert await whmcs.module("CreateAccount", params) == "success"
        [job_id] = await jobs_of(bridge)
        await bridge.wait_for(job_id, "succeeded")
        state = whmcs.state_dir / "state.json"
        state.unlink()
        state.mkdir()
        tab = await whmcs.module("AdminServicesTabFields", params)
    assert job_id in tab["Provisioning job"] and "succeeded" in tab["Provisioning job"]
    assert tab["Database passwords"].startswith("Could not be read: cannot read the state file")


# What the module remembers of other services (and of this one) when state.json breaks.
STATE = json.dumps(
    {
        f"service:{SERVICE_ID}": {"value": {"attempt_key": "k42", "job_id": "job_42"}, "expires_at": None},
        "service:7": {"value": {"attempt_key": "k7", "db_passwords": {"wp": "pw-7"}}, "expires_at": None},
        "seen:" + hashlib.sha256(b"cb_7").hexdigest(): {"value": {"state": "done"}, "expires_at": 2**31 - 1},
    }
)

# Ways state.json is there but holds no state that can be read; each works against root too.
BROKEN_STATES: dict[str, Callable[[Path], Any]] = {
    "truncated": lambda path: path.write_text(STATE[: len(STATE) // 2]),
    "empty": lambda path: path.write_text(""),
    "a_json_string": lambda path: path.write_text(json.dumps(STATE)),
    "a_json_list": lambda path: path.write_text(json.dumps([STATE])),
    "a_directory": lambda path: path.mkdir(),  # opens, but every read fails (EISDIR)
    "a_symlink_loop": lambda path: path.symlink_to(path.name),  # cannot even be opened
}


def _what_is_at(path: Path) -> tuple[str, Any]:
    if path.is_symlink():
        return "link", os.readlink(path)
    if path.is_dir():
        return "directory", sorted(child.name for child in path.iterdir())
    return "file", path.read_bytes()


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        ("truncated", "Syntax error"),
        ("empty", "Syntax error"),
        ("a_json_string", "not a JSON object"),
        ("a_json_list", "not a JSON object"),
        ("a_directory", "Is a directory"),
        ("a_symlink_loop", "Failed to open stream"),
    ],
)
def test_a_file_store_that_cannot_read_its_state_fails_every_operation_and_leaves_the_file_alone(
    broken: str, reason: str, tmp_path: Path
) -> None:
    """Taken for empty, a state.json that cannot be read or parsed would be replaced on the next
    write by that write's one entry: every other service's attempt key, job and passwords, and the
    callback ids already handled, gone without a word. It must be an error that says why, and the
    file must be left as it is."""
    state = tmp_path / "state.json"
    BROKEN_STATES[broken](state)
    before = _what_is_at(state)
    seen = _run_store_check("store_read_check.php", tmp_path)
    errors = {
        name: outcome.startswith(f"error: cannot read the state file {state}: ") and reason in outcome
        for name, outcome in seen["outcomes"].items()
    }
    assert errors == dict.fromkeys(["get", "put", "update", "add_if_absent", "delete"], True), seen["outcomes"]
    assert _what_is_at(state) == before
    assert seen["files"] == ["state.json", "state.lock"]


@pytest.mark.parametrize("state", [None, "[]"])
def test_a_file_store_with_no_state_file_or_no_entries_starts_empty(state: str | None, tmp_path: Path) -> None:
    """No state.json yet is an empty state, and so is the "[]" written once every entry is gone."""
    if state is not None:
        (tmp_path / "state.json").write_text(state)
    seen = _run_store_check("store_read_check.php", tmp_path)
    assert seen["outcomes"] == dict.fromkeys(["get", "put", "update", "add_if_absent", "delete"], "done")
    assert json.loads((tmp_path / "state.json").read_text()).keys() == {"service:8", "seen:b"}


@pytest.mark.parametrize("broken", ["truncated", "a_directory"])
async def test_a_state_file_that_cannot_be_read_is_reported_never_taken_for_empty(
    broken: str, sqlite_url: str, whmcs: Whmcs
) -> None:
    """Taken for empty, the state would give this service a new attempt key (a second order for it)
    and be replaced by that one record. CreateAccount must say so and send nothing; a callback must
    be answered 500 (the bridge delivers it again later), not handled without its state."""
    state = whmcs.state_dir / "state.json"
    BROKEN_STATES[broken](state)
    before = _what_is_at(state)
    async with live_bridge(sqlite_url, whmcs) as bridge:
        result = await whmcs.module("CreateAccount", service_params(bridge, whmcs))
        assert result.startswith(f"Provisioning Bridge: cannot read the state file {state}: "), result
        assert await jobs_of(bridge) == []
    status, answer = await post_callback(whmcs, callback("job.succeeded"))
    assert status == 500, answer
    assert whmcs.effects() == []
    assert _what_is_at(state) == before
    assert sorted(path.name for path in whmcs.state_dir.iterdir()) == ["state.json", "state.lock"]
