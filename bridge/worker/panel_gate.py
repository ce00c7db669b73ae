"""One mutating call at a time per panel server, across every worker.

The panel has no locks: two calls that rewrite its web-server configuration at
once can lose a mapping. With PostgreSQL a session-level advisory lock keyed by
the panel's name serialises workers on any machine (a worker that dies drops its
connection and so its lock); in the embedded mode one process runs every worker,
so an asyncio lock is enough. Within a process an asyncio lock is taken first,
so only one database connection per process waits on the advisory lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections import defaultdict
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.store.driver import driver_connection

# The advisory-lock namespace of the bridge (first key of the two-key form).
_LOCK_NAMESPACE = 0x6272  # "br"


def panel_lock_key(panel: str) -> int:
    """A stable signed 32-bit key for ``panel``."""
    unsigned = zlib.crc32(panel.encode())
    return unsigned - (1 << 32) if unsigned >= (1 << 31) else unsigned


class PanelGate:
    def __init__(self, engine: AsyncEngine | None) -> None:
        """``engine`` is the PostgreSQL engine, or None in the embedded mode."""
        self._engine = engine
        self._local: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @contextlib.asynccontextmanager
    async def mutation(self, panel: str) -> AsyncIterator[asyncpg.Connection | None]:
        """Hold the panel's gate; yields the driver connection holding the lock (None in the embedded mode).

        No transaction is open on it, so the caller's last checks before sending take one
        round trip. Everyone else waits while the gate is held, so it speaks to the driver
        directly.
        """
        async with self._local[panel]:
            if self._engine is None:
                yield None
                return
            key = panel_lock_key(panel)
            async with driver_connection(self._engine) as driver:
                await driver.execute("SELECT pg_advisory_lock($1, $2)", _LOCK_NAMESPACE, key)
                try:
                    yield driver
                finally:
                    await driver.execute("SELECT pg_advisory_unlock($1, $2)", _LOCK_NAMESPACE, key)
