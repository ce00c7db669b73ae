"""``bridge config check``: is this configuration one the bridge can run with?

It loads the settings the way the server does (:func:`~bridge.settings.load_settings`),
applies the rules a valid value can still break (a missing webhook secret, callbacks
allowed but unsigned, an empty or short admin token, ...), then tries what the
settings point at: the database (and whether its schema is at the latest
migration), the broker, and every panel server (reachability, TLS with the panel's
own trust settings, the API switch, and, if ``BRIDGE_PANEL_TEST_ACCOUNTS`` names
one, a hosting account). It ends with the effective settings, every secret masked.

Output, one finding a line: ``<level>  <SETTING>: <message>`` with level ``ok``,
``warning`` or ``error``. Exit status 1 if any error was found, else 0 (warnings
alone do not fail the check).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from bridge.config_probes import Found, check_broker, check_database, check_panel, masked_url
from bridge.domain.masking import MASK, is_secret_field, mask, scrub
from bridge.panel.config import PanelCredentials, PanelServer
from bridge.settings import (
    Settings,
    SettingsError,
    load_settings,
    scale_out_problems,
    unknown_environment_variables,
)
from bridge.store.database import is_sqlite
from bridge.webhooks.signature import check_secret

TEST_ACCOUNTS_VAR = "BRIDGE_PANEL_TEST_ACCOUNTS"
MIN_TOKEN_CHARS = 32


@dataclass
class Report:
    """Findings in sections, the effective settings, and every secret to keep out of the output."""

    sections: list[tuple[str, list[Found]]] = field(default_factory=list)
    effective: list[str] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)

    @property
    def findings(self) -> list[Found]:
        return [f for _, section in self.sections for f in section]

    @property
    def exit_code(self) -> int:
        return 1 if any(f.level == "error" for f in self.findings) else 0

    def render(self) -> str:
        lines: list[str] = []
        for title, section in self.sections:
            lines.append(title)
            lines += [f"  {f.level:<8} {f.setting}: {f.message}" for f in section]
        if self.effective:
            lines.append("effective settings (secrets masked)")
            lines += [f"  {line}" for line in self.effective]
        errors = sum(f.level == "error" for f in self.findings)
        warnings = sum(f.level == "warning" for f in self.findings)
        lines.append(f"{errors} error(s), {warnings} warning(s)")
        # A second line of defence: an error message quoting a secret must not print it. Short
        # values (a password like "guest" that is also the user name) would mask ordinary words;
        # they are masked where they stand (URLs) instead.
        return str(scrub("\n".join(lines), self.secrets, min_length=8))


# --- rules on the values ------------------------------------------------------------------


def settings_findings(settings: Settings) -> list[Found]:
    """What is wrong or risky in values that passed validation."""
    found: list[Found] = []
    if not settings.webhook_secrets:
        found.append(
            Found("error", "BRIDGE_WEBHOOK_SECRETS", "not set: `bridge run` and `bridge serve` refuse to start")
        )
    if not settings.secret_key:
        found.append(
            Found("error", "BRIDGE_SECRET_KEY", "not set: account passwords cannot be stored, every order gets a 503")
        )
    found += _callback_findings(settings)
    found += _admin_findings(settings.admin_tokens)
    found += _panel_findings(settings)
    if not (settings.embedded and is_sqlite(settings.database_url)):
        # Half a scale-out deployment: only `bridge run` starts with it.
        found += [Found("warning", setting, problem) for setting, problem in scale_out_problems(settings)]
    if settings.retry_delay_scale != 1.0:
        found.append(
            Found(
                "warning",
                "BRIDGE_RETRY_DELAY_SCALE",
                f"{settings.retry_delay_scale}: every retry delay is scaled (meant for tests and demos)",
            )
        )
    if settings.shutdown_grace_s == 0:
        found.append(Found("warning", "BRIDGE_SHUTDOWN_GRACE_S", "0: every running step is cut off at shutdown"))
    found += [
        Found("warning", name, "not a setting of the bridge: ignored (misspelt?)")
        for name in unknown_environment_variables(os.environ)
    ]
    return found


def _callback_findings(settings: Settings) -> list[Found]:
    name = "BRIDGE_CALLBACK_SECRET"
    if settings.callback_secret:
        try:
            check_secret(settings.callback_secret)
        except ValueError as exc:
            return [Found("error", name, str(exc))]
        if settings.callback_secret in settings.webhook_secrets:
            return [Found("warning", name, "same as a webhook secret: use a separate one for each direction")]
        if not settings.callback_allowed_origins:
            return [Found("warning", "BRIDGE_CALLBACK_ALLOWED_ORIGINS", "empty: no status callbacks are sent")]
        return []
    if settings.callback_allowed_origins:
        return [
            Found("error", name, "not set, but BRIDGE_CALLBACK_ALLOWED_ORIGINS allows callbacks: none can be signed")
        ]
    return []


def _admin_findings(tokens: list[str]) -> list[Found]:
    name = "BRIDGE_ADMIN_TOKENS"
    if not tokens:
        return [Found("warning", name, "empty: the admin API and page are closed (401 to everyone)")]
    return [
        Found("warning", name, f"token {i} of {len(tokens)} has {len(token)} characters; use {MIN_TOKEN_CHARS} or more")
        for i, token in enumerate(tokens, 1)
        if len(token) < MIN_TOKEN_CHARS
    ]


def _panel_findings(settings: Settings) -> list[Found]:
    if not settings.panels:
        return [Found("error", "BRIDGE_PANELS", "no panel server: every order is refused (unknown panel)")]
    if settings.panel("default") is None:
        return [Found("warning", "BRIDGE_PANELS", "no panel named 'default': orders that name no panel are refused")]
    return []


def test_accounts(settings: Settings) -> tuple[dict[str, PanelCredentials], list[Found]]:
    """``BRIDGE_PANEL_TEST_ACCOUNTS``: ``{"panel": {"username": ..., "password": ...}}`` (optional)."""
    raw = os.environ.get(TEST_ACCOUNTS_VAR, "").strip()
    if not raw:
        return {}, []
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return {}, [Found("error", TEST_ACCOUNTS_VAR, f"not JSON ({exc})")]
    if not isinstance(data, dict):
        return {}, [Found("error", TEST_ACCOUNTS_VAR, 'must be a JSON object {"panel": {"username", "password"}}')]
    accounts: dict[str, PanelCredentials] = {}
    problems: list[Found] = []
    for panel, account in data.items():
        where = f"{TEST_ACCOUNTS_VAR}[{panel}]"
        if settings.panel(panel) is None:
            problems.append(Found("error", where, "no panel of that name in BRIDGE_PANELS"))
        elif not (isinstance(account, dict) and {"username", "password"} <= account.keys()):
            problems.append(Found("error", where, 'must be {"username": "...", "password": "..."}'))
        else:
            accounts[panel] = PanelCredentials(str(account["username"]), str(account["password"]))
    return accounts, problems


# --- the effective settings -----------------------------------------------------------------


def effective_settings(settings: Settings, accounts: dict[str, PanelCredentials]) -> list[str]:
    """``BRIDGE_<NAME>=value`` for every setting; secrets masked (only whether they are set shows)."""
    lines = [f"BRIDGE_CONFIG={os.environ.get('BRIDGE_CONFIG') or '(not set)'}"]
    for name, value in settings.model_dump(mode="json").items():
        if name == "panels":
            value = [_effective_panel(server) for server in settings.panels]
        lines.append(f"BRIDGE_{name.upper()}={_display(name, value)}")
    if accounts:
        shown = {p: {"username": a.username, "password": a.password} for p, a in accounts.items()}
        lines.append(f"{TEST_ACCOUNTS_VAR}={json.dumps(mask(shown))}")
    return lines


def _effective_panel(server: PanelServer) -> dict[str, Any]:
    """The panel's entry with the timeouts it really gets, not null for "derived from timeout_s"."""
    return server.model_dump(mode="json") | {"read_timeout_s": server.read_timeout, "ssl_timeout_s": server.ssl_timeout}


def _display(name: str, value: Any) -> str:
    if is_secret_field(name):
        if not value:
            return "(not set)"
        return f"{MASK} ({len(value)} values)" if isinstance(value, list) and len(value) > 1 else MASK
    if name.endswith("_url") and isinstance(value, str):
        return masked_url(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    if isinstance(value, list | dict):
        return json.dumps(mask(value))
    return str(value)


def secrets_of(settings: Settings, accounts: dict[str, PanelCredentials]) -> set[str]:
    values = {*settings.webhook_secrets, *settings.admin_tokens, *settings.secret_key, settings.callback_secret}
    values |= {a.password for a in accounts.values()}
    for url in (settings.database_url, settings.amqp_url):
        if "@" in url and (password := _url_password(url)):
            values.add(password)
    return {v for v in values if v}


def _url_password(url: str) -> str | None:
    password = urlsplit(url).password
    return unquote(password) if password else None


# --- the whole check --------------------------------------------------------------------------


async def run_check() -> Report:
    report = Report()
    try:
        settings = load_settings()
    except SettingsError as exc:
        report.sections.append(("settings", [_finding_from_line(line) for line in str(exc).splitlines()]))
        return report
    accounts, account_problems = test_accounts(settings)
    report.secrets = secrets_of(settings, accounts)
    rules = settings_findings(settings) + account_problems
    report.sections.append(("settings", rules or [Found("ok", "BRIDGE_*", "every setting is valid")]))
    report.sections.append(("database", await check_database(settings.database_url)))
    report.sections.append(("broker", await check_broker(settings)))
    panels: list[Found] = []
    for server in settings.panels:
        panels += await check_panel(server, accounts.get(server.name))
    report.sections.append(("panels", panels or [Found("error", "BRIDGE_PANELS", "none configured")]))
    report.effective = effective_settings(settings, accounts)
    return report


def _finding_from_line(line: str) -> Found:
    setting, _, message = line.partition(": ")
    return Found("error", setting, message) if message else Found("error", "BRIDGE_*", line)
