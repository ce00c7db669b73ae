"""RabbitMQ fixtures: a virtual host of the test session's own, and queues in it.

Import the fixtures into a test module explicitly::

    from rabbit_fixtures import amqp_url_fixture, make_rabbit_queue_fixture, rabbit_vhost_fixture

(each registers under the name without ``_fixture``: ``amqp_url``, ...).

The broker is found at ``BRIDGE_TEST_AMQP_URL`` (default: guest on localhost).
When it cannot be reached the tests are skipped, except in CI (``CI=true``),
where they fail: CI must never pass by skipping them.

The session's vhost is made with ``rabbitmqctl`` and deleted afterwards. Where
``rabbitmqctl`` is not available the URL's own vhost is used; every queue then
carries a unique prefix and is deleted after its test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aio_pika
import pytest

from bridge.broker.rabbitmq import RabbitQueue

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass(frozen=True)
class RabbitVhost:
    url: str  # AMQP URL of the vhost
    name: str
    owned: bool  # made for this session (so tests may disturb its connections)


def _unreachable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"RabbitMQ is required in CI: {reason}")
    pytest.skip(f"RabbitMQ not available: {reason}")


def rabbitmqctl(*args: str) -> bool:
    """Run ``rabbitmqctl`` with ``args``; whether it succeeded."""
    if shutil.which("rabbitmqctl") is None:
        return False
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, timeout=30, check=False)
    return done.returncode == 0


@pytest.fixture(scope="session", name="rabbit_vhost")
def rabbit_vhost_fixture() -> Iterator[RabbitVhost]:
    """A vhost for this test session, deleted at its end."""
    base = os.environ.get("BRIDGE_TEST_AMQP_URL", DEFAULT_URL)
    parts = urlsplit(base)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            pass
    except OSError as exc:
        _unreachable(f"{parts.hostname}:{parts.port}: {exc}")

    name = f"bridge-test-{uuid.uuid4().hex[:8]}"
    user = unquote(parts.username or "guest")
    if rabbitmqctl("add_vhost", name) and rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*"):
        url = urlunsplit(parts._replace(path="/" + quote(name, safe="")))
        yield RabbitVhost(url=url, name=name, owned=True)
        rabbitmqctl("delete_vhost", name)
    else:
        yield RabbitVhost(url=base, name=unquote(parts.path[1:]) or "/", owned=False)


@pytest.fixture(name="amqp_url")
def amqp_url_fixture(rabbit_vhost: RabbitVhost) -> str:
    """The AMQP URL of the session's vhost."""
    return rabbit_vhost.url


MakeRabbitQueue = Callable[..., Awaitable[RabbitQueue]]


@pytest.fixture(name="make_rabbit_queue")
async def make_rabbit_queue_fixture(amqp_url: str) -> AsyncIterator[MakeRabbitQueue]:
    """Make started RabbitQueues with a prefix unique to the test; all closed and deleted after.

    Keyword arguments go to RabbitQueue; short delay buckets and timeouts by default.
    ``url`` overrides the vhost URL (e.g. to add query parameters).
    """
    prefix = f"t{uuid.uuid4().hex[:8]}"
    made: list[RabbitQueue] = []

    async def make(**kwargs: Any) -> RabbitQueue:
        settings: dict[str, Any] = {
            "prefix": prefix,
            "delivery_limit": 2,
            "delay_buckets_s": (0.3, 1.0),
            "confirm_timeout_s": 2.0,
            "redelivery_delay_s": 0.05,
        }
        settings.update(kwargs)
        queue = RabbitQueue(settings.pop("url", amqp_url), **settings)
        await queue.start()
        made.append(queue)
        return queue

    yield make

    for queue in made:
        await queue.close()
    names = {name for queue in made for name in queue.names.all}
    if names:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            for name in names:
                channel = await connection.channel()
                await channel.queue_delete(name)
                await channel.close()
