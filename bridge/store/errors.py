"""Which exceptions mean "the database cannot be reached or cannot take this now"."""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# DBAPIError covers connection loss mid-statement on both drivers; OSError and
# TimeoutError cover a refused or hanging connect before the driver wraps it; the
# asyncpg errors, the few hot statements sent on the driver's own connection.
DATABASE_OUT_OF_REACH: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    PoolTimeout,
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
)
# Any driver error besides: to a client, a statement the database refused is as unavailable.
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (*DATABASE_OUT_OF_REACH, DBAPIError)
