"""POST /webhooks/orders: signatures, validation, durable storage and duplicates."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import FERNET_KEY, WEBHOOK_SECRET
from orders import ACCOUNT_PASSWORD, DB_PASSWORD, service_create, signed
from raw_http import raw_request
from sqlalchemy import func, select, text, update

from bridge.bootstrap import Runtime, build_app, open_runtime
from bridge.broker.memory import InProcessQueue
from bridge.settings import Settings
from bridge.store import tables as t
from bridge.store.intake import asyncpg_connect_args
from bridge.store.types import utcnow

PANELS = [{"name": "default", "url": "http://127.0.0.1:1"}]


def make_settings(db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "webhook_secrets": [WEBHOOK_SECRET],
        "secret_key": [FERNET_KEY],
        "panels": PANELS,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def runtime(db_url: str) -> AsyncIterator[Runtime]:
    async with open_runtime(make_settings(db_url), queue=InProcessQueue()) as rt:
        yield rt


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(build_app(runtime))) as test_client:
        yield test_client


async def post(client: TestClient, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    response = await client.post("/webhooks/orders", data=body, headers=headers)
    return response.status, await response.json()


async def count(runtime: Runtime, table: Any) -> int:
    async with runtime.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def test_accepted_event_is_stored_with_job_steps_and_outbox_row(client: TestClient, runtime: Runtime) -> None:
    status, answer = await post(client, *signed(WEBHOOK_SECRET, service_create()))
    assert status == 202
    assert answer["status"] == "accepted" and answer["duplicate"] is False
    async with runtime.engine.connect() as conn:
        job = (await conn.execute(select(t.jobs).where(t.jobs.c.public_id == answer["job_id"]))).one()
        kinds = (await conn.execute(select(t.steps.c.kind).order_by(t.steps.c.position))).scalars().all()
        outbox = (await conn.execute(select(t.outbox.c.job_public_id))).scalars().all()
    assert job.status == "accepted" and job.service_id == "4711" and job.domain == "example.com"
    assert kinds == ["check_account", "add_domain", "issue_ssl", "create_database", "add_cron_job"]
    assert outbox == [answer["job_id"]]


async def test_same_webhook_id_answers_200_with_the_same_job(client: TestClient, runtime: Runtime) -> None:
    body, headers = signed(WEBHOOK_SECRET, service_create(), webhook_id="msg_same")
    first_status, first = await post(client, body, headers)
    again_status, again = await post(client, body, headers)
    assert (first_status, again_status) == (202, 200)
    assert again == {"job_id": first["job_id"], "status": "accepted", "duplicate": True, "job_status": "accepted"}
    assert await count(runtime, t.jobs) == 1
    assert await count(runtime, t.outbox) == 1


async def test_a_duplicate_tells_where_the_job_is_now(client: TestClient, runtime: Runtime) -> None:
    # A billing platform retrying a delivery after the work was done learns that it was.
    body, headers = signed(WEBHOOK_SECRET, service_create(), webhook_id="msg_later")
    first = (await post(client, body, headers))[1]
    async with runtime.engine.begin() as conn:
        await conn.execute(update(t.jobs).values(status="succeeded"))
    status, again = await post(client, body, headers)
    assert status == 200 and again["job_id"] == first["job_id"] and again["job_status"] == "succeeded"


async def test_fifty_concurrent_copies_make_one_job_and_one_outbox_row(client: TestClient, runtime: Runtime) -> None:
    body, headers = signed(WEBHOOK_SECRET, service_create(), webhook_id="msg_burst")
    results = await asyncio.gather(*(post(client, body, headers) for _ in range(50)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 49 + [202]
    assert len({answer["job_id"] for _, answer in results}) == 1
    assert await count(runtime, t.jobs) == 1
    assert await count(runtime, t.events) == 1
    assert await count(runtime, t.outbox) == 1


def _tamper(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return body.replace(b"example.com", b"evil.com"), headers


def _without(name: str):  # type: ignore[no-untyped-def]
    def change(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        return body, {k: v for k, v in headers.items() if k != name}

    return change


def _header(name: str, value: str):  # type: ignore[no-untyped-def]
    def change(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        return body, {**headers, name: value}

    return change


SIGNATURE_CASES = {
    "wrong secret": lambda b, h: signed("whsec_" + base64.b64encode(b"x" * 32).decode(), json.loads(b)),
    "tampered body": _tamper,
    "stale timestamp": lambda b, h: signed(WEBHOOK_SECRET, json.loads(b), timestamp=int(time.time()) - 301),
    "future timestamp": lambda b, h: signed(WEBHOOK_SECRET, json.loads(b), timestamp=int(time.time()) + 301),
    "missing id": _without("webhook-id"),
    "missing timestamp": _without("webhook-timestamp"),
    "missing signature": _without("webhook-signature"),
    "timestamp not a number": _header("webhook-timestamp", "yesterday"),
    "malformed signature": _header("webhook-signature", "v1"),
    "signature without version": _header("webhook-signature", "abcdef"),
    "bad base64": _header("webhook-signature", "v1,!!!not-base64!!!"),
    "unknown version only": _header("webhook-signature", "v2,AAAA"),
    "timestamp of thousands of digits": _header("webhook-timestamp", "9" * 5000),
    "timestamp with a superscript digit": _header("webhook-timestamp", "²"),
    "bad signature on a body that is not even JSON": lambda b, h: (b"{not json", h),
}


@pytest.mark.parametrize("case", sorted(SIGNATURE_CASES))
async def test_signature_negatives_are_401_and_store_nothing(case: str, client: TestClient, runtime: Runtime) -> None:
    body, headers = signed(WEBHOOK_SECRET, service_create())
    body, headers = SIGNATURE_CASES[case](body, headers)
    status, answer = await post(client, body, headers)
    assert status == 401, answer
    assert answer["error"]
    assert await count(runtime, t.events) == 0


async def test_non_utf8_body_is_refused(client: TestClient, runtime: Runtime) -> None:
    body = b'{"type": "service.create", "x": "\xff\xfe"}'
    headers = {
        "webhook-id": "msg_bin",
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": "v1,AAAA",
    }
    status, answer = await post(client, body, headers)
    assert status == 401 and "UTF-8" in answer["error"]
    assert await count(runtime, t.events) == 0


async def test_either_of_two_rotating_secrets_verifies(db_url: str) -> None:
    old, new = WEBHOOK_SECRET, "whsec_" + base64.b64encode(b"n" * 32).decode()
    settings = make_settings(db_url, webhook_secrets=[new, old])
    async with (
        open_runtime(settings, queue=InProcessQueue()) as rt,
        TestClient(TestServer(build_app(rt))) as test_client,
    ):
        for secret in (old, new):
            status, _ = await post(test_client, *signed(secret, service_create()))
            assert status == 202


def with_second_database(name: str, user: str) -> dict[str, Any]:
    """An order with two databases: wp (user wpuser), then ``name`` (user ``user``)."""
    first, second = ({"name": n, "user": u, "password": DB_PASSWORD} for n, u in (("wp", "wpuser"), (name, user)))
    return service_create(databases=[first, second])


INVALID_CASES: dict[str, tuple[Any, str]] = {
    "unknown type": ({"type": "service.delete", "data": service_create()["data"]}, "type"),
    "bad domain": (service_create(domain="exa mple.com"), "data.domain"),
    "missing account": (
        {"type": "service.create", "data": {"service_id": "1", "domain": "a.com"}},
        "data.account",
    ),
    "unknown panel": (service_create(panel="nope"), "data.panel"),
    "short db password": (
        service_create(databases=[{"name": "wp", "user": "wpuser", "password": "short"}]),
        "data.databases.0.password",
    ),
    "cron injection": (
        service_create(
            cron_jobs=[
                {
                    "minute": "*\n* * * * * rm -rf /",
                    "hour": "*",
                    "day": "*",
                    "month": "*",
                    "weekday": "*",
                    "command": "x",
                }
            ]
        ),
        "data.cron_jobs.0.minute",
    ),
    "db name too long for account": (
        service_create(databases=[{"name": "w" * 60, "user": "wpuser", "password": DB_PASSWORD}]),
        "data.databases.0.name",
    ),
    "db name given twice": (with_second_database("wp", "shopuser"), "data.databases.1.name"),
    "replaces not a webhook-id": (
        {"type": "service.create", "data": {**service_create()["data"], "replaces": "whmcs 42 k1"}},
        "data.replaces",
    ),
    # db_make makes the database before it finds the user taken: the second would be an orphan.
    "db user shared by two databases": (with_second_database("shop", "wpuser"), "data.databases.1.user"),
}


@pytest.mark.parametrize("case", sorted(INVALID_CASES))
async def test_invalid_events_are_422_naming_the_field(case: str, client: TestClient, runtime: Runtime) -> None:
    event, field = INVALID_CASES[case]
    status, answer = await post(client, *signed(WEBHOOK_SECRET, event))
    assert status == 422, answer
    assert field in [f["loc"] for f in answer["fields"]], answer
    assert field in answer["error"]
    assert await count(runtime, t.events) == 0


async def test_not_json_is_400(client: TestClient) -> None:
    status, answer = await post(client, *signed(WEBHOOK_SECRET, b"{not json"))
    assert status == 400 and answer["error"].startswith("body:")


async def test_body_over_64_kib_is_413(client: TestClient, runtime: Runtime) -> None:
    event = service_create()
    event["data"]["padding"] = "x" * (64 * 1024)
    response = await client.post("/webhooks/orders", data=json.dumps(event).encode(), headers={})
    assert response.status == 413
    assert "body" in (await response.json())["error"]
    assert await count(runtime, t.events) == 0


async def test_passwords_never_reach_the_database_in_clear(client: TestClient, runtime: Runtime) -> None:
    status, _ = await post(client, *signed(WEBHOOK_SECRET, service_create()))
    assert status == 202
    async with runtime.engine.connect() as conn:
        dump = []
        for table in (t.events, t.jobs, t.steps, t.outbox):
            dump += [repr(tuple(row)) for row in (await conn.execute(select(table))).all()]
    everything = "\n".join(dump)
    assert ACCOUNT_PASSWORD not in everything
    assert DB_PASSWORD not in everything
    assert "fernet:" in everything


async def consumed(queue: InProcessQueue) -> list[str]:
    """Every job id the queue has delivered so far."""
    seen: list[str] = []

    async def handler(job_id: str) -> None:
        seen.append(job_id)

    consumer = await queue.consume(handler, prefetch=10)
    await queue.join()
    await consumer.stop()
    return seen


async def test_database_down_is_503_and_nothing_is_published() -> None:
    queue = InProcessQueue()
    url = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
    async with (
        open_runtime(make_settings(url), queue=queue) as rt,
        TestClient(TestServer(build_app(rt))) as test_client,
    ):
        status, answer = await post(test_client, *signed(WEBHOOK_SECRET, service_create()))
        assert status == 503 and "NOT stored" in answer["error"]
        await rt.relay.drain_quietly()
        assert await consumed(queue) == []


async def test_orders_are_stored_again_after_postgresql_drops_the_intake_connections(pg_url: str) -> None:
    async with (
        open_runtime(make_settings(pg_url), queue=InProcessQueue()) as rt,
        TestClient(TestServer(build_app(rt))) as test_client,
    ):
        first = await asyncio.gather(*(post(test_client, *signed(WEBHOOK_SECRET, service_create())) for _ in range(5)))
        assert [status for status, _ in first] == [202] * 5
        async with rt.engine.connect() as conn:
            dropped = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        assert dropped
        statuses = []
        for _ in range(3):
            status, _ = await post(test_client, *signed(WEBHOOK_SECRET, service_create()))
            statuses.append(status)
        # A connection found dead is a 503 (the event was not stored, the sender retries); the
        # pool then reconnects.
        assert set(statuses) <= {202, 503} and statuses[-1] == 202
        assert await count(rt, t.jobs) == 5 + statuses.count(202)


async def test_sqlalchemy_url_options_reach_the_intake_pool(pg_url: str) -> None:
    # Behind a transaction-pooling PgBouncer the URL turns prepared statements off.
    url = pg_url + ("&" if "?" in pg_url else "?") + "prepared_statement_cache_size=0"
    async with (
        open_runtime(make_settings(url), queue=InProcessQueue()) as rt,
        TestClient(TestServer(build_app(rt))) as test_client,
    ):
        assert asyncpg_connect_args(rt.engine)["statement_cache_size"] == 0
        for _ in range(2):
            status, _ = await post(test_client, *signed(WEBHOOK_SECRET, service_create()))
            assert status == 202


async def test_relay_publishes_only_committed_rows(runtime: Runtime, client: TestClient) -> None:
    async with runtime.engine.connect() as conn:
        trans = await conn.begin()
        await conn.execute(t.outbox.insert().values(job_public_id="rolled-back", delay_s=0.0, created_at=utcnow()))
        await trans.rollback()
    status, answer = await post(client, *signed(WEBHOOK_SECRET, service_create()))
    assert status == 202
    assert await runtime.relay.drain() == 1
    assert await consumed(runtime.queue) == [answer["job_id"]]  # type: ignore[arg-type]
    async with runtime.engine.connect() as conn:
        sent = (await conn.execute(select(t.outbox.c.job_public_id, t.outbox.c.sent_at))).all()
    assert [row.job_public_id for row in sent] == [answer["job_id"]]
    assert sent[0].sent_at is not None
    assert await runtime.relay.drain() == 0


GARBAGE: dict[str, Any] = {
    "data is a string": {"type": "service.create", "data": "x"},
    "data is null": {"type": "service.create", "data": None},
    "type is a number": {"type": 7, "data": {}},
    "ssl is a word": {**service_create(), "data": {**service_create()["data"], "ssl": "perhaps"}},
    "databases is an object": {**service_create(), "data": {**service_create()["data"], "databases": {"a": 1}}},
    "unknown field": {**service_create(), "data": {**service_create()["data"], "colour": "blue"}},
    "unicode domain": service_create(domain="exämple.com"),
    "huge number": {**service_create(), "data": {**service_create()["data"], "service_id": 10**400}},
    "deep nesting": {"type": "service.create", "data": {"account": [[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]}},
    "nesting deeper than the parser's recursion": None,
    "list body": [1, 2, 3],
    "string body": "hello",
    "null body": None,
    "callback url not http": service_create(callback_url="file:///etc/passwd"),
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
async def test_whatever_a_client_sends_is_a_4xx_never_a_5xx(case: str, client: TestClient, runtime: Runtime) -> None:
    special = {
        "huge number": b'{"type": 1, "data": {"x": 1e999999}}',
        "nesting deeper than the parser's recursion": b"[" * 30000 + b"]" * 30000,
    }
    body = special.get(case) or json.dumps(GARBAGE[case]).encode()
    status, answer = await post(client, *signed(WEBHOOK_SECRET, body))
    assert 400 <= status < 500, (status, answer)
    assert answer["error"]
    assert await count(runtime, t.events) == 0


CALLBACK_URLS_REFUSED = {
    "a NUL character": "https://billing.example.com/cb\x00",
    "a line break": "https://billing.example.com/cb\nX-Injected: 1",
    "a space in the host": "https://billing example.com/cb",
    "no host": "https:///cb",
    "an unclosed IPv6 bracket": "http://[::1/cb",
    "a port that is not a number": "https://billing.example.com:https/cb",
    "a port out of range": "https://billing.example.com:99999/cb",
}


@pytest.mark.parametrize("case", sorted(CALLBACK_URLS_REFUSED))
async def test_a_callback_url_that_is_not_a_url_is_422(case: str, client: TestClient, runtime: Runtime) -> None:
    # PostgreSQL cannot store a NUL at all: without this check the answer was a 503
    # "send it again later", which a billing platform would repeat for ever.
    event = service_create(callback_url=CALLBACK_URLS_REFUSED[case])
    status, answer = await post(client, *signed(WEBHOOK_SECRET, event))
    assert status == 422, answer
    assert [f["loc"] for f in answer["fields"]] == ["data.callback_url"]
    assert await count(runtime, t.events) == 0


async def test_an_ordinary_callback_url_is_kept(client: TestClient, runtime: Runtime) -> None:
    url = "https://billing.example.com:8443/bridge_callback.php?x=1"
    status, answer = await post(client, *signed(WEBHOOK_SECRET, service_create(callback_url=url)))
    assert status == 202, answer
    async with runtime.engine.connect() as conn:
        assert (await conn.execute(select(t.jobs.c.callback_url))).scalar_one() == url


async def test_a_webhook_id_that_is_not_utf8_is_401(client: TestClient, runtime: Runtime) -> None:
    body, headers = signed(WEBHOOK_SECRET, service_create())
    head = b"POST /webhooks/orders HTTP/1.1\r\nHost: bridge\r\nwebhook-id: msg_\xff\xfe\r\n" + b"\r\n".join(
        f"{name}: {value}".encode() for name, value in headers.items() if name != "webhook-id"
    )
    status, answer = await raw_request(client, head, body)
    assert status == 401, answer
    assert json.loads(answer)["error"].startswith("webhook-id: ")
    assert await count(runtime, t.events) == 0


async def test_a_body_that_does_not_decode_as_its_content_encoding_is_400(client: TestClient, runtime: Runtime) -> None:
    body, headers = signed(WEBHOOK_SECRET, service_create())
    response = await client.post("/webhooks/orders", data=body, headers={**headers, "Content-Encoding": "gzip"})
    assert response.status == 400
    assert (await response.json())["error"].startswith("body: ")
    assert await count(runtime, t.events) == 0


async def test_sqlite_commits_reach_the_disk_before_the_answer(sqlite_url: str) -> None:
    # WAL with synchronous=NORMAL can lose the last commits on a power loss; a 202 must not.
    async with open_runtime(make_settings(sqlite_url), queue=InProcessQueue()) as rt, rt.engine.connect() as conn:
        assert (await conn.execute(text("PRAGMA synchronous"))).scalar_one() == 2  # FULL
        assert (await conn.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"


@pytest.mark.parametrize(
    "where",
    [("databases", 0, "password"), ("cron_jobs", 0, "command"), ("account", "password")],
    ids=lambda where: ".".join(map(str, where)),
)
async def test_a_lone_surrogate_escape_is_a_422_naming_the_field(
    client: TestClient, runtime: Runtime, where: tuple[str | int, ...]
) -> None:
    # JSON allows "\ud800" alone; no UTF-8 text can carry it, so it could be neither encrypted nor stored.
    order = service_create()
    *path, last = where
    node: Any = order["data"]
    for part in path:
        node = node[part]
    node[last] = "sur\ud800rogate-pass"
    raw = json.dumps(order).encode()  # ensure_ascii: the escape itself goes over the wire
    assert b"\\ud800" in raw
    body, headers = signed(WEBHOOK_SECRET, raw)
    response = await client.post("/webhooks/orders", data=body, headers=headers)
    assert response.status == 422, await response.text()
    answer = await response.json()
    assert answer["fields"][0]["loc"] == "data." + ".".join(map(str, where))
    msg = answer["fields"][0]["msg"]
    assert ("surrogate" in msg or "unicode" in msg) and "rogate-pass" not in await response.text()
    assert await count(runtime, t.events) == 0


async def test_a_field_given_twice_in_one_object_is_a_422_naming_it(client: TestClient, runtime: Runtime) -> None:
    # JSON allows it and a parser keeps the last: which domain was meant is anyone's guess.
    raw = json.dumps(service_create(domain="first.example.com")).encode()
    first = b'"domain": "first.example.com"'
    raw = raw.replace(first, first + b', "domain": "second.example.com"')
    body, headers = signed(WEBHOOK_SECRET, raw)
    response = await client.post("/webhooks/orders", data=body, headers=headers)
    assert response.status == 422
    answer = await response.json()
    msg = "given twice in one JSON object; each field may appear once"
    assert answer["fields"] == [{"loc": "data.domain", "msg": msg}]
    assert answer["error"].startswith("data.domain: given twice")
    assert await count(runtime, t.events) == 0
