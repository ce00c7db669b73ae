"""A circuit breaker per panel server, kept in the database so every worker sees it.

The panel's firewall bans the caller's IP after 12 failed logins in 5 minutes
(and for good after 20 bans a day), which would lock the bridge and every other
customer out. So the bridge counts the failed logins it causes per panel in a
5-minute window, and after ``threshold`` of them (or any firewall answer) stops
calling that panel until ``cooldown`` has passed; jobs wait meanwhile, they do
not fail.

Each process also keeps a view of its own: the breaker as it last saw it, and the
credentials the panel accepted in the last few minutes. A call with such
credentials cannot be a failed login, so it needs no fresh look at the database,
only at that view (it still waits while the breaker was last seen open).
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.domain.outcomes import FailureReason
from bridge.panel.config import PanelCredentials
from bridge.store import tables as t
from bridge.store.types import utcnow

log = logging.getLogger("bridge.breaker")

TRIPPING_REASONS = frozenset({FailureReason.INVALID_CREDENTIALS, FailureReason.FIREWALL})
# How long credentials the panel accepted count as good (a changed password shows within this).
ACCEPTED_FOR_S = 300.0
# How many accepted credentials a process remembers (the most recent).
ACCEPTED_KEPT = 1024
# How old this process's reading of a breaker may be for a call to rely on it.
VIEW_FRESH_S = 5.0


def _digest(creds: PanelCredentials) -> bytes:
    return hashlib.sha256(f"{creds.username}\0{creds.password}".encode()).digest()


class PanelBreaker:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        threshold: int = 3,
        window: timedelta = timedelta(minutes=5),
        cooldown: timedelta = timedelta(minutes=10),
    ) -> None:
        self._engine = engine
        self._threshold = threshold
        self._window = window
        self._cooldown = cooldown
        # panel -> (open_until as last read, when it was read; monotonic)
        self._seen: dict[str, tuple[datetime | None, float]] = {}
        # (panel, user name) -> (digest of the password, when the panel last accepted it; monotonic)
        self._accepted: dict[tuple[str, str], tuple[bytes, float]] = {}

    def saw(self, panel: str, open_until: datetime | None) -> None:
        """What a look at the database showed of ``panel``'s breaker."""
        self._seen[panel] = (open_until, time.monotonic())

    def seen_recently(self, panel: str) -> bool:
        """Whether this process read ``panel``'s breaker within VIEW_FRESH_S."""
        seen = self._seen.get(panel)
        return seen is not None and time.monotonic() - seen[1] < VIEW_FRESH_S

    def seen_open_until(self, panel: str, now: datetime | None = None) -> datetime | None:
        until = self._seen.get(panel, (None, 0.0))[0]
        return until if until is not None and until > (now or utcnow()) else None

    def accepted(self, panel: str, creds: PanelCredentials) -> None:
        key = (panel, creds.username)
        self._accepted.pop(key, None)  # re-inserted last: the dict stays in the order of acceptance
        self._accepted[key] = (_digest(creds), time.monotonic())
        while len(self._accepted) > ACCEPTED_KEPT:
            # A worker sees many accounts; keep the newest (an account seen once is rarely seen again).
            del self._accepted[next(iter(self._accepted))]

    def refused(self, panel: str, creds: PanelCredentials) -> None:
        self._accepted.pop((panel, creds.username), None)

    def vouched(self, panel: str, creds: PanelCredentials) -> bool:
        """Whether the panel accepted exactly these credentials within ACCEPTED_FOR_S."""
        known = self._accepted.get((panel, creds.username))
        return known is not None and known[0] == _digest(creds) and time.monotonic() - known[1] < ACCEPTED_FOR_S

    async def record(self, panel: str, reason: FailureReason, now: datetime | None = None) -> datetime | None:
        """Count a failure; when the breaker opens on it, until when."""
        if reason not in TRIPPING_REASONS:
            return None
        now = now or utcnow()
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(select(t.panel_breakers).where(t.panel_breakers.c.panel == panel).with_for_update())
            ).one_or_none()
            if row is None:
                try:
                    async with conn.begin_nested():
                        await conn.execute(
                            t.panel_breakers.insert().values(panel=panel, failures=0, window_started_at=now)
                        )
                except IntegrityError:
                    pass
                row = (
                    await conn.execute(
                        select(t.panel_breakers).where(t.panel_breakers.c.panel == panel).with_for_update()
                    )
                ).one()
            fresh = row.window_started_at is None or row.window_started_at < now - self._window
            failures = 1 if fresh else row.failures + 1
            values: dict[str, object] = {
                "failures": failures,
                "window_started_at": now if fresh else row.window_started_at,
                "last_reason": reason.value,
            }
            open_until = None
            if reason is FailureReason.FIREWALL or failures >= self._threshold:
                values["open_until"] = open_until = now + self._cooldown
                log.warning(
                    "circuit breaker open for panel %s until %s (%s, %d failure(s) in the window)",
                    panel,
                    open_until,
                    reason.value,
                    failures,
                )
            await conn.execute(update(t.panel_breakers).where(t.panel_breakers.c.panel == panel).values(**values))
        if open_until is not None:
            self.saw(panel, open_until)
        return open_until
