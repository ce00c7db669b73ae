"""The simulated panel's data and the logic of each API view, without HTTP.

Each ``PanelState`` method mirrors one view of OLSPanel's ``api/views.py``: the
same order of checks, the same answer keys and texts, and the same flaws the
bridge has to live with (``db_make`` is not atomic, ``cronjob_add`` checks
duplicates by substring and writes fields unchecked, ``cronjob_list`` crashes
when the account has no crontab). ``simulator.py`` puts HTTP around it.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.panel.sim_firewall import LoginFirewall, ManualClock

__all__ = [
    "LoginFirewall",
    "ManualClock",
    "PanelCrash",
    "PanelState",
    "SimAccount",
    "SimDomain",
]

Answer = dict[str, Any] | list[dict[str, Any]]
Form = Mapping[str, str]

# Lenient on purpose, like the panel's own normaliser: it is the bridge's job to be strict.
_PANEL_DOMAIN = re.compile(r"[a-z0-9][a-z0-9.-]*\.[a-z]{2,}")
_SQL_IDENTIFIER = re.compile(r"[A-Za-z0-9_$]+")


class PanelCrash(Exception):
    """An uncaught exception in a view: the panel answers an HTML 500 page."""


@dataclass
class SimDomain:
    id: int
    domain: str
    path: str
    php: str
    kind: str = "domain"  # or "subdomain": the panel limits each separately
    certificate: str = "none"  # none | self_signed | issued


@dataclass
class SimAccount:
    """A hosting account. A limit of 0 means unlimited, as in the panel's packages."""

    username: str
    password: str
    domain_limit: int = 0
    db_limit: int = 0
    subdomain_limit: int = 0
    has_package: bool = True
    user_id: int = 0
    domains: list[SimDomain] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)
    db_users: list[str] = field(default_factory=list)
    cron_lines: list[str] | None = None  # None: the account has no crontab file yet

    def public(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "domain_limit": self.domain_limit,
            "db_limit": self.db_limit,
            "subdomain_limit": self.subdomain_limit,
            "has_package": self.has_package,
            "domains": [vars(d).copy() for d in self.domains],
            "databases": list(self.databases),
            "db_users": list(self.db_users),
            "cron_lines": None if self.cron_lines is None else list(self.cron_lines),
        }


def _limit_shown(limit: int) -> int | str:
    # The panel's check_limit() prints a package limit of 0 as a word; this
    # simulator always uses "Unlimited" (the bridge accepts any word).
    return "Unlimited" if limit == 0 else limit


class PanelState:
    """Everything the simulated panel knows, and one method per API view."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self.accounts: dict[str, SimAccount] = {}
        self.api_enabled = True
        self.ssl_failures: dict[str, int] = {}
        self.next_domain_id = 1
        self.counters: Counter[str] = Counter()
        self.calls: list[dict[str, Any]] = []
        self.max_concurrent_mutations = 0
        self.firewall = LoginFirewall(self.clock)

    # --- setup --------------------------------------------------------------

    def add_account(
        self,
        username: str,
        password: str,
        domain_limit: int = 0,
        db_limit: int = 0,
        subdomain_limit: int = 0,
        has_package: bool = True,
    ) -> SimAccount:
        account = SimAccount(
            username,
            password,
            domain_limit,
            db_limit,
            subdomain_limit,
            has_package,
            user_id=len(self.accounts) + 1,
        )
        self.accounts[username] = account
        return account

    def fail_ssl(self, domain: str, attempts: int) -> None:
        """The next ``attempts`` issuances for ``domain`` fail as if DNS pointed elsewhere."""
        self.ssl_failures[domain] = attempts

    def authenticate(self, username: str | None, password: str | None) -> SimAccount | None:
        account = self.accounts.get(username or "")
        return account if account is not None and account.password == password else None

    def snapshot(self) -> dict[str, Any]:
        return {
            "api_enabled": self.api_enabled,
            "accounts": {name: acct.public() for name, acct in self.accounts.items()},
            "certificates": {d.domain: d.certificate for a in self.accounts.values() for d in a.domains},
            "ssl_failures": dict(self.ssl_failures),
            "counters": dict(self.counters),
            "max_concurrent_mutations": self.max_concurrent_mutations,
            "banned": self.firewall.banned(),
            "calls": [dict(c) for c in self.calls],  # copies: a call in progress changes its own
        }

    # --- the views ------------------------------------------------------------

    def account_info(self, acct: SimAccount, form: Form) -> Answer:
        if not acct.has_package:
            return {"error": "Package not found"}
        main = acct.domains[0].domain if acct.domains else None
        return {
            "package_name": "Simulated",
            "disk_limit": "Unlimited",
            "disk_used": "0 B",
            "email_disk_used": "0 B",
            "db_disk_used": "0 B",
            "email_limit": "Unlimited",
            "email_used": 0,
            "db_limit": _limit_shown(acct.db_limit),
            "db_used": len(acct.db_users),  # the panel counts MySQL users, not databases
            "ftp_limit": "Unlimited",
            "ftp_used": 0,
            "domain_limit": _limit_shown(acct.domain_limit),
            "domain_used": len(acct.domains),
            "server_ip": "127.0.0.1",
            "main_domain": main,
            "user_id": acct.user_id,
            "email": f"{acct.username}@example.com",
            "full_name": f"{acct.username} Simulated",
        }

    def add_domain(self, acct: SimAccount, form: Form) -> Answer:
        domain = form.get("domain", "").strip()
        php = form.get("php_version", "").strip()
        path = form.get("path", "public_html").lstrip("/") or "public_html"
        if not domain or not php:
            return {"success": False, "message": "Domain and PHP version are required."}
        domain = domain.lower()
        if not _PANEL_DOMAIN.fullmatch(domain):
            return {"success": False, "message": "Invalid domain format."}
        parent = ".".join(domain.split(".")[-2:])
        is_sub = domain.count(".") > 1 and any(d.domain == parent for d in acct.domains)
        kind, limit = ("subdomain", acct.subdomain_limit) if is_sub else ("domain", acct.domain_limit)
        if any(d.domain == domain for a in self.accounts.values() for d in a.domains):
            return {"success": False, "message": f"The domain '{domain}' already exists."}
        if limit != 0 and sum(d.kind == kind for d in acct.domains) >= limit:
            which = "Subdomain" if is_sub else "Domain"
            return {"success": False, "message": f"{which} add limit exceeded."}
        record = SimDomain(self.next_domain_id, domain, f"/home/{acct.username}/{path}", php, kind)
        self.next_domain_id += 1
        acct.domains.append(record)
        return {
            "success": True,
            "message": f"Domain '{domain}' added successfully!",
            "domain_id": record.id,
        }

    def domain_list(self, acct: SimAccount, form: Form) -> Answer:
        return [{"id": d.id, "domain": d.domain, "path": d.path} for d in acct.domains]

    def domain_issue_ssl(self, acct: SimAccount, form: Form) -> Answer:
        name = form.get("domain", "").strip()
        if not name:
            return {"success": False, "message": "Domain field is required."}
        domain = next((d for d in acct.domains if d.domain == name), None)
        if domain is None:
            return {"success": False, "message": f"Domain '{name}' not found for this user."}
        if self.ssl_failures.get(name, 0) > 0:
            self.ssl_failures[name] -= 1
            domain.certificate = "self_signed"
            return {
                "success": False,
                "message": f'Failed to issue SSL for "{name}", self-signed SSL created instead.',
            }
        domain.certificate = "issued"
        return {"success": True, "message": f'SSL issued successfully for "{name}".'}

    def db_make(self, acct: SimAccount, form: Form) -> Answer:
        # The panel reads "dbname" (its documentation says "db", which it ignores).
        name = form.get("dbname")
        db_user, db_pass, db_passc = form.get("dbuser"), form.get("dbpass"), form.get("dbpassc")
        if not name:
            return {"success": False, "error": "Database name is required."}
        if len(name) < 2:
            return {"success": False, "error": "Database name must be at least 2 characters."}
        if acct.db_limit != 0 and len(acct.db_users) >= acct.db_limit:
            return {"success": False, "error": "Database limit exceeded."}
        full = f"{acct.username}_{name}"
        if not _SQL_IDENTIFIER.fullmatch(name):
            return {
                "success": False,
                "error": f"(1064, \"You have an error in your SQL syntax near '{full}'\")",
            }
        if len(full) > 64:
            return {"success": False, "error": f"(1059, \"Identifier name '{full}' is too long\")"}
        if full in acct.databases:
            return {"success": False, "error": f"Database '{full}' already exists."}
        acct.databases.append(full)  # created before the user fields are even looked at
        if db_user or db_pass or db_passc:
            if not db_user or not db_pass or not db_passc:
                return {"success": False, "error": "All database user fields are required."}
            if len(db_user) < 2:
                return {"success": False, "error": "DB user name must be at least 2 characters."}
            if len(db_pass) < 8:
                return {"success": False, "error": "Password must be at least 8 characters."}
            if db_pass != db_passc:
                return {"success": False, "error": "Passwords do not match."}
            full_user = f"{acct.username}_{db_user}"
            if full_user in acct.db_users:
                return {"success": False, "error": "User already exists."}
            acct.db_users.append(full_user)
        return {"success": True, "message": "Database and user created successfully."}

    def database_list(self, acct: SimAccount, form: Form) -> Answer:
        return {"databases": list(acct.databases)}

    def database_userlist(self, acct: SimAccount, form: Form) -> Answer:
        return {"users": list(acct.db_users)}

    def cronjob_add(self, acct: SimAccount, form: Form) -> Answer:
        fields = [form.get(k) for k in ("minute", "hour", "day", "month", "weekday", "comm")]
        if not all(fields):
            return {"success": False, "error": "All fields are required."}
        line = " ".join(str(f) for f in fields)
        existing = "\n".join(acct.cron_lines or [])
        if line in existing:  # the panel's duplicate check: a substring of the whole crontab
            return {"success": False, "error": "Cron job already exists."}
        # Written as-is: a newline inside a field becomes extra crontab lines.
        acct.cron_lines = [*(acct.cron_lines or []), *line.split("\n")]
        return {"success": True, "message": "Cron job added successfully."}

    def cronjob_list(self, acct: SimAccount, form: Form) -> Answer:
        wanted = form.get("value")
        if not wanted:
            return {"error": "Line is required."}
        if acct.cron_lines is None:
            raise PanelCrash("FileNotFoundError: no crontab for user")
        wanted = wanted.strip()
        for number, text in enumerate(acct.cron_lines, start=1):
            parts = text.split(None, 5)
            if len(parts) == 6 and " ".join(parts).strip() == wanted:
                return {"line_number": number}
        return {"error": "Cron job not found."}

    def cronjob_delete(self, acct: SimAccount, line: int) -> Answer:
        lines = acct.cron_lines or []
        if not 1 <= line <= len(lines):
            return {"error": "Failed to delete the cron job. Please check the line number or cron file."}
        del lines[line - 1]
        return {"success": "Cron job deleted successfully!"}
