"""Loading the configuration: a TOML file named by BRIDGE_CONFIG, overridden by BRIDGE_*
variables; every malformed value stops the bridge with one line naming the setting."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_process import run_bridge
from cryptography.fernet import Fernet

from bridge.cli import main
from bridge.settings import SettingsError, load_settings, unknown_environment_variables

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_C2FsbGJhY2stc2VjcmV0LWZvci10ZXN0cw=="

Env = Callable[..., None]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Env:
    """Set BRIDGE_* variables (by lower-case name) on top of an environment with none."""
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"BRIDGE_{name.upper()}", value)

    return set_env


TOML = """
database_url = "postgresql+asyncpg://bridge@db/bridge"
http_port = 9000
admin_tokens = ["from-the-file"]
lease_s = 90

[[panels]]
name = "default"
url = "https://203.0.113.5:8443/"
tls_fingerprint = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89"

[[panels]]
name = "eu-2"
url = "https://198.51.100.7:2087"
timeout_s = 60
"""


def test_a_toml_file_is_read_and_the_environment_overrides_it(env: Env, tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(TOML)
    env(config=str(config), http_port="9100")
    settings = load_settings()
    assert settings.database_url == "postgresql+asyncpg://bridge@db/bridge"
    assert settings.http_port == 9100  # the environment wins
    assert settings.lease_s == 90
    assert settings.admin_tokens == ["from-the-file"]
    assert [p.name for p in settings.panels] == ["default", "eu-2"]
    default = settings.panel("default")
    assert default is not None and default.url == "https://203.0.113.5:8443"
    assert default.tls_fingerprint == "abcdef0123456789" * 4
    eu = settings.panel("eu-2")
    assert eu is not None and eu.timeout_s == 60 and eu.verify_tls


def test_panels_in_the_environment_replace_those_of_the_file(env: Env, tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(TOML)
    env(config=str(config), panels=json.dumps([{"name": "only", "url": "http://127.0.0.1:8090"}]))
    assert [p.name for p in load_settings().panels] == ["only"]


def test_settings_from_the_environment_alone(env: Env) -> None:
    key = Fernet.generate_key().decode()
    env(
        panels=json.dumps([{"name": "default", "url": "https://panel.example.com:8443", "max_concurrency": 2}]),
        webhook_secrets=f" {WEBHOOK_SECRET} , {OTHER_SECRET} ",
        secret_key=key,
        callback_allowed_origins="https://billing.example.com, http://127.0.0.1:8000",
        amqp_url="amqp://guest:guest@rabbitmq:5672/",
    )
    settings = load_settings()
    assert settings.panels[0].max_concurrency == 2
    assert settings.webhook_secrets == [WEBHOOK_SECRET, OTHER_SECRET]
    assert settings.secret_key == [key]
    assert settings.callback_allowed_origins == ["https://billing.example.com:443", "http://127.0.0.1:8000"]
    assert not settings.embedded


def test_no_configuration_is_the_embedded_default(env: Env) -> None:
    settings = load_settings()
    assert settings.database_url == "sqlite+aiosqlite:///./bridge.db"
    assert settings.embedded
    assert settings.panels == [] and settings.webhook_secrets == []


MALFORMED = {
    "http_port": ("abc", "BRIDGE_HTTP_PORT"),
    "panels": ("not json", "BRIDGE_PANELS"),
    "secret_key": ("short", "BRIDGE_SECRET_KEY"),
    "webhook_secrets": ("nope", "BRIDGE_WEBHOOK_SECRETS"),
    # Not base64: no callback could ever be signed with it.
    "callback_secret": ("my-plain-secret", "BRIDGE_CALLBACK_SECRET"),
    "database_url": ("mysql://db/bridge", "BRIDGE_DATABASE_URL"),
    "amqp_url": ("http://rabbit", "BRIDGE_AMQP_URL"),
    "callback_allowed_origins": ("billing.example.com", "BRIDGE_CALLBACK_ALLOWED_ORIGINS"),
    "log_level": ("LOUD", "BRIDGE_LOG_LEVEL"),
    "lease_s": ("0", "BRIDGE_LEASE_S"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_value_is_one_line_naming_the_setting(env: Env, name: str) -> None:
    value, setting = MALFORMED[name]
    env(**{name: value})
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith(setting), message
    assert "\n" not in message
    assert value not in ("short", "nope") or value not in message  # a bad secret is not echoed


def test_a_bad_panel_field_names_the_panel_entry(env: Env) -> None:
    env(panels=json.dumps([{"name": "default", "url": "ftp://panel"}]))
    with pytest.raises(SettingsError, match=r"^BRIDGE_PANELS\[0\.url\]: "):
        load_settings()


def test_a_missing_config_file_is_named(env: Env, tmp_path: Path) -> None:
    env(config=str(tmp_path / "missing.toml"))
    with pytest.raises(SettingsError, match=r"^BRIDGE_CONFIG: file .*missing\.toml.* does not exist$"):
        load_settings()


def test_a_malformed_config_file_is_named(env: Env, tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text("http_port = [unclosed")
    env(config=str(config))
    with pytest.raises(SettingsError, match=r"^BRIDGE_CONFIG: not valid TOML: "):
        load_settings()


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("http_prot", "no setting of that name"),
        ("panel_test_accounts", "BRIDGE_PANEL_TEST_ACCOUNTS is an environment variable only"),
    ],
)
def test_a_key_of_the_config_file_that_names_no_setting_is_named(env: Env, tmp_path: Path, key: str, hint: str) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(f"http_port = 9000\n{key} = 9001\n")
    env(config=str(config))
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith(f"BRIDGE_CONFIG: unknown key '{key}' in {config}: {hint}"), message
    assert "\n" not in message


def test_an_unknown_bridge_variable_is_found_but_not_fatal(env: Env) -> None:
    env(http_prot="9000", admin_token="for-the-client", panel_test_accounts="{}", config="")
    assert load_settings().http_port == 8080
    assert unknown_environment_variables(os.environ) == ["BRIDGE_HTTP_PROT"]


@pytest.mark.parametrize("command", ["serve", "worker", "migrate"])
def test_the_cli_prints_the_setting_and_exits_2(env: Env, capsys: pytest.CaptureFixture[str], command: str) -> None:
    env(http_port="abc")
    with pytest.raises(SystemExit) as raised:
        main([command])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bridge: configuration error: BRIDGE_HTTP_PORT: "), err


NEEDS_RABBITMQ = "BRIDGE_AMQP_URL: empty (the in-process queue, which no other process can reach)"
NEEDS_POSTGRESQL = "BRIDGE_DATABASE_URL: SQLite is one process's database"


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, [NEEDS_RABBITMQ, NEEDS_POSTGRESQL]),
        ({"BRIDGE_DATABASE_URL": "postgresql+asyncpg://bridge@127.0.0.1:1/bridge"}, [NEEDS_RABBITMQ]),
        ({"BRIDGE_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/"}, [NEEDS_POSTGRESQL]),
    ],
    ids=["embedded-default", "postgresql-without-rabbitmq", "rabbitmq-on-sqlite"],
)
def test_serve_and_worker_refuse_the_in_process_queue_and_sqlite(
    tmp_path: Path, command: str, settings: dict[str, str], expected: list[str]
) -> None:
    # A subprocess: started anyway, the process would run until it is stopped.
    done = run_bridge(command, {"BRIDGE_WEBHOOK_SECRETS": WEBHOOK_SECRET, **settings}, tmp_path, timeout_s=30)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == len(expected), done.stderr
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(f"bridge: configuration error: {start}"), line
    assert not (tmp_path / "bridge.db").exists()
