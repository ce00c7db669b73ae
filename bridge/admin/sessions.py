"""Web page sessions: a signed cookie any bridge process can verify, and its CSRF token.

The cookie is ``v1.<expiry>.<nonce>.<signature>``: the signature is an HMAC with a
key derived from the admin token that signed in, so the cookie is never the token
itself, cannot be forged without a token, and dies with its token when that token
is removed from BRIDGE_ADMIN_TOKENS. The CSRF token of a session is another HMAC
(same key, the session's nonce), so it too needs no server-side storage.

Signing out revokes the nonce in this process only; other processes accept the
cookie until it expires (``SESSION_LIFETIME_S``). Rotating the token ends every
session at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bridge.domain.validation import is_small_whole_number

SESSION_COOKIE = "bridge_admin_session"
LOGIN_COOKIE = "bridge_admin_login"  # double-submit token of the sign-in form
SESSION_LIFETIME_S = 8 * 3600
_VERSION = "v1"
_MAX_REVOKED = 10_000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _session_key(token: str) -> bytes:
    return hmac.new(token.encode(), b"bridge admin session key v1", hashlib.sha256).digest()


def _mac(key: bytes, message: str) -> str:
    return _b64(hmac.new(key, message.encode(), hashlib.sha256).digest())


@dataclass(frozen=True)
class Session:
    nonce: str
    expires_at: int
    csrf_token: str


@dataclass
class SessionSigner:
    """Issues and verifies session cookies for the configured admin tokens."""

    tokens: Sequence[str]
    lifetime_s: int = SESSION_LIFETIME_S
    _revoked: dict[str, int] = field(default_factory=dict)

    def issue(self, token: str, now: float | None = None) -> tuple[str, Session]:
        """A cookie value for a session signed in with ``token`` (already checked)."""
        expires = int(now if now is not None else time.time()) + self.lifetime_s
        nonce = secrets.token_urlsafe(18)
        key = _session_key(token)
        payload = f"{_VERSION}.{expires}.{nonce}"
        return f"{payload}.{_mac(key, payload)}", Session(nonce, expires, _mac(key, f"csrf.{nonce}"))

    def verify(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie carries, or None (forged, expired, revoked, or its token removed)."""
        # Every cookie issued is ASCII; other header bytes arrive as surrogates that cannot be MACed.
        if not cookie or not cookie.isascii():
            return None
        parts = cookie.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or not is_small_whole_number(parts[1], 12):
            return None
        payload, signature = ".".join(parts[:3]), parts[3]
        expires, nonce = int(parts[1]), parts[2]
        matched: bytes | None = None
        # Every token is tried, so the time taken does not say which one (or none) matched.
        for token in self.tokens:
            key = _session_key(token)
            if hmac.compare_digest(_mac(key, payload).encode(), signature.encode()):
                matched = key
        if matched is None or expires <= (now if now is not None else time.time()) or nonce in self._revoked:
            return None
        return Session(nonce, expires, _mac(matched, f"csrf.{nonce}"))

    def revoke(self, session: Session) -> None:
        if len(self._revoked) >= _MAX_REVOKED:
            now = time.time()
            self._revoked = {n: exp for n, exp in self._revoked.items() if exp > now}
        self._revoked[session.nonce] = session.expires_at


def csrf_matches(expected: str, given: object) -> bool:
    """Constant-time check of a form's CSRF field."""
    return (
        isinstance(given, str)
        and bool(given)
        and given.isascii()  # as every CSRF token is; anything else cannot match
        and hmac.compare_digest(expected.encode(), given.encode())
    )


def new_login_token() -> str:
    return secrets.token_urlsafe(24)
