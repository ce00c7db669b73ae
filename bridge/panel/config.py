"""How to reach one panel server, and the credentials of one hosting account on it.

Each OLSPanel install picks its own port and makes its own self-signed
certificate, so every server carries its own URL and its own way of trusting
that certificate: a CA file, or a pinned SHA-256 fingerprint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.domain.masking import MASK

__all__ = ["MUTATING_CALLS", "READ_CALLS", "PanelCredentials", "PanelServer"]

READ_CALLS = frozenset({"account_info", "domain_list", "database_list", "database_userlist", "cronjob_list"})
MUTATING_CALLS = frozenset({"add_domain", "domain_issue_ssl", "db_make", "cronjob_add", "cronjob_delete"})

_READ_TIMEOUT_CAP = 15.0
_SSL_TIMEOUT_FLOOR = 600.0


class PanelServer(BaseModel):
    """One panel server: its base URL, TLS trust, connection limit and timeouts.

    ``timeout_s`` bounds the ordinary mutating calls (``add_domain``, ``db_make``,
    ``cronjob_add``). Reads default to ``min(timeout_s, 15)`` and certificate
    issuance to ``max(timeout_s, 600)``, because issuing waits for DNS and ACME;
    ``read_timeout_s`` and ``ssl_timeout_s`` override those.

    ``quiet_after_unknown_s`` is how long no mutating call goes to the server after
    one whose outcome is unknown: it timed out, its connection dropped, or the
    worker sending it died. The panel works such a call through to its end, and a
    second configuration rewrite beside it can lose a mapping.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    url: str
    verify_tls: bool = True
    ca_file: str | None = None
    tls_fingerprint: str | None = None
    max_concurrency: int = Field(default=4, ge=1)
    timeout_s: float = Field(default=120.0, gt=0)
    read_timeout_s: float | None = Field(default=None, gt=0)
    ssl_timeout_s: float | None = Field(default=None, gt=0)
    quiet_after_unknown_s: float = Field(default=60.0, ge=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http or https base URL such as https://203.0.113.5:8443")
        if parts.username or parts.password:
            # Credentials go in headers; a URL is logged and stored in call records.
            raise ValueError("must not contain a user name or password")
        if parts.query or parts.fragment:
            raise ValueError("must be a base URL without a query or fragment")
        return value

    @field_validator("tls_fingerprint")
    @classmethod
    def _check_fingerprint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digits = value.strip().replace(":", "").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digits):
            raise ValueError(
                "must be the certificate's SHA-256 fingerprint: 64 hexadecimal digits, "
                "colons allowed (openssl x509 -noout -fingerprint -sha256)"
            )
        return digits

    @property
    def fingerprint_bytes(self) -> bytes | None:
        """The pinned fingerprint as the 32 raw bytes aiohttp compares against."""
        return bytes.fromhex(self.tls_fingerprint) if self.tls_fingerprint else None

    @property
    def read_timeout(self) -> float:
        if self.read_timeout_s is not None:
            return self.read_timeout_s
        return min(self.timeout_s, _READ_TIMEOUT_CAP)

    @property
    def ssl_timeout(self) -> float:
        if self.ssl_timeout_s is not None:
            return self.ssl_timeout_s
        return max(self.timeout_s, _SSL_TIMEOUT_FLOOR)

    def timeout_for(self, call: str) -> float:
        """The total time allowed for one call of this kind, in seconds."""
        if call == "domain_issue_ssl":
            return self.ssl_timeout
        if call in READ_CALLS:
            return self.read_timeout
        return self.timeout_s


@dataclass(frozen=True)
class PanelCredentials:
    """A hosting account's panel login; the password never shows in a repr or a log."""

    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"PanelCredentials(username={self.username!r}, password={MASK!r})"

    __str__ = __repr__
