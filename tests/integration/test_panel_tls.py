"""Trusting a panel's self-signed certificate: by CA file or by pinned fingerprint."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from panel_fixtures import ALICE, ServerFactory, panel_sim, sim_clock
from tls_certs import SelfSigned

from bridge.domain.outcomes import FailureReason, PermanentFailure, Succeeded
from bridge.panel.client import PanelClient
from bridge.panel.config import PanelServer
from bridge.panel.simulator import PanelSimulator

__all__ = ["panel_sim", "sim_clock"]


@pytest.fixture
async def https_url(aiohttp_server: ServerFactory, panel_sim: PanelSimulator, certificate: SelfSigned) -> str:
    server: TestServer = await aiohttp_server(panel_sim.app(), host="127.0.0.1", ssl=certificate.server_context())
    return f"https://127.0.0.1:{server.port}"


async def account_info(server: PanelServer) -> object:
    async with PanelClient(server) as client:
        return (await client.account_info(ALICE)).outcome


async def test_self_signed_certificate_fails_verification_by_default(https_url: str) -> None:
    outcome = await account_info(PanelServer(name="p", url=https_url))
    assert isinstance(outcome, PermanentFailure)
    assert outcome.reason is FailureReason.TLS
    assert "ca_file" in outcome.message and "tls_fingerprint" in outcome.message


async def test_pinned_fingerprint_is_trusted(https_url: str, certificate: SelfSigned) -> None:
    colons = ":".join(certificate.fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()  # as openssl prints it
    outcome = await account_info(PanelServer(name="p", url=https_url, tls_fingerprint=colons))
    assert isinstance(outcome, Succeeded)


async def test_certificate_as_ca_file_is_trusted(https_url: str, certificate: SelfSigned) -> None:
    server = PanelServer(name="p", url=https_url, ca_file=str(certificate.cert_path))
    assert isinstance(await account_info(server), Succeeded)


async def test_wrong_fingerprint_is_refused(https_url: str) -> None:
    outcome = await account_info(PanelServer(name="p", url=https_url, tls_fingerprint="ab" * 32))
    assert isinstance(outcome, PermanentFailure)
    assert outcome.reason is FailureReason.TLS
    assert "fingerprint" in outcome.message


async def test_unreadable_ca_file_is_a_tls_failure(https_url: str, tmp_path: Path) -> None:
    server = PanelServer(name="p", url=https_url, ca_file=str(tmp_path / "missing.pem"))
    outcome = await account_info(server)
    assert isinstance(outcome, PermanentFailure)
    assert outcome.reason is FailureReason.TLS
    assert "missing.pem" in outcome.message


async def test_verification_off_works_and_warns_once(https_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.panel")
    async with PanelClient(PanelServer(name="p", url=https_url, verify_tls=False)) as client:
        assert isinstance((await client.account_info(ALICE)).outcome, Succeeded)
        assert isinstance((await client.domain_list(ALICE)).outcome, Succeeded)
    warnings = [r for r in caplog.records if "verification is switched off" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize("bad", ["ab" * 31, "zz" * 32, "ab" * 33])
def test_fingerprint_must_be_sha256_hex(bad: str) -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        PanelServer(name="p", url="https://h:1", tls_fingerprint=bad)
