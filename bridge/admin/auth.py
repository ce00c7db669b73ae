"""Admin authentication: bearer tokens from BRIDGE_ADMIN_TOKENS, checked in constant
time, and a limit on repeated failures per client address.

The failure limit lives in memory, per process: with several ``bridge serve``
processes behind a balancer each counts on its own, so an address gets at most
``max_failures`` wrong guesses per window from each process. The client address
is the TCP peer (``request.remote``); behind a reverse proxy that is the proxy,
so the limit then applies to all clients together (forwarded headers are not
trusted, since any client can set them).
"""

from __future__ import annotations

import hmac
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from bridge.admin.sessions import SessionSigner

UNAUTHORIZED = {"error": "missing or invalid admin token"}
TOO_MANY = {"error": "too many failed admin sign-ins from this address; try again later"}


def matching_token(given: str | None, tokens: Sequence[str]) -> str | None:
    """The configured token equal to ``given``, or None; compares against EVERY token."""
    if not given:
        return None
    # Header bytes that are not UTF-8 arrive as surrogate escapes: compare the bytes as sent.
    offered = given.encode("utf-8", "surrogateescape")
    found: str | None = None
    for token in tokens:
        if hmac.compare_digest(offered, token.encode("utf-8", "surrogateescape")):
            found = token
    return found


def bearer_of(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if there is one."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


@dataclass
class FailureLimiter:
    """``max_failures`` failures from one address within ``window_s`` block it until the
    oldest of them leaves the window: at most that many wrong guesses per window."""

    max_failures: int = 10
    window_s: float = 60.0
    max_addresses: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, address: str) -> deque[float]:
        times = self._failures.get(address)
        if times is None:
            return deque()
        horizon = self.clock() - self.window_s
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[address]
        return times

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or None when it is not blocked."""
        times = self._recent(address)
        if len(times) < self.max_failures:
            return None
        return max(1, math.ceil(times[-self.max_failures] + self.window_s - self.clock()))

    def record_failure(self, address: str) -> None:
        if address not in self._failures and len(self._failures) >= self.max_addresses:
            for other in list(self._failures):
                self._recent(other)  # forget addresses whose failures have all expired
            if len(self._failures) >= self.max_addresses:
                self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(address, deque()).append(self.clock())


@dataclass
class AdminAuth:
    """Everything admin requests are checked with; one per application."""

    tokens: Sequence[str]
    limiter: FailureLimiter = field(default_factory=FailureLimiter)
    sessions: SessionSigner = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = SessionSigner(self.tokens)

    def blocked_for(self, request: web.Request) -> int | None:
        return self.limiter.retry_after(client_address(request))

    def check(self, request: web.Request, given: str | None) -> str | None:
        """The matching token, or None; a wrong token counts as a failure of this address."""
        token = matching_token(given, self.tokens)
        if token is None and given:
            self.limiter.record_failure(client_address(request))
        return token


ADMIN_AUTH: web.AppKey[AdminAuth] = web.AppKey("admin_auth", AdminAuth)


def client_address(request: web.Request) -> str:
    return request.remote or "unknown"


def too_many(retry_after: int) -> web.Response:
    return web.json_response(TOO_MANY, status=429, headers={"Retry-After": str(retry_after)})


def unauthorized() -> web.Response:
    return web.json_response(UNAUTHORIZED, status=401, headers={"WWW-Authenticate": 'Bearer realm="bridge-admin"'})


def api_denial(request: web.Request) -> web.Response | None:
    """The answer refusing an admin API request, or None when its bearer token is good."""
    auth = request.app[ADMIN_AUTH]
    retry_after = auth.blocked_for(request)
    if retry_after is not None:
        return too_many(retry_after)
    if auth.check(request, bearer_of(request)) is None:
        return unauthorized()
    return None
