"""The driver's own connection, for the few statements on the engine's hottest paths.

Taken from the engine's pool, so the pool still bounds the connections; a connection
the driver found broken is invalidated rather than handed to the next caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine


@contextlib.asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A PostgreSQL connection with no transaction open: each statement commits on its own."""
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        try:
            yield driver
        finally:
            if driver.is_closed():
                await conn.invalidate()
