"""The bridge's HTTP client for one OLSPanel server.

Every call is ``POST {url}/api/{name}/`` with a form body and the account's
``username``/``password`` headers. A method never raises for anything the
network or the panel does: it returns a :class:`CallResult` holding the typed
outcome and a :class:`PanelCallRecord` (what the bridge stores about the call,
secrets masked). Values that reach the panel's shell and SQL are validated
before anything is sent; an invalid one costs no call at all.

What a transport failure means depends on whether the request may have reached
the panel: a refused connection or a connect timeout sent nothing (retryable);
a timeout or a dropped connection after sending leaves a mutating call's effect
unknown (the caller reads the panel back before trying again), and a read
retryable. Certificate problems are permanent until someone fixes the TLS
settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType

import aiohttp

from bridge.domain import validation
from bridge.domain.masking import mask
from bridge.domain.outcomes import (
    FailureReason,
    PanelOutcome,
    PermanentFailure,
    outcome_kind,
)
from bridge.panel.classify import classify_answer, classify_exception
from bridge.panel.config import PanelCredentials, PanelServer
from bridge.panel.records import CallResult, PanelCallRecord, response_excerpt
from bridge.panel.tls import TlsSetting, TlsSetupError, tls_setting

__all__ = ["CallResult", "PanelCallRecord", "PanelClient"]

logger = logging.getLogger("bridge.panel")

_EXCERPT_CHARS = 2000
_CONNECT_TIMEOUT_CAP = 10.0
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class PanelClient:
    """An async client for one panel server; share one per server across callers."""

    def __init__(self, server: PanelServer, session: aiohttp.ClientSession | None = None) -> None:
        self.server = server
        self._session = session
        self._owns_session = session is None
        self._tls: TlsSetting | None = None
        self._tls_error: str | None = None

    def __repr__(self) -> str:
        return f"PanelClient(server={self.server.name!r}, url={self.server.url!r})"

    async def __aenter__(self) -> PanelClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this client created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _tls_setting(self) -> TlsSetting:
        if self._tls is None and self._tls_error is None:
            try:
                self._tls = tls_setting(self.server)
            except TlsSetupError as exc:
                self._tls_error = str(exc)
        if self._tls_error is not None:
            raise TlsSetupError(self._tls_error)
        assert self._tls is not None
        return self._tls

    def _get_session(self, tls: TlsSetting) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.server.max_concurrency, ssl=tls)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def url_for(self, call: str) -> str:
        """The endpoint of a call; account information lives at ``/api/`` itself."""
        return f"{self.server.url}/api/" if call == "account_info" else f"{self.server.url}/api/{call}/"

    # --- the calls -------------------------------------------------------------

    async def account_info(self, creds: PanelCredentials) -> CallResult:
        """Package, usage and limits; ``data["limits"][kind] = {"limit": int|None, "used": int}``."""
        return await self._call("account_info", creds, {})

    async def domain_list(self, creds: PanelCredentials) -> CallResult:
        """``data["domains"] = [{"id", "domain", "path"}, ...]``."""
        return await self._call("domain_list", creds, {})

    async def database_list(self, creds: PanelCredentials) -> CallResult:
        """``data["databases"]``: full names, with the panel's ``<account>_`` prefix."""
        return await self._call("database_list", creds, {})

    async def database_userlist(self, creds: PanelCredentials) -> CallResult:
        """``data["users"]``: full database user names, with the ``<account>_`` prefix."""
        return await self._call("database_userlist", creds, {})

    async def cronjob_list(self, creds: PanelCredentials, line: str) -> CallResult:
        """Whether ``line`` ("m h d mo wd command") is in the crontab.

        ``data["line_number"]`` (1-based) when present; PermanentFailure(NOT_FOUND)
        when absent, including when the account has no crontab at all.
        """
        form = {"value": line}
        return await self._call("cronjob_list", creds, form, lambda: {"value": validation.cron_command(line, "line")})

    async def add_domain(
        self, creds: PanelCredentials, domain: str, php_version: str, path: str = "public_html"
    ) -> CallResult:
        """Add a domain to the account; ``data["domain_id"]`` on success."""
        form = {"domain": domain, "php_version": php_version, "path": path}

        def checked() -> dict[str, str]:
            return {
                "domain": validation.domain_name(domain),
                "php_version": validation.php_version(php_version),
                "path": validation.document_path(path),
            }

        return await self._call("add_domain", creds, form, checked)

    async def domain_issue_ssl(self, creds: PanelCredentials, domain: str) -> CallResult:
        """Ask the panel for a Let's Encrypt certificate (slow; it has its own timeout)."""
        form = {"domain": domain}
        return await self._call("domain_issue_ssl", creds, form, lambda: {"domain": validation.domain_name(domain)})

    async def db_make(self, creds: PanelCredentials, name: str, user: str, password: str) -> CallResult:
        """Create database ``<account>_<name>`` and user ``<account>_<user>``.

        The panel creates the database before it checks the user fields, so every
        field is checked here first: a bad one would leave an orphan database.
        Both ``dbname`` (what the panel reads) and ``db`` (what it documents) are sent.
        """
        form = {"dbname": name, "db": name, "dbuser": user, "dbpass": password}

        def checked() -> dict[str, str]:
            db = validation.database_name(name, creds.username, "name")
            db_user = validation.database_user(user, creds.username, "user")
            secret = validation.database_password(password, "password")
            return {"dbname": db, "db": db, "dbuser": db_user, "dbpass": secret, "dbpassc": secret}

        return await self._call("db_make", creds, form, checked, secrets=(password,))

    async def cronjob_add(
        self,
        creds: PanelCredentials,
        minute: str,
        hour: str,
        day: str,
        month: str,
        weekday: str,
        command: str,
    ) -> CallResult:
        """Add one crontab line. The panel checks nothing, so every field is checked here."""
        form = {
            "minute": minute,
            "hour": hour,
            "day": day,
            "month": month,
            "weekday": weekday,
            "comm": command,
        }

        def checked() -> dict[str, str]:
            return {
                "minute": validation.cron_field(minute, "minute"),
                "hour": validation.cron_field(hour, "hour"),
                "day": validation.cron_field(day, "day"),
                "month": validation.cron_field(month, "month"),
                "weekday": validation.cron_field(weekday, "weekday"),
                "comm": validation.cron_command(command),
            }

        return await self._call("cronjob_add", creds, form, checked)

    # --- the machinery ---------------------------------------------------------

    async def _call(
        self,
        call: str,
        creds: PanelCredentials,
        form: dict[str, str],
        normalise: Callable[[], dict[str, str]] | None = None,
        *,
        secrets: tuple[str, ...] = (),
    ) -> CallResult:
        """Validate, send, classify, record. ``form`` is the raw input, for the record."""
        url = self.url_for(call)
        secrets = (creds.password, *secrets)
        started = time.monotonic()
        status: int | None = None
        body = ""
        try:
            # It goes in a header: one aiohttp cannot send would raise, and the job come back forever.
            validation.account_password(creds.password, "the account's password")
            if normalise is not None:
                form = normalise()
        except validation.InvalidField as exc:
            outcome: PanelOutcome = PermanentFailure(f"Not sent to the panel: {exc}.", FailureReason.INVALID_INPUT)
            return self._finish(call, url, creds, form, None, "", outcome, started, secrets)
        try:
            tls = self._tls_setting()
            session = self._get_session(tls)
            timeout = self.server.timeout_for(call)
            async with session.post(
                url,
                data=form,
                headers={"username": creds.username, "password": creds.password},
                allow_redirects=False,
                ssl=tls,
                timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, _CONNECT_TIMEOUT_CAP)),
            ) as response:
                status = response.status
                # Django answers UTF-8; a broken byte must not turn into an exception.
                body = (await response.read()).decode("utf-8", errors="replace")
                if status in _REDIRECTS:
                    outcome = PermanentFailure(
                        f"The panel redirected {url} to {response.headers.get('Location', '?')} "
                        "instead of answering. Check the panel's URL (scheme and port): the "
                        "panel redirects paths without their trailing slash and drops the form.",
                        FailureReason.OTHER,
                    )
                else:
                    outcome = classify_answer(call, status, body, secrets)
        except TlsSetupError as exc:
            outcome = PermanentFailure(str(exc), FailureReason.TLS)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            outcome = classify_exception(call, exc, url)
        return self._finish(call, url, creds, form, status, body, outcome, started, secrets)

    def _finish(
        self,
        call: str,
        url: str,
        creds: PanelCredentials,
        form: dict[str, str],
        status: int | None,
        body: str,
        outcome: PanelOutcome,
        started: float,
        secrets: tuple[str, ...],
    ) -> CallResult:
        duration_ms = (time.monotonic() - started) * 1000
        kind = outcome_kind(outcome)
        message = outcome.message
        record = PanelCallRecord(
            call=call,
            url=url,
            request=mask({**form, "username": creds.username, "password": creds.password}),
            http_status=status,
            response=response_excerpt(body, secrets),
            outcome=kind,
            message=message,
            duration_ms=round(duration_ms, 1),
        )
        level = logging.INFO if kind in ("succeeded", "already_exists") else logging.WARNING
        logger.log(
            level,
            "panel call %s on %s (%s) for %s: %s in %.0f ms: %s",
            call,
            self.server.name,
            url,
            creds.username,
            kind,
            duration_ms,
            message,
        )
        return CallResult(outcome, record)
