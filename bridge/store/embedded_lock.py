"""One ``bridge run`` per embedded database.

In the embedded mode the panel's gate is an asyncio lock and the job queue lives in the
process: a second ``bridge run`` on the same SQLite file would send mutating calls to a
panel beside the first one's, which the panel cannot take (PANEL_API.md). So each holds an
exclusive lock on a file beside the database (``<database>.lock``, holding its process id)
for as long as it runs; the operating system lets go of it when the process ends, however
it ends. ``bridge jobs``, ``bridge migrate`` and backups do not take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy.engine import make_url


class DatabaseInUse(Exception):
    """Another process runs the embedded mode on this database."""


def database_file(url: str) -> Path | None:
    """The SQLite database file ``url`` names, or None for one in memory."""
    parsed = make_url(url)
    database = parsed.database
    if database and database.startswith("file:") and parsed.query.get("uri") == "true":
        # SQLite's own URI form (sqlite+aiosqlite:///file:bridge.db?uri=true): the path after "file:".
        if parsed.query.get("mode") == "memory":
            return None
        database = unquote(urlsplit(database).path)
    if not database or database == ":memory:":
        return None
    return Path(database).resolve()


@contextlib.contextmanager
def sole_process(url: str) -> Iterator[None]:
    """Hold the lock beside the database ``url`` names while the block runs; DatabaseInUse if
    another process holds it."""
    database = database_file(url)
    if database is None:
        yield
        return
    lock_path = database.with_name(database.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip() or "unknown"
            raise DatabaseInUse(
                f"BRIDGE_DATABASE_URL: {database} is in use by another `bridge run` (process {holder}); "
                "one process runs the embedded mode on a database"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        # Closing lets go of the lock. The file stays: removing it could split a later pair of
        # processes over two files of the same name.
        os.close(fd)
