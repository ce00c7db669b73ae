"""The live checks of ``bridge config check``: the database, the broker and each panel.

Each probe returns :class:`Found` items and never raises for what it finds: an
unreachable service is a finding, not a crash. The panel probe asks the panel's
API without credentials first: the panel answers "API is currently disabled" or
"credentials required" before it looks at any password, so that probe can never
count as a failed login (12 of those in 5 minutes get the bridge's address
banned by the panel's firewall).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from cryptography import x509
from sqlalchemy.ext.asyncio import AsyncConnection

from bridge.bootstrap import make_queue
from bridge.domain.masking import MASK
from bridge.domain.outcomes import Succeeded
from bridge.panel.client import PanelClient
from bridge.panel.config import PanelCredentials, PanelServer
from bridge.panel.tls import TlsSetupError, tls_setting
from bridge.settings import Settings
from bridge.store.database import alembic_config, create_engine, is_sqlite

Level = Literal["ok", "warning", "error"]

CONNECT_TIMEOUT_S = 5.0
CERT_EXPIRY_WARNING = timedelta(days=30)


@dataclass(frozen=True)
class Found:
    """One line of the report: how bad, which setting it is about, and what to do."""

    level: Level
    setting: str
    message: str


def masked_url(url: str) -> str:
    """``url`` with its password (if any) replaced, for display."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=f"{parts.username}:{MASK}@{host}").geturl()


def _problem(exc: BaseException) -> str:
    text = str(exc).strip() or "no details"
    return f"{exc.__class__.__name__}: {text}"


# --- database ---------------------------------------------------------------------------


async def check_database(url: str) -> list[Found]:
    """Connect, and compare the schema's Alembic revision with the code's head."""
    name = "BRIDGE_DATABASE_URL"
    sqlite = is_sqlite(url)
    if sqlite:
        path = url.split(":///", 1)[-1]
        if path != ":memory:" and not os.path.exists(path):  # noqa: ASYNC240  (one stat, at start)
            # Connecting would create an empty file; say what will happen instead.
            return [
                Found("ok", name, f"SQLite file {path} does not exist yet; `bridge run` or `bridge migrate` makes it")
            ]
    engine = create_engine(url)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S * 2):
            async with engine.connect() as conn:
                current = await _current_revision(conn)
    except Exception as exc:
        return [Found("error", name, f"cannot use the database at {masked_url(url)}: {_problem(exc)}")]
    finally:
        await engine.dispose()
    head = _head_revision(url)
    where = f"connected to {masked_url(url)}"
    if current == head:
        return [Found("ok", name, f"{where}; schema at the latest revision ({head})")]
    level: Level = "warning" if sqlite else "error"
    have = f"at revision {current}" if current else "empty (no schema yet)"
    fix = "`bridge run` migrates it at start" if sqlite else "run `bridge migrate` before starting serve and worker"
    return [Found(level, name, f"{where}; schema {have}, the code needs {head}: {fix}")]


async def _current_revision(conn: AsyncConnection) -> str | None:
    return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


def _head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


# --- broker -----------------------------------------------------------------------------


async def check_broker(settings: Settings) -> list[Found]:
    """Start the queue exactly as serve and worker do (declaring its queues), then ping it."""
    name = "BRIDGE_AMQP_URL"
    if not settings.amqp_url:
        return [Found("ok", name, "empty: the in-process queue (one process does everything: `bridge run`)")]
    queue = make_queue(settings)
    where = masked_url(settings.amqp_url)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S * 2):
            await queue.start()
            answers = await queue.ping()
    except Exception as exc:
        return [Found("error", name, f"cannot use RabbitMQ at {where}: {_problem(exc)}")]
    finally:
        await queue.close()
    if not answers:
        return [Found("error", name, f"RabbitMQ at {where} does not answer")]
    return [Found("ok", name, f"RabbitMQ answers at {where} (queues {settings.amqp_prefix}.*)")]


# --- panels -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    fingerprint: str  # SHA-256, lower-case hex with colons, as openssl prints it (but lower-case)
    not_after: datetime

    @classmethod
    def from_der(cls, der: bytes) -> Certificate:
        digest = hashlib.sha256(der).hexdigest()
        cert = x509.load_der_x509_certificate(der)
        return cls(":".join(digest[i : i + 2] for i in range(0, 64, 2)), cert.not_valid_after_utc)

    @property
    def hex(self) -> str:
        return self.fingerprint.replace(":", "")


async def presented_certificate(host: str, port: int) -> Certificate:
    """The certificate the server presents, read without trusting it (only to show it)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        _, writer = await asyncio.open_connection(host, port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass  # some servers drop a client that leaves without a request
    return Certificate.from_der(der)


async def check_panel(server: PanelServer, account: PanelCredentials | None) -> list[Found]:
    """Reachability, TLS (with the panel's own trust settings), the API switch, and the account."""
    name = f"BRIDGE_PANELS[{server.name}]"
    parts = urlsplit(server.url)
    host, https = parts.hostname or "", parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    found: list[Found] = []
    cert: Certificate | None = None
    if https:
        try:
            cert = await presented_certificate(host, port)
        except Exception as exc:
            return [Found("error", name, f"cannot open a TLS connection to {host}:{port}: {_problem(exc)}")]
        found += _certificate_notes(name, server, cert)
    else:
        found.append(Found("warning", name, "plain http://: account passwords cross the network unencrypted"))
    answer = await _probe_api(name, server, cert)
    found.append(answer)
    if account is not None and answer.level == "ok":
        found.append(await _check_account(server, account))
    return found


def _pin_hint(cert: Certificate | None) -> str:
    if cert is None:
        return ""
    return (
        f' Pin it with "tls_fingerprint": "{cert.fingerprint}" after checking it on the panel '
        "(openssl x509 -noout -fingerprint -sha256 -in <the panel's certificate>)."
    )


def _certificate_notes(name: str, server: PanelServer, cert: Certificate) -> list[Found]:
    notes: list[Found] = []
    left = cert.not_after - datetime.now(UTC)
    if left < timedelta(0):
        notes.append(Found("warning", name, f"the certificate expired on {cert.not_after:%Y-%m-%d}"))
    elif left < CERT_EXPIRY_WARNING:
        notes.append(
            Found(
                "warning",
                name,
                f"the certificate expires on {cert.not_after:%Y-%m-%d}; a renewed certificate has a new "
                "fingerprint, so update tls_fingerprint when it changes",
            )
        )
    if server.tls_fingerprint is None and not server.verify_tls and server.ca_file is None:
        notes.append(
            Found(
                "warning",
                name,
                "TLS verification is switched off: anyone on the path can read the passwords." + _pin_hint(cert),
            )
        )
    return notes


async def _probe_api(name: str, server: PanelServer, cert: Certificate | None) -> Found:
    try:
        tls = tls_setting(server)
    except TlsSetupError as exc:
        return Found("error", name, str(exc))
    url = f"{server.url}/api/"
    timeout = aiohttp.ClientTimeout(total=server.read_timeout, connect=CONNECT_TIMEOUT_S)
    try:
        # No credentials: the panel refuses before checking any, so the firewall counts nothing.
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, data={}, ssl=tls, allow_redirects=False) as response,
        ):
            status, body = response.status, await response.text(errors="replace")
    except aiohttp.ServerFingerprintMismatch as exc:
        got = exc.got.hex()
        return Found(
            "error",
            name,
            f"the certificate's SHA-256 fingerprint is {got}, not the pinned {exc.expected.hex()}. If the "
            "panel's certificate was renewed, check the new one on the panel and pin it.",
        )
    except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
        return Found(
            "error",
            name,
            f"the certificate is not trusted ({_problem(exc)}). The panel's installer makes a "
            "self-signed certificate." + _pin_hint(cert) + " Or give its PEM file as ca_file.",
        )
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Found("error", name, f"no answer from {url}: {_problem(exc)}")
    return _judge_answer(name, url, status, body, pinned=server.tls_fingerprint is not None)


def _judge_answer(name: str, url: str, status: int, body: str, *, pinned: bool) -> Found:
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    error = str(answer.get("error", "")) if isinstance(answer, dict) else ""
    if "disabled" in error.lower():
        return Found(
            "error", name, f"the panel's API is switched off ({error!r}); an admin must enable it in the panel"
        )
    if error:
        trust = "; certificate matches the pinned fingerprint" if pinned else ""
        return Found("ok", name, f"the panel API answers at {url}{trust}")
    if status == 403:
        return Found(
            "error",
            name,
            "HTTP 403: the panel's firewall may have banned this machine's address after failed logins; "
            "it lifts a ban after 10 minutes (an admin can unban sooner)",
        )
    return Found("error", name, f"{url} answered HTTP {status}, not like the panel's API: check the URL and port")


async def _check_account(server: PanelServer, account: PanelCredentials) -> Found:
    name = f"BRIDGE_PANEL_TEST_ACCOUNTS[{server.name}]"
    async with PanelClient(server) as client:
        result = await client.account_info(account)
    outcome = result.outcome
    if not isinstance(outcome, Succeeded):
        return Found("error", name, f"account {account.username}: {outcome.message}")
    limits = outcome.data.get("limits", {})
    usage = ", ".join(
        f"{label} {limits[kind]['used']}/{limits[kind]['limit'] or 'unlimited'}"
        for kind, label in (("domain", "domains"), ("db", "database users"))
        if kind in limits
    )
    return Found("ok", name, f"account {account.username} signs in ({usage})")
