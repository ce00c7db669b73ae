"""One mutating call at a time per panel server, across every worker.

The panel has no locks: two calls that rewrite its web-server configuration at
once can lose a mapping. With PostgreSQL a session-level advisory lock keyed by
the panel's name serialises workers on any machine (a worker that dies drops its
connection and so its lock); in the embedded mode one process runs every worker,
so an asyncio lock is enough. Within a process an asyncio lock is taken first,
so only one database connection per process waits on the advisory lock, and a
process whose workers queue for the same panel hands the lock from one to the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.store.driver import driver_connection

# Advisory-lock namespaces of the bridge (first key of the two-key form): one gate for
# mutating calls, one for calls whose credentials are not yet proven (a failed login
# counts towards the panel's firewall ban; it may run beside a mutation).
MUTATIONS = 0x6272  # "br"
UNPROVEN = 0x626C  # "bl"

# The wait for the advisory lock is a wait for a turn, as long as the calls ahead take (a
# certificate issuance takes minutes): not bounded by the connection's command timeout.
_TURN_WAIT_S = float("inf")

# Unbounded, the wait would also outlast a connection lost without a word (packets dropped,
# no reset ever arriving): the answer granting the lock would never come, while the job's
# lease is renewed. So, this often, another connection asks the server whether the waiting
# session still waits; two answers of "no" (or no answer) in a row end the wait.
WAIT_CHECK_S = 30.0


class GateWaitLost(Exception):
    """The session waiting for the panel's gate stopped waiting on the server: nothing was sent."""


def panel_lock_key(panel: str) -> int:
    """A stable signed 32-bit key for ``panel``."""
    unsigned = zlib.crc32(panel.encode())
    return unsigned - (1 << 32) if unsigned >= (1 << 31) else unsigned


@dataclass
class _Turn:
    """The gate of one panel within this process."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0
    # While this process holds the panel's advisory lock: the connection holding it.
    held: contextlib.AsyncExitStack | None = None
    driver: asyncpg.Connection | None = None
    streak: int = 0


class PanelGate:
    # How many calls in a row one process may make while another's workers may be waiting.
    MAX_STREAK = 8

    def __init__(self, engine: AsyncEngine | None, *, wait_check_s: float = WAIT_CHECK_S) -> None:
        """``engine`` is the PostgreSQL engine, or None in the embedded mode."""
        self._engine = engine
        self._wait_check_s = wait_check_s
        self._turns: defaultdict[tuple[int, str], _Turn] = defaultdict(_Turn)
        # Advisory-lock acquisitions (fewer than calls when turns are handed on); tests read it.
        self.acquisitions = 0
        self._cleanup: set[asyncio.Future[None]] = set()

    def mutation(self, panel: str) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection | None]:
        """Hold the panel's gate for mutating calls (see :meth:`_turn`)."""
        return self._turn(MUTATIONS, panel)

    def unproven(self, panel: str) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection | None]:
        """Hold the panel's gate for calls with credentials not yet proven, so that however many
        jobs with bad credentials arrive at once, each sees the breaker the one before it left."""
        return self._turn(UNPROVEN, panel)

    @contextlib.asynccontextmanager
    async def _turn(self, namespace: int, panel: str) -> AsyncIterator[asyncpg.Connection | None]:
        """Hold one of the panel's gates; yields the driver connection holding the lock (None in the embedded mode).

        No transaction is open on it, so the caller's last checks before sending take one
        round trip. When more of this process's workers wait for the same panel, the lock
        is handed straight on to the next (up to MAX_STREAK calls), saving the unlock, the
        lock and the wake-up of another process between two calls.
        """
        turn = self._turns[(namespace, panel)]
        turn.waiting += 1
        try:
            await turn.lock.acquire()
        except BaseException:
            # Cancelled while queued: a holder may have kept the lock for this worker.
            cleanup = asyncio.ensure_future(self._let_go_if_idle(turn, namespace, panel))
            self._cleanup.add(cleanup)
            cleanup.add_done_callback(self._cleanup.discard)
            raise
        finally:
            turn.waiting -= 1
        try:
            if self._engine is None:
                yield None
                return
            ok = False
            try:
                yield await self._hold(turn, namespace, panel)
                ok = True
            finally:
                turn.streak += 1
                if not ok or turn.waiting == 0 or turn.streak >= self.MAX_STREAK:
                    await self._let_go(turn, namespace, panel)
        finally:
            turn.lock.release()

    async def _hold(self, turn: _Turn, namespace: int, panel: str) -> asyncpg.Connection:
        if turn.driver is not None:
            if not turn.driver.is_closed():
                return turn.driver
            # The session that held the lock is gone (the server ended it, say on a restart), and
            # the lock with it: take it again before anything is sent.
            await self._let_go(turn, namespace, panel)
        assert self._engine is not None
        stack = contextlib.AsyncExitStack()
        driver = await stack.enter_async_context(driver_connection(self._engine))
        try:
            await self._lock(driver, namespace, panel_lock_key(panel))
        except BaseException:
            # Interrupted, the lock may have been granted all the same: a connection that might
            # hold it must not go back to the pool, so it is closed (its session ends, and the lock).
            driver.terminate()
            await stack.aclose()
            raise
        self.acquisitions += 1
        turn.held, turn.driver, turn.streak = stack, driver, 0
        return driver

    async def _lock(self, driver: asyncpg.Connection, namespace: int, key: int) -> None:
        """Wait for the advisory lock as long as the server says this session waits for it."""
        pid = driver.get_server_pid()
        waiting = asyncio.ensure_future(
            driver.execute("SELECT pg_advisory_lock($1, $2)", namespace, key, timeout=_TURN_WAIT_S)
        )
        silent = 0
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=self._wait_check_s)
                if done:
                    await waiting
                    return
                silent = 0 if await self._still_waiting(pid) else silent + 1
                if silent >= 2:
                    # Granted with the answer lost, perhaps: end that session, so its lock goes too.
                    await self._end_session(pid)
                    raise GateWaitLost(f"the database session {pid} waiting for the panel's gate stopped waiting")
        finally:
            # Not awaited: the caller closes the connection, which ends the statement for good.
            waiting.cancel()

    async def _still_waiting(self, pid: int) -> bool:
        """Whether the server says session ``pid`` is waiting for a lock (False if it cannot say)."""
        assert self._engine is not None
        try:
            async with asyncio.timeout(self._wait_check_s), driver_connection(self._engine) as check:
                return bool(
                    await check.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid)
                )
        except Exception:
            return False

    async def _end_session(self, pid: int) -> None:
        assert self._engine is not None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._wait_check_s), driver_connection(self._engine) as other:
                await other.execute("SELECT pg_terminate_backend($1)", pid)

    async def _let_go_if_idle(self, turn: _Turn, namespace: int, panel: str) -> None:
        async with turn.lock:
            if turn.waiting == 0:
                await self._let_go(turn, namespace, panel)

    async def _let_go(self, turn: _Turn, namespace: int, panel: str) -> None:
        stack, driver = turn.held, turn.driver
        turn.held, turn.driver = None, None
        if stack is None or driver is None:
            return
        async with stack:
            # A broken connection has lost its session, and the lock with it.
            if not driver.is_closed():
                try:
                    await driver.execute("SELECT pg_advisory_unlock($1, $2)", namespace, panel_lock_key(panel))
                except BaseException:
                    driver.terminate()  # as above: never pooled while it may hold the lock
                    raise
