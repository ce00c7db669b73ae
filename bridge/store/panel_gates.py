"""The ``panel_gates`` row of each panel: who holds its mutation gate, and how long the
panel must stay quiet.

The advisory lock that serialises mutating calls dies with its session and leaves no
trace; this row outlives it. A holder found here by the next one ended without letting
go (killed, its connection lost), perhaps in the middle of a call the panel is still
working on. Every statement runs on the gate's own connection (or, once that is lost,
one of its own), one round trip each; times are the server's, so clocks never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class LostHolder:
    """A holder that never let go, as the row shows it (seconds left, negative once past)."""

    held_by: str
    held_since: datetime
    busy_s: float | None
    quiet_s: float | None


async def claim(conn: asyncpg.Connection, panel: str, holder: str) -> float | None:
    """Write ``holder`` as the gate's, if the holder before let go: then the seconds left of a
    quiet period (0 if none). None if the holder before never let go (the row is unchanged)."""
    row = await conn.fetchrow(_CLAIM, panel, holder)
    if row is None:
        return None
    return max(row["quiet_s"] or 0.0, 0.0)


async def lost_holder(conn: asyncpg.Connection, panel: str) -> LostHolder:
    row = await conn.fetchrow(_HOLDER, panel)
    assert row is not None
    return LostHolder(row["held_by"], row["held_since"], row["busy_s"], row["quiet_s"])


async def take_over(conn: asyncpg.Connection, panel: str, holder: str, quiet_s: float) -> None:
    """Write ``holder`` as the gate's in place of a lost one, the panel quiet ``quiet_s`` from now
    (kept for whoever comes next, were this holder to end before it is over)."""
    await conn.execute(_TAKE_OVER, panel, holder, quiet_s)


async def release_and_unlock(conn: asyncpg.Connection, namespace: int, key: int, panel: str, holder: str) -> None:
    """Let the gate go: the row says so, then the advisory lock is released, in one round trip."""
    await conn.execute(_RELEASE, namespace, key, panel, holder)


async def clear(conn: asyncpg.Connection, panel: str, holder: str) -> None:
    """Say that ``holder``, whose session is gone, let go (no call of its was in flight)."""
    await conn.execute(_CLEAR, panel, holder)


async def keep_quiet(conn: asyncpg.Connection, panel: str, seconds: float) -> None:
    """No mutating call to ``panel`` for ``seconds`` from now, whoever holds the gate."""
    await conn.execute(_QUIET, panel, seconds)


async def busy_for(conn: asyncpg.Connection, panel: str, seconds: float) -> None:
    """The holder's call may run ``seconds`` from now (a certificate issuance)."""
    await conn.execute(_BUSY, panel, seconds)


async def not_busy(conn: asyncpg.Connection, panel: str) -> None:
    await conn.execute(_NOT_BUSY, panel)


# The row is updated first (a data-modifying WITH that nothing reads would run after the
# unlock), so the next holder's claim, coming after the unlock, waits for the row until
# this statement commits.
_RELEASE = """
    WITH let_go AS (
        UPDATE panel_gates SET held_by = NULL, busy_until = NULL WHERE panel = $3 AND held_by = $4 RETURNING 1
    )
    SELECT pg_advisory_unlock($1, $2) FROM (SELECT count(*) FROM let_go) AS updated_first
"""
_CLEAR = "UPDATE panel_gates SET held_by = NULL, busy_until = NULL WHERE panel = $1 AND held_by = $2"
# No row back: the holder before never let go.
_CLAIM = """
    INSERT INTO panel_gates AS g (panel, held_by, held_since) VALUES ($1, $2, now())
    ON CONFLICT (panel) DO UPDATE SET held_by = excluded.held_by, held_since = excluded.held_since
        WHERE g.held_by IS NULL
    RETURNING extract(epoch FROM g.quiet_until - now())::float8 AS quiet_s
"""
_HOLDER = """
    SELECT held_by, held_since, extract(epoch FROM busy_until - now())::float8 AS busy_s,
           extract(epoch FROM quiet_until - now())::float8 AS quiet_s
    FROM panel_gates WHERE panel = $1
"""
_TAKE_OVER = """
    UPDATE panel_gates SET held_by = $2, held_since = now(), busy_until = NULL,
        quiet_until = greatest(quiet_until, now() + make_interval(secs => $3))
    WHERE panel = $1
"""
_QUIET = """
    UPDATE panel_gates SET quiet_until = greatest(quiet_until, now() + make_interval(secs => $2)) WHERE panel = $1
"""
_BUSY = "UPDATE panel_gates SET busy_until = now() + make_interval(secs => $2) WHERE panel = $1"
_NOT_BUSY = "UPDATE panel_gates SET busy_until = NULL WHERE panel = $1"
