"""Fixtures for tests that talk to the panel simulator.

Import the fixtures a test module needs (``from panel_fixtures import ...``);
the simulator runs on a random local port with a manual clock, so firewall
minutes pass without sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.panel.client import PanelClient
from bridge.panel.config import PanelCredentials, PanelServer
from bridge.panel.simulator import ManualClock, PanelSimulator

ALICE = PanelCredentials("alice", "Alice-Panel-Pass-1")
BOB = PanelCredentials("bob", "Bob-Panel-Pass-22")
ALICE_DOMAIN_LIMIT = 3
ALICE_DB_LIMIT = 2

ServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
def sim_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def panel_sim(sim_clock: ManualClock) -> PanelSimulator:
    """A simulator with alice (3 domains, 2 database users) and bob (unlimited)."""
    sim = PanelSimulator(clock=sim_clock)
    sim.add_account(ALICE.username, ALICE.password, ALICE_DOMAIN_LIMIT, ALICE_DB_LIMIT)
    sim.add_account(BOB.username, BOB.password)
    return sim


@pytest.fixture
async def panel_http(aiohttp_server: ServerFactory, panel_sim: PanelSimulator) -> TestServer:
    return await aiohttp_server(panel_sim.app())


def base_url(server: TestServer) -> str:
    return str(server.make_url("/")).rstrip("/")


@pytest.fixture
def panel_server(panel_http: TestServer) -> PanelServer:
    """Short timeouts: late answers in tests are a fraction of a second."""
    return PanelServer(name="sim", url=base_url(panel_http), timeout_s=1.0, read_timeout_s=1.0)


@pytest.fixture
async def panel(panel_server: PanelServer) -> AsyncIterator[PanelClient]:
    async with PanelClient(panel_server) as client:
        yield client


async def serve(app: web.Application, aiohttp_server: ServerFactory, **kwargs: Any) -> TestServer:
    return await aiohttp_server(app, **kwargs)
