"""Turning whatever the panel answered into one PanelOutcome.

The panel answers HTTP 200 for success and failure alike and words its failures
in free text, under ``error`` or ``message``. This module is the one place that
knows those texts. It is pure: the client hands it the status and body (or the
exception), it hands back an outcome with a message a billing admin can act on.

How an answer is read, in order:

1. not JSON: HTML 403 is the login firewall; for ``cronjob_list`` an HTML 500
   means the account has no crontab yet; any other page (500, 404, empty) means
   the panel broke somewhere, so a read is retried and a mutating call's result
   is unknown (the panel may have done part or all of it before failing);
2. JSON carrying ``error`` or ``success: false``: the text is matched against
   :data:`MESSAGE_RULES`, first match wins; text no rule knows is the panel's
   raw exception, a permanent failure;
3. otherwise the call's own success shape (:data:`SUCCESS_READERS`); an answer
   in no known shape is treated like an HTML page.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from bridge.domain.masking import scrub
from bridge.domain.outcomes import (
    AlreadyExists,
    FailureReason,
    PanelOutcome,
    PermanentFailure,
    RetryableFailure,
    UnknownOutcome,
)
from bridge.panel.config import MUTATING_CALLS
from bridge.panel.readers import SUCCESS_READERS, normalise_limit

__all__ = [
    "MESSAGE_RULES",
    "SUCCESS_READERS",
    "classify_answer",
    "classify_exception",
    "classify_message",
    "normalise_limit",
    "parse_json",
]

_NOT_JSON = object()


def parse_json(body: str) -> Any:
    """The decoded JSON body, or a sentinel (never None: ``null`` is valid JSON)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # deeply nested input exhausts the parser's recursion
        return _NOT_JSON


def _quoted(text: str) -> str:
    return f"(panel said: {text.strip()!r})" if text.strip() else "(no text)"


def _credentials(text: str) -> PanelOutcome:
    return PermanentFailure(
        f"The panel refused the account's credentials {_quoted(text)}. Check the username and "
        "password; the bridge will not retry, because repeated failures make the panel's "
        "firewall block the bridge.",
        FailureReason.INVALID_CREDENTIALS,
    )


def _api_disabled(text: str) -> PanelOutcome:
    return PermanentFailure(
        f"The panel's API is switched off {_quoted(text)}. A panel administrator must enable "
        "the API in the panel's settings; retrying will not help until then.",
        FailureReason.API_DISABLED,
    )


def _no_credentials(text: str) -> PanelOutcome:
    return PermanentFailure(
        f"The panel says no credentials reached it {_quoted(text)}. The account's username or "
        "password is empty in the bridge's configuration.",
        FailureReason.INVALID_CREDENTIALS,
    )


def _exists(text: str, *, first_part_done: bool = False) -> PanelOutcome:
    return AlreadyExists(f"The panel says this already exists {_quoted(text)}.", first_part_done=first_part_done)


def _limit(text: str) -> PanelOutcome:
    return PermanentFailure(
        f"The hosting account has reached a limit of its package {_quoted(text)}. Raise the "
        "package's limit or remove something from the account, then retry the order.",
        FailureReason.LIMIT_EXCEEDED,
    )


def _ssl_fallback(text: str) -> PanelOutcome:
    return RetryableFailure(
        f"The panel could not issue a certificate yet and installed a self-signed one "
        f"{_quoted(text)}. Usually the domain's DNS does not point at the server yet; "
        "the bridge will try again later."
    )


def _web_server(text: str) -> PanelOutcome:
    return RetryableFailure(
        f"The panel failed while configuring the web server {_quoted(text)}. This is usually "
        "temporary; the bridge will check the panel and try again."
    )


def _invalid_input(text: str) -> PanelOutcome:
    return PermanentFailure(
        f"The panel rejected the order's data {_quoted(text)}. Correct the order and retry.",
        FailureReason.INVALID_INPUT,
    )


def _package(text: str) -> PanelOutcome:
    return PermanentFailure(
        f"The hosting account has no package on the panel {_quoted(text)}. Assign a package "
        "to the account in the panel.",
        FailureReason.OTHER,
    )


def _not_found(text: str) -> PanelOutcome:
    return PermanentFailure(
        f"The panel could not find what the call refers to {_quoted(text)}.",
        FailureReason.NOT_FOUND,
    )


def _method(text: str) -> PanelOutcome:
    return PermanentFailure(
        f"The panel refused the request method {_quoted(text)}; the bridge sent a call the "
        "panel does not accept. This is a bug in the bridge.",
        FailureReason.OTHER,
    )


def _raw_error(text: str) -> PanelOutcome:
    return PermanentFailure(
        f"The panel reported an error it did not explain {_quoted(text)}. Check the panel's "
        "logs; for a domain, check whether it was added anyway before retrying.",
        FailureReason.OTHER,
    )


@dataclass(frozen=True)
class MessageRule:
    """A lower-case fragment of a panel failure text and the outcome it means."""

    fragment: str
    outcome: Callable[[str], PanelOutcome]


# Order matters: the more specific fragment comes first ("Package not found" before
# "not found", "Username and password required" before "required").
MESSAGE_RULES: tuple[MessageRule, ...] = (
    MessageRule("invalid credentials", _credentials),
    MessageRule("invalid api key", _credentials),
    MessageRule("api is currently disabled", _api_disabled),
    MessageRule("username and api key or password required", _no_credentials),
    MessageRule("username and password required", _no_credentials),
    MessageRule("username is required", _no_credentials),
    MessageRule("authentication required", _no_credentials),
    # Only db_make answers this, after it has made the database (PANEL_API.md: not atomic).
    MessageRule("user already exists", functools.partial(_exists, first_part_done=True)),
    MessageRule("already exists", _exists),
    MessageRule("limit exceeded", _limit),
    MessageRule("failed to issue ssl", _ssl_fallback),
    MessageRule("failed to add mapping", _web_server),
    MessageRule("failed to add virtual host", _web_server),
    MessageRule("failed to set folder permissions", _web_server),
    MessageRule("package not found", _package),
    MessageRule("post method required", _method),
    MessageRule("request method", _method),
    MessageRule("method is allowed", _method),
    MessageRule("invalid domain format", _invalid_input),
    MessageRule("passwords do not match", _invalid_input),
    MessageRule("at least", _invalid_input),
    MessageRule("required", _invalid_input),
    MessageRule("not found", _not_found),
    MessageRule("does not exist", _not_found),
)


def classify_message(text: str) -> PanelOutcome:
    """The outcome a panel failure text means (raw exception text: permanent)."""
    lowered = text.lower()
    for rule in MESSAGE_RULES:
        if rule.fragment in lowered:
            return rule.outcome(text)
    return _raw_error(text)


def _failure_text(answer: Mapping[str, Any]) -> str | None:
    """The failure text of a JSON answer, or None when the answer is not a failure."""
    error = answer.get("error")
    if error:
        return str(error)
    if answer.get("success") is False:
        return str(answer.get("message") or answer.get("error") or "")
    return None


def _broken_answer(call: str, what: str) -> PanelOutcome:
    if call in MUTATING_CALLS:
        return UnknownOutcome(
            f"The panel answered {what} after the request was sent, so it may or may not have "
            "done it. The bridge will read the panel's state back before trying again."
        )
    return RetryableFailure(f"The panel answered {what}; the bridge will try again.")


def _describe_page(status: int, body: str) -> str:
    if not body.strip():
        return f"HTTP {status} with an empty body"
    return f"HTTP {status} with an HTML page instead of JSON"


def classify_answer(call: str, status: int, body: str, secrets: Iterable[str] = ()) -> PanelOutcome:
    """The outcome of a call that got an HTTP answer (redirects are handled by the client).

    ``secrets`` are the values sent with the call; none of them can reach the
    outcome's message, even if the panel quotes them back.
    """
    answer = scrub(parse_json(body), tuple(secrets))
    if answer is _NOT_JSON:
        if status == 403:
            return PermanentFailure(
                "The panel's firewall is blocking the bridge (HTTP 403 page). The panel bans an "
                "address for 10 minutes after 12 failed logins in 5 minutes: check the "
                "account's credentials, then wait for the ban to lift or unblock the bridge's "
                "address in the panel's firewall.",
                FailureReason.FIREWALL,
            )
        if call == "cronjob_list" and status == 500:
            # The panel reads the account's crontab without checking it exists, so an
            # account that never had a cron job gets an HTML 500 here: the line is absent.
            return PermanentFailure(
                "The account has no cron jobs yet (the panel has no crontab for it).",
                FailureReason.NOT_FOUND,
            )
        return _broken_answer(call, _describe_page(status, body))
    if isinstance(answer, dict):
        failure = _failure_text(answer)
        if failure is not None:
            return classify_message(failure)
    reader = SUCCESS_READERS.get(call)
    found = reader(answer) if reader is not None else None
    if found is not None:
        return found
    return _broken_answer(call, f"HTTP {status} with JSON in an unexpected shape")


def classify_exception(call: str, exc: BaseException, url: str) -> PanelOutcome:
    """The outcome of a call that got no HTTP answer (a network, timeout or TLS error)."""
    name = exc.__class__.__name__
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        return PermanentFailure(
            f"The panel at {url} presented a certificate whose SHA-256 fingerprint is not the "
            "pinned one. If the panel's certificate was renewed, put the new fingerprint in "
            "tls_fingerprint; otherwise something is intercepting the connection.",
            FailureReason.TLS,
        )
    if isinstance(exc, aiohttp.ClientSSLError):
        return PermanentFailure(
            f"The panel's certificate at {url} could not be verified ({name}: {exc}). The "
            "panel's installer makes a self-signed certificate: set ca_file to that "
            "certificate (PEM) or pin its SHA-256 fingerprint with tls_fingerprint.",
            FailureReason.TLS,
        )
    if isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
        return RetryableFailure(
            f"Could not connect to the panel at {url} ({name}); nothing was sent. The bridge will try again."
        )
    what = "did not answer in time" if isinstance(exc, TimeoutError) else "dropped the connection"
    if call in MUTATING_CALLS:
        return UnknownOutcome(
            f"The panel {what} after the request was sent ({name}), so it may or may not have "
            "done it. The bridge will read the panel's state back before trying again."
        )
    return RetryableFailure(f"The panel {what} ({name}); the bridge will try again.")
