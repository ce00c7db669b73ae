"""The deployment files keep up with the code.

Every BRIDGE_* variable the code reads (the settings' fields, BRIDGE_CONFIG, and any
other name found in bridge/**/*.py) must be documented in .env.example and in the
configuration reference (README.md), and passed through by docker-compose.yml,
and nothing may be documented that the code does not read. A new setting makes these
tests fail until it is documented. The compose file is validated with ``docker-compose``
when it is installed (skipped without it, except in CI, where that fails).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from bridge.secrets_gen import new_secrets
from bridge.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
VARIABLE = re.compile(r"\bBRIDGE_[A-Z][A-Z0-9_]*[A-Z0-9]")
DEFAULT_GRACE_S = Settings.model_fields["shutdown_grace_s"].default


def code_variables() -> set[str]:
    names = {f"BRIDGE_{name.upper()}" for name in Settings.model_fields} | {"BRIDGE_CONFIG"}
    for path in (ROOT / "bridge").rglob("*.py"):
        names |= set(VARIABLE.findall(path.read_text()))
    return names


def variables_in(path: str) -> set[str]:
    return set(VARIABLE.findall((ROOT / path).read_text()))


@pytest.mark.parametrize("path", [".env.example", "README.md", "docker-compose.yml"])
def test_every_variable_the_code_reads_is_documented_and_nothing_else(path: str) -> None:
    code, documented = code_variables(), variables_in(path)
    assert not code - documented, f"{path} lacks {sorted(code - documented)}"
    assert not documented - code, f"{path} names variables the code does not read: {sorted(documented - code)}"


def env_example_entries() -> list[tuple[str, str, bool]]:
    """(name, value, active) for every ``BRIDGE_X=value`` line, commented out or not."""
    entries = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        found = re.fullmatch(r"(#?)(BRIDGE_[A-Z0-9_]+)=(.*)", line)
        if found:
            # docker-compose and systemd both drop one pair of single quotes around a value.
            value = re.sub(r"^'(.*)'$", r"\1", found[3])
            entries.append((found[2], value, not found[1]))
    return entries


def test_every_env_example_entry_has_its_own_comment_line() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"#?BRIDGE_[A-Z0-9_]+=", line):
            before = lines[number - 1]
            assert before.startswith("# ") or re.match(r"#?BRIDGE_", before), f"no comment above {line!r}"
    assert {name for name, _, _ in env_example_entries()} == code_variables()


def test_env_example_holds_no_real_secret_only_placeholders() -> None:
    values = dict((name, value) for name, value, _ in env_example_entries())
    for name in ("BRIDGE_WEBHOOK_SECRETS", "BRIDGE_CALLBACK_SECRET", "BRIDGE_ADMIN_TOKENS", "BRIDGE_SECRET_KEY"):
        assert values[name] == "change-me"
    assert "bridge secrets new" in (ROOT / ".env.example").read_text()


def test_env_example_values_are_valid_once_the_placeholders_are_filled_in(monkeypatch: pytest.MonkeyPatch) -> None:
    fingerprint = "ab" * 32
    fill = {name: value for name, value in new_secrets().items()}

    def usable(name: str, value: str) -> str:
        if name in fill:
            return fill[name]
        return value.replace("change-me: 64 hex digits", fingerprint).replace("change-me", "password")

    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    entries = env_example_entries()
    for name, value, active in entries:
        if active:
            monkeypatch.setenv(name, usable(name, value))
    load_settings()
    # Each commented-out alternative is valid too, on top of the active values.
    for name, value, active in entries:
        if not active and name != "BRIDGE_CONFIG":
            with monkeypatch.context() as patch:
                patch.setenv(name, usable(name, value))
                load_settings()


def test_the_example_toml_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BRIDGE_CONFIG", str(ROOT / "deploy/bridge.toml"))
    settings = load_settings()
    assert [p.name for p in settings.panels] == ["default", "eu-2"]
    assert settings.shutdown_grace_s == DEFAULT_GRACE_S


def run_compose(*args: str) -> str:
    if shutil.which("docker-compose") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-compose is required in CI to validate docker-compose.yml")
        pytest.skip("docker-compose is not installed")
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        # No .env and no BRIDGE_* from this shell: the file's own defaults must do.
        env={k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")} | {"COMPOSE_PROFILES": ""},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_docker_compose_accepts_the_file_without_an_env_file() -> None:
    run_compose("config", "-q")
    run_compose("--profile", "try", "config", "-q")
    services = run_compose("config", "--services").split()
    assert {"postgres", "rabbitmq", "migrate", "web", "worker", "panel-sim"} <= set(services)
    assert 'profiles: ["try"]' in service_block("panel-sim")


def service_block(name: str) -> str:
    text = (ROOT / "docker-compose.yml").read_text()
    found = re.search(rf"^  {name}:\n((?:    .*\n|\s*\n)+)", text, re.MULTILINE)
    assert found, name
    return found[1]


def test_workers_scale_and_every_bridge_container_outlasts_the_grace_period() -> None:
    worker = service_block("worker")
    assert "container_name" not in worker and "ports" not in worker
    grace = re.search(r"stop_grace_period: (\d+)s", (ROOT / "docker-compose.yml").read_text())
    assert grace and int(grace[1]) > DEFAULT_GRACE_S


@pytest.mark.parametrize("unit", ["bridge-web.service", "bridge-worker@.service", "bridge-migrate.service"])
def test_systemd_units_run_as_a_hardened_user_from_the_env_file(unit: str) -> None:
    text = (ROOT / "deploy" / unit).read_text()
    for line in (
        "EnvironmentFile=/etc/bridge/bridge.env",
        "User=bridge",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
    ):
        assert line in text.splitlines(), f"{unit} lacks {line}"
    if unit == "bridge-migrate.service":
        assert "Type=oneshot" in text
        return
    assert "KillSignal=SIGTERM" in text
    stop = re.search(r"^TimeoutStopSec=(\d+)$", text, re.MULTILINE)
    assert stop and int(stop[1]) > DEFAULT_GRACE_S


def test_the_image_is_multi_stage_and_runs_as_a_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim AS build$", text, re.MULTILINE)
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) == 2
    for line in ("USER bridge", 'ENTRYPOINT ["bridge"]', 'CMD ["serve"]'):
        assert line in text.splitlines()
    assert "HEALTHCHECK" in text


def test_a_systemd_worker_listens_on_8080_plus_its_instance_number() -> None:
    # Numbered instances (bridge-worker@1..4) each get a port of their own: 8081..8084.
    text = (ROOT / "deploy" / "bridge-worker@.service").read_text()
    exec_start = re.search(r"^ExecStart=(.+)$", text, re.MULTILINE)
    assert exec_start
    # What systemd runs for bridge-worker@3 ($$ is its escape for $), the bridge swapped for env.
    command = exec_start[1].replace("%i", "3").replace("$$", "$")
    command = command.replace("/opt/bridge/venv/bin/bridge worker", "/usr/bin/env")
    done = subprocess.run(shlex.split(command), capture_output=True, text=True, check=True, timeout=10)
    assert "BRIDGE_WORKER_METRICS_PORT=8083" in done.stdout.splitlines()
