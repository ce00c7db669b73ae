"""No password reaches a log line, a call record, an outcome or a repr."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from panel_fixtures import (
    ServerFactory,
    base_url,
    panel,
    panel_http,
    panel_server,
    panel_sim,
    sim_clock,
)

from bridge.domain.masking import MASK
from bridge.panel.client import CallResult, PanelClient
from bridge.panel.config import PanelCredentials, PanelServer
from bridge.panel.simulator import PanelSimulator

__all__ = ["panel", "panel_http", "panel_server", "panel_sim", "sim_clock"]

ACCOUNT_PASSWORD = "Acct-Zq81-Xylophone"
DB_PASSWORD = "Db-Qv72-Marmalade"
WRONG_PASSWORD = "Wrong-Kk19-Pelican"
CREDS = PanelCredentials("erin", ACCOUNT_PASSWORD)
SECRETS = (ACCOUNT_PASSWORD, DB_PASSWORD, WRONG_PASSWORD)


def assert_clean(results: list[CallResult], caplog: pytest.LogCaptureFixture) -> None:
    texts = [repr(r) for r in results] + [str(r.outcome) for r in results]
    texts += [caplog.text] + [r.getMessage() for r in caplog.records]
    texts += [repr(r.args) for r in caplog.records]
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


@pytest.fixture
def erin(panel_sim: PanelSimulator) -> PanelSimulator:
    panel_sim.add_account("erin", ACCOUNT_PASSWORD, db_limit=5)
    return panel_sim


async def test_passwords_never_leak(panel: PanelClient, erin: PanelSimulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = PanelCredentials("erin", WRONG_PASSWORD)
    results = [
        await panel.account_info(CREDS),
        await panel.account_info(wrong),
        await panel.db_make(CREDS, "wp", "wpuser", DB_PASSWORD),
        await panel.db_make(CREDS, "wp", "wpuser", DB_PASSWORD),  # already exists
        await panel.db_make(wrong, "shop", "shopuser", DB_PASSWORD),
        await panel.db_make(CREDS, "bad name", "wpuser", DB_PASSWORD),  # never sent
        await panel.db_make(CREDS, "shop", "shopuser", DB_PASSWORD + "\n"),  # never sent
    ]
    erin.inject_fault("db_make", "reset")
    results.append(await panel.db_make(CREDS, "blog", "bloguser", DB_PASSWORD))
    erin.inject_fault("db_make", "html500")
    results.append(await panel.db_make(CREDS, "blog", "bloguser", DB_PASSWORD))
    erin.inject_fault("db_make", f"error:Access denied for 'erin_x' IDENTIFIED BY '{DB_PASSWORD}'")
    results.append(await panel.db_make(CREDS, "news", "newsuser", DB_PASSWORD))

    kinds = [r.record.outcome for r in results]
    assert kinds == [
        "succeeded",
        "permanent",
        "succeeded",
        "already_exists",
        "permanent",
        "permanent",
        "permanent",
        "unknown",
        "unknown",
        "permanent",
    ]
    for result in results:
        assert result.record.request["password"] == MASK
    sent = results[2].record.request
    assert sent["dbpass"] == sent["dbpassc"] == MASK
    assert results[6].record.request["dbpass"] == MASK
    assert MASK in results[-1].record.message  # the echoed password was replaced
    assert caplog.records, "each call logs a line"
    assert_clean(results, caplog)


async def test_echoing_panel_and_transport_errors(
    aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Even a panel that quotes the whole request back cannot leak it into a record."""

    async def echo(request: web.Request) -> web.Response:
        form = dict(await request.post())
        fields: dict[str, Any] = {**form, "header_password": request.headers.get("password")}
        return web.json_response({"success": False, "error": f"boom {fields}", "echo": fields})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    server: TestServer = await aiohttp_server(app)
    caplog.set_level(logging.DEBUG)
    results = []
    async with PanelClient(PanelServer(name="echo", url=base_url(server))) as client:
        results.append(await client.db_make(CREDS, "wp", "wpuser", DB_PASSWORD))
        results.append(await client.account_info(CREDS))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    async with PanelClient(PanelServer(name="down", url=f"http://127.0.0.1:{closed_port}")) as c:
        results.append(await c.db_make(CREDS, "wp", "wpuser", DB_PASSWORD))
    assert [r.record.outcome for r in results] == ["permanent", "permanent", "retryable"]
    assert "boom" in results[0].record.response
    assert_clean(results, caplog)


def test_credentials_repr_masks_the_password() -> None:
    for text in (repr(CREDS), str(CREDS), f"{CREDS}", repr([CREDS])):
        assert ACCOUNT_PASSWORD not in text
        assert "erin" in text and MASK in text
    assert CREDS.password == ACCOUNT_PASSWORD
