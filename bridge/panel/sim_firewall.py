"""Time and the login firewall of the simulated panel.

The real panel's firewall bans an address for 10 minutes after 12 failed logins
within 5 minutes. Tests run it on a :class:`ManualClock` so those minutes pass
without sleeping.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

__all__ = ["LoginFirewall", "ManualClock"]


class ManualClock:
    """A clock tests move by hand, so the firewall's minutes pass instantly."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LoginFirewall:
    """The panel's login firewall: too many failed logins from one address ban it."""

    def __init__(
        self,
        clock: Callable[[], float],
        max_failures: int = 12,
        window_s: float = 300.0,
        ban_s: float = 600.0,
    ) -> None:
        self.clock = clock
        self.max_failures = max_failures
        self.window_s = window_s
        self.ban_s = ban_s
        self._failures: dict[str, deque[float]] = {}
        self._banned_until: dict[str, float] = {}

    def is_banned(self, ip: str) -> bool:
        return self._banned_until.get(ip, float("-inf")) > self.clock()

    def record_failure(self, ip: str) -> None:
        now = self.clock()
        recent = self._failures.setdefault(ip, deque())
        recent.append(now)
        while recent and recent[0] <= now - self.window_s:
            recent.popleft()
        if len(recent) >= self.max_failures:
            self.ban(ip)
            recent.clear()

    def ban(self, ip: str) -> None:
        self._banned_until[ip] = self.clock() + self.ban_s

    def lift(self, ip: str) -> None:
        """An admin unblocks the address before its ban runs out."""
        self._banned_until.pop(ip, None)

    def banned(self) -> dict[str, float]:
        now = self.clock()
        return {ip: until - now for ip, until in self._banned_until.items() if until > now}
