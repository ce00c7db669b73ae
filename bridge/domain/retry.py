"""Retry policy as data, per step kind.

Ordinary steps back off exponentially with jitter. SSL issuance has its own spaced
schedule and a daily cap, because every attempt costs Let's Encrypt quota and the
usual cause (DNS not yet pointing at the server) takes minutes to hours to clear.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from bridge.domain.jobs import StepKind


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    max_total_s: float
    base_delay_s: float = 2.0
    max_delay_s: float = 300.0
    jitter: float = 0.25  # each delay is spread over ±25%
    # An explicit schedule (delay before retry n = schedule[n-1], last one repeating) instead of backoff.
    schedule: tuple[float, ...] = ()
    # At most this many attempts in any 24 hours.
    daily_cap: int | None = None

    def delay_before(self, retry_number: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry ``retry_number`` (1 = the first retry), unscaled."""
        if self.schedule:
            base = self.schedule[min(retry_number, len(self.schedule)) - 1]
        else:
            base = min(self.max_delay_s, self.base_delay_s * 2 ** (retry_number - 1))
        return max(0.0, base * (1 + self.jitter * (2 * rand() - 1)))

    def next_attempt_at(
        self,
        *,
        attempts_made: int,
        first_attempt_at: datetime,
        now: datetime,
        recent_attempts: Sequence[datetime] = (),
        scale: float = 1.0,
        rand: Callable[[], float] = random.random,
    ) -> datetime | None:
        """When to try again, or None when the policy is exhausted.

        ``scale`` (BRIDGE_RETRY_DELAY_SCALE) multiplies every delay and the time limits,
        so tests and demos run the same schedule faster.
        """
        if attempts_made >= self.max_attempts:
            return None
        at = now + timedelta(seconds=self.delay_before(attempts_made, rand) * scale)
        if self.daily_cap is not None:
            day = timedelta(days=1) * scale
            window = sorted(t for t in recent_attempts if t > at - day)
            if len(window) >= self.daily_cap:
                at = max(at, window[len(window) - self.daily_cap] + day)
        if at - first_attempt_at > timedelta(seconds=self.max_total_s * scale):
            return None
        return at


HOUR = 3600.0

_PANEL_CHANGE = RetryPolicy(max_attempts=8, max_total_s=6 * HOUR, base_delay_s=5, max_delay_s=1800)

DEFAULT_POLICIES: dict[StepKind, RetryPolicy] = {
    StepKind.CHECK_ACCOUNT: RetryPolicy(max_attempts=8, max_total_s=2 * HOUR, max_delay_s=600),
    StepKind.ADD_DOMAIN: _PANEL_CHANGE,
    StepKind.CREATE_DATABASE: _PANEL_CHANGE,
    StepKind.ADD_CRON_JOB: _PANEL_CHANGE,
    StepKind.ISSUE_SSL: RetryPolicy(
        max_attempts=12,
        max_total_s=7 * 24 * HOUR,
        schedule=(10 * 60, 30 * 60, HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, 24 * HOUR),
        daily_cap=5,
        jitter=0.1,
    ),
}
