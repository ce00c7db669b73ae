"""``bridge config check`` against real services: PostgreSQL, RabbitMQ and the panel simulator.

A good configuration exits 0 and never prints a secret; each kind of problem is
reported with the setting's name and makes the check exit non-zero; warnings alone
do not.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from conftest import ADMIN_TOKEN, CALLBACK_SECRET, FERNET_KEY, PG_ADMIN_DSN, WEBHOOK_SECRET
from tls_certs import SelfSigned

from bridge.bootstrap import DELAY_BUCKETS_S
from bridge.broker.rabbitmq import RabbitQueue
from bridge.config_check import Report, run_check, settings_findings
from bridge.domain.masking import MASK
from bridge.panel.simulator import PanelSimulator
from bridge.secrets_gen import new_secrets
from bridge.settings import load_settings

ACCOUNT = ("demo", "Demo-Panel-Pass-1")
Env = Callable[..., None]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Env:
    """Set BRIDGE_* variables (by lower-case name) on top of an environment with none."""
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)

    def set_env(**values: str | None) -> None:
        for name, value in values.items():
            if value is None:
                monkeypatch.delenv(f"BRIDGE_{name.upper()}", raising=False)
            else:
                monkeypatch.setenv(f"BRIDGE_{name.upper()}", value)

    return set_env


@pytest.fixture
def sim() -> PanelSimulator:
    sim = PanelSimulator()
    sim.add_account(*ACCOUNT, domain_limit=10, db_limit=10)
    return sim


@pytest.fixture
async def http_panel(sim: PanelSimulator) -> AsyncIterator[str]:
    async with TestServer(sim.app(), host="127.0.0.1") as server:
        yield f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def https_panel(aiohttp_server: Any, sim: PanelSimulator, certificate: SelfSigned) -> str:
    server = await aiohttp_server(sim.app(), host="127.0.0.1", ssl=certificate.server_context())
    return f"https://127.0.0.1:{server.port}"


def panels(url: str, **extra: object) -> str:
    return json.dumps([{"name": "default", "url": url, **extra}])


@pytest.fixture
def good(env: Env, sqlite_url: str, http_panel: str) -> Env:
    """A valid embedded configuration (migrated SQLite, in-process queue, simulator over HTTP)."""
    env(
        database_url=sqlite_url,
        webhook_secrets=WEBHOOK_SECRET,
        callback_secret=CALLBACK_SECRET,
        callback_allowed_origins="https://billing.example.com",
        admin_tokens=ADMIN_TOKEN + "-0123456789",
        secret_key=FERNET_KEY,
        panels=panels(http_panel),
    )
    return env


def finding(report: Report, level: str, setting: str) -> str:
    """The message of the one finding of ``level`` for ``setting``; fails if there is none."""
    matches = [f.message for f in report.findings if f.level == level and f.setting == setting]
    assert matches, f"no {level} for {setting} in:\n{report.render()}"
    return matches[0]


# --- a good configuration -------------------------------------------------------------------


@pytest.mark.pg
@pytest.mark.amqp
async def test_good_production_configuration_passes_and_prints_no_secret(
    env: Env, pg_url: str, amqp_url: str, https_panel: str, certificate: SelfSigned
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env(
        database_url=pg_url,
        amqp_url=amqp_url,
        amqp_prefix=prefix,
        webhook_secrets=WEBHOOK_SECRET,
        callback_secret=CALLBACK_SECRET,
        callback_allowed_origins="https://billing.example.com",
        admin_tokens=ADMIN_TOKEN + "-0123456789",
        secret_key=FERNET_KEY,
        panels=panels(https_panel, tls_fingerprint=certificate.fingerprint),
        panel_test_accounts=json.dumps({"default": {"username": ACCOUNT[0], "password": ACCOUNT[1]}}),
    )
    try:
        # The real command, as an operator runs it.
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge.cli", "config", "check", stdout=asyncio.subprocess.PIPE
        )
        out = (await asyncio.wait_for(process.communicate(), 30))[0].decode()
    finally:
        await _delete_queues(amqp_url, prefix)
    assert process.returncode == 0, out
    assert "0 error(s)" in out
    assert "schema at the latest revision" in out
    assert "RabbitMQ answers" in out
    assert "certificate matches the pinned fingerprint" in out
    assert f"account {ACCOUNT[0]} signs in (domains 0/10, database users 0/10)" in out
    for secret in (WEBHOOK_SECRET, CALLBACK_SECRET, ADMIN_TOKEN, FERNET_KEY, ACCOUNT[1], ":guest@"):
        assert secret not in out
    assert f"BRIDGE_SECRET_KEY={MASK}" in out
    assert f"BRIDGE_AMQP_URL=amqp://guest:{MASK}@" in out


async def _delete_queues(amqp_url: str, prefix: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        for name in RabbitQueue(amqp_url, prefix, delay_buckets_s=DELAY_BUCKETS_S).names.all:
            channel = await connection.channel()
            await channel.queue_delete(name)
            await channel.close()


async def test_effective_settings_are_printed_with_every_secret_masked(good: Env) -> None:
    good(admin_tokens=f"{ADMIN_TOKEN}-0123456789,{ADMIN_TOKEN}-abcdefghij")
    report = await run_check()
    assert report.exit_code == 0, report.render()
    text = report.render()
    assert f"BRIDGE_WEBHOOK_SECRETS={MASK}" in text
    assert f"BRIDGE_ADMIN_TOKENS={MASK} (2 values)" in text
    assert f"BRIDGE_CALLBACK_SECRET={MASK}" in text
    assert "BRIDGE_CALLBACK_ALLOWED_ORIGINS=https://billing.example.com:443" in text
    assert ADMIN_TOKEN not in text and WEBHOOK_SECRET not in text and FERNET_KEY not in text


def test_a_password_in_a_url_is_masked() -> None:
    from bridge.config_probes import masked_url

    assert masked_url("postgresql+asyncpg://bridge:s3cret@db:5432/bridge") == (
        f"postgresql+asyncpg://bridge:{MASK}@db:5432/bridge"
    )
    assert masked_url("amqp://rabbit.example.com/") == "amqp://rabbit.example.com/"


# --- problems -----------------------------------------------------------------------------------

SETTINGS_PROBLEMS = {
    "no webhook secret": ({"webhook_secrets": None}, "BRIDGE_WEBHOOK_SECRETS"),
    "no secret key": ({"secret_key": None}, "BRIDGE_SECRET_KEY"),
    "callbacks allowed but unsigned": ({"callback_secret": None}, "BRIDGE_CALLBACK_SECRET"),
    "callback secret malformed": ({"callback_secret": "whsec_c2hvcnQ="}, "BRIDGE_CALLBACK_SECRET"),
    "port not a number": ({"http_port": "abc"}, "BRIDGE_HTTP_PORT"),
    "webhook secret malformed": ({"webhook_secrets": "nope"}, "BRIDGE_WEBHOOK_SECRETS"),
    "no panel": ({"panels": "[]"}, "BRIDGE_PANELS"),
    "test accounts not JSON": ({"panel_test_accounts": "{nope"}, "BRIDGE_PANEL_TEST_ACCOUNTS"),
    "test account for an unknown panel": (
        {"panel_test_accounts": json.dumps({"other": {"username": "a", "password": "b"}})},
        "BRIDGE_PANEL_TEST_ACCOUNTS[other]",
    ),
}


@pytest.mark.parametrize("case", sorted(SETTINGS_PROBLEMS))
async def test_each_settings_problem_names_its_setting_and_fails(good: Env, case: str) -> None:
    values, setting = SETTINGS_PROBLEMS[case]
    good(**values)
    report = await run_check()
    finding(report, "error", setting)
    assert report.exit_code == 1


async def test_warnings_alone_do_not_fail_the_check(good: Env) -> None:
    good(admin_tokens=None, retry_delay_scale="0.01")
    report = await run_check()
    assert "closed" in finding(report, "warning", "BRIDGE_ADMIN_TOKENS")
    finding(report, "warning", "BRIDGE_RETRY_DELAY_SCALE")
    assert report.exit_code == 0

    good(admin_tokens="short-token")
    report = await run_check()
    assert "11 characters" in finding(report, "warning", "BRIDGE_ADMIN_TOKENS")
    assert report.exit_code == 0


async def test_a_bridge_variable_that_names_no_setting_is_a_warning(good: Env) -> None:
    good(http_prot="9000", admin_token="for-the-jobs-client")
    report = await run_check()
    assert "not a setting" in finding(report, "warning", "BRIDGE_HTTP_PROT")
    assert not [f for f in report.findings if f.setting == "BRIDGE_ADMIN_TOKEN"]
    assert report.exit_code == 0


async def test_a_misspelt_key_in_the_config_file_is_an_error(good: Env, tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text("http_prot = 9000\n")
    good(config=str(config))
    report = await run_check()
    assert "unknown key 'http_prot'" in finding(report, "error", "BRIDGE_CONFIG")
    assert report.exit_code == 1


async def test_a_panel_shows_the_timeouts_it_really_gets(good: Env, http_panel: str) -> None:
    good(panels=panels(http_panel, timeout_s=30))
    report = await run_check()
    [line] = [line for line in report.effective if line.startswith("BRIDGE_PANELS=")]
    [panel] = json.loads(line.removeprefix("BRIDGE_PANELS="))
    assert (panel["timeout_s"], panel["read_timeout_s"], panel["ssl_timeout_s"]) == (30, 15, 600)


async def test_an_unreachable_database_is_an_error(good: Env) -> None:
    good(database_url="postgresql+asyncpg://bridge:pw@127.0.0.1:1/bridge")
    report = await run_check()
    assert "cannot use the database" in finding(report, "error", "BRIDGE_DATABASE_URL")
    assert report.exit_code == 1


@pytest.mark.pg
async def test_a_database_without_the_latest_schema_says_to_migrate(good: Env) -> None:
    name = f"bridge_check_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + "/" + name
        good(database_url=url)
        report = await run_check()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    assert "run `bridge migrate`" in finding(report, "error", "BRIDGE_DATABASE_URL")


async def test_an_unreachable_broker_is_an_error(good: Env) -> None:
    good(amqp_url="amqp://guest:guest@127.0.0.1:1/")
    report = await run_check()
    assert "cannot use RabbitMQ" in finding(report, "error", "BRIDGE_AMQP_URL")
    assert report.exit_code == 1


async def test_the_in_process_queue_is_reported(good: Env) -> None:
    report = await run_check()
    assert "in-process queue" in finding(report, "ok", "BRIDGE_AMQP_URL")


async def test_an_unreachable_panel_is_an_error(good: Env) -> None:
    good(panels=panels("https://127.0.0.1:1"))
    report = await run_check()
    assert "cannot open a TLS connection" in finding(report, "error", "BRIDGE_PANELS[default]")


async def test_an_untrusted_self_signed_certificate_shows_the_fingerprint_to_pin(
    good: Env, https_panel: str, certificate: SelfSigned
) -> None:
    good(panels=panels(https_panel))
    report = await run_check()
    message = finding(report, "error", "BRIDGE_PANELS[default]")
    assert "not trusted" in message
    pretty = ":".join(certificate.fingerprint[i : i + 2] for i in range(0, 64, 2))
    assert f'"tls_fingerprint": "{pretty}"' in message
    assert report.exit_code == 1


async def test_a_fingerprint_that_does_not_match_is_an_error(good: Env, https_panel: str) -> None:
    good(panels=panels(https_panel, tls_fingerprint="ab" * 32))
    report = await run_check()
    assert "not the pinned" in finding(report, "error", "BRIDGE_PANELS[default]")


async def test_verification_switched_off_is_a_warning_with_the_fingerprint(
    good: Env, https_panel: str, certificate: SelfSigned
) -> None:
    good(panels=panels(https_panel, verify_tls=False))
    report = await run_check()
    assert certificate.fingerprint[:2] + ":" in finding(report, "warning", "BRIDGE_PANELS[default]")
    assert report.exit_code == 0, report.render()


async def test_a_panel_with_its_api_switched_off_is_an_error(good: Env, sim: PanelSimulator) -> None:
    sim.set_api_enabled(False)
    report = await run_check()
    assert "switched off" in finding(report, "error", "BRIDGE_PANELS[default]")


async def test_a_test_account_the_panel_refuses_is_an_error(good: Env, sim: PanelSimulator) -> None:
    good(panel_test_accounts=json.dumps({"default": {"username": ACCOUNT[0], "password": "wrong-password"}}))
    report = await run_check()
    assert "Invalid credentials" in finding(report, "error", "BRIDGE_PANEL_TEST_ACCOUNTS[default]")
    assert "wrong-password" not in report.render()
    # The probe without credentials did not count as a failed login: only the account check did.
    assert sim.snapshot()["counters"]["account_info"] == 2


# --- bridge secrets new -------------------------------------------------------------------------


def test_fresh_secrets_pass_the_settings_validators(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.cli import main

    assert main(["secrets", "new"]) == 0
    printed = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert set(printed) == set(new_secrets())
    env(**{name.removeprefix("BRIDGE_").lower(): value for name, value in printed.items()})
    env(callback_allowed_origins="https://billing.example.com", panels=panels("https://203.0.113.5:8443"))
    settings = load_settings()
    assert settings.webhook_secrets == [printed["BRIDGE_WEBHOOK_SECRETS"]]
    assert settings.secret_key == [printed["BRIDGE_SECRET_KEY"]]
    # Nothing to warn about either: the callback secret is well-formed, the token long enough.
    assert settings_findings(settings) == []
