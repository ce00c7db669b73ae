"""Shared fixtures: databases (SQLite and a real PostgreSQL), settings and secrets.

PostgreSQL is found at BRIDGE_TEST_PG (default: postgres on 127.0.0.1, trust auth).
Each test session gets a database of its own, so runs never see each other's rows.
When PostgreSQL cannot be reached the tests that need it are skipped, except with
CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

sys.path.insert(0, str(Path(__file__).parent))

from rabbit_fixtures import (  # noqa: F401  (fixtures shared by every test)
    amqp_url_fixture,
    make_rabbit_queue_fixture,
    rabbit_vhost_fixture,
)
from tls_certs import certificate_fixture  # noqa: F401

from bridge.store.database import create_engine, migrate
from bridge.store.tables import metadata

PG_ADMIN_DSN = os.environ.get("BRIDGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CALLBACK_SECRET = "whsec_C2FsbGJhY2stc2VjcmV0LWZvci10ZXN0cw=="
ADMIN_TOKEN = "test-admin-token-0123456789"
FERNET_KEY = Fernet.generate_key().decode()


def service_missing(what: str, reason: str) -> None:
    """Skip, or fail under CI=true: CI must never pass by skipping a real service."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required in CI: {reason}")
    pytest.skip(f"{what} not available: {reason}")


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, whatever loop the caller is in."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def _with_database(dsn: str, name: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def pg_session_url() -> Iterator[str]:
    """A migrated PostgreSQL database of this test session's own (SQLAlchemy URL)."""
    name = f"bridge_test_{uuid.uuid4().hex[:10]}"
    try:
        url = run_async(create_pg_database(name))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        service_missing("PostgreSQL", f"{PG_ADMIN_DSN}: {exc}")
    run_async(migrate(url))
    yield url
    run_async(drop_pg_database(name))


async def create_pg_database(name: str) -> str:
    """An empty PostgreSQL database; its SQLAlchemy URL."""
    await _as_admin(f'CREATE DATABASE "{name}"')
    return _with_database(PG_ADMIN_DSN, name).replace("postgresql://", "postgresql+asyncpg://", 1)


async def drop_pg_database(name: str) -> None:
    await _as_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _as_admin(statement: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _truncate(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            names = ", ".join(f'"{table.name}"' for table in metadata.sorted_tables)
            await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()


@pytest.fixture
async def pg_url(pg_session_url: str) -> AsyncIterator[str]:
    """The session's PostgreSQL database, emptied for this test."""
    await _truncate(pg_session_url)
    yield pg_session_url


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'bridge.db'}"
    await migrate(url)
    return url


@pytest.fixture(params=["sqlite", "pg"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using it runs once on SQLite and once on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """The bridge's engine on ``db_url`` (so on SQLite and on PostgreSQL in turn)."""
    engine = create_engine(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def secrets_env() -> dict[str, str]:
    return {
        "webhook_secrets": WEBHOOK_SECRET,
        "callback_secret": CALLBACK_SECRET,
        "admin_tokens": ADMIN_TOKEN,
        "secret_key": FERNET_KEY,
    }


@pytest.fixture(params=["embedded", "pg+rabbitmq"])
def deployment(request: pytest.FixtureRequest) -> dict[str, str]:
    """Where the bridge keeps its state: SQLite + in-process queue, or PostgreSQL + RabbitMQ."""
    if request.param == "embedded":
        return {"db_url": str(request.getfixturevalue("sqlite_url")), "amqp_url": ""}
    return {"db_url": str(request.getfixturevalue("pg_url")), "amqp_url": str(request.getfixturevalue("amqp_url"))}
