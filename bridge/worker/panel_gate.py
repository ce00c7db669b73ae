"""One mutating call at a time per panel server, across every worker.

The panel has no locks: two calls that rewrite its web-server configuration at
once can lose a mapping. With PostgreSQL a session-level advisory lock keyed by
the panel's name serialises workers on any machine (a worker that dies drops its
connection and so its lock); in the embedded mode one process runs every worker,
so an asyncio lock is enough. Within a process an asyncio lock is taken first,
so only one database connection per process waits on the advisory lock, and a
process whose workers queue for the same panel hands the lock from one to the next.

A call the bridge stopped waiting for (it timed out, its connection dropped, the
worker sending it died) is still worked through by the panel. So after one the
gate stays closed for a quiet period: whoever holds it next waits before its
first call. The worker that saw no answer records that; with PostgreSQL a row in
``panel_gates`` also outlives the advisory lock, so a holder that ended without
letting go is noticed by the next one, which waits the quiet period, or until
the holder's certificate issuance (minutes) would have timed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import zlib
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.metrics import Metrics
from bridge.store import panel_gates
from bridge.store.driver import driver_connection
from bridge.store.local_gates import LocalGates

log = logging.getLogger("bridge.worker")

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


class GateStopped(Exception):
    """The gate stopped taking turns (the worker began to stop) while this one waited: nothing was sent."""


class TurnTooLate(Exception):
    """The turn did not come by the time its waiter gave it (see :meth:`PanelGate.mutation`): nothing was sent."""


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
    # What this process wrote in ``panel_gates`` as the holder (mutations only).
    holder: str | None = None
    # No mutating call goes to the panel from this process before this time (the loop's clock).
    quiet_until: float = 0.0
    # Whether the holder's call has gone to the panel (see PanelGate.sending).
    sending: bool = False


class PanelGate:
    # How many calls in a row one process may make while another's workers may be waiting.
    MAX_STREAK = 8

    def __init__(
        self,
        engine: AsyncEngine | None,
        *,
        wait_check_s: float = WAIT_CHECK_S,
        quiet_scale: float = 1.0,
        metrics: Metrics | None = None,
        local: AsyncEngine | None = None,
    ) -> None:
        """``engine`` is the PostgreSQL engine, or None in the embedded mode. Quiet periods are
        multiplied by ``quiet_scale`` (BRIDGE_RETRY_DELAY_SCALE, like every other wait).
        ``local``, in the embedded mode, is its database, where the gate's row outlives the
        process: the next one learns whether it ended holding a gate (see :class:`LocalGates`)."""
        self._engine = engine
        self._local = LocalGates(local) if local is not None and engine is None else None
        self._wait_check_s = wait_check_s
        self._quiet_scale = quiet_scale
        self._metrics = metrics or Metrics()
        self._turns: defaultdict[tuple[int, str], _Turn] = defaultdict(_Turn)
        # Advisory-lock acquisitions (fewer than calls when turns are handed on); tests read it.
        self.acquisitions = 0
        self._cleanup: set[asyncio.Future[None]] = set()
        # Tasks waiting for a turn, and those the gate cut short, with what each is told (see _waiting).
        self._stopping = False
        self._waiters: set[asyncio.Task[object]] = set()
        self._cut: dict[asyncio.Task[object], type[Exception]] = {}

    def stop_waiting(self) -> None:
        """No more turns: whoever waits for one (behind a certificate issuance, a quiet period, or
        another process) gives up now with GateStopped, instead of being cut off by the shutdown
        grace and leaving its step in flight for nothing; whoever comes later gives up at once.
        The holder's call, if any, goes on."""
        self._stopping = True
        for task in self._waiters:
            self._cut_short(task, GateStopped)

    def _cut_short(self, task: asyncio.Task[object], reason: type[Exception]) -> None:
        if task in self._waiters and task not in self._cut:
            self._cut[task] = reason
            task.cancel(f"the panel gate: {reason.__name__}")

    @contextlib.contextmanager
    def _waiting(self, turn_by: float | None) -> Iterator[None]:
        """Around each wait for a turn: one that stop_waiting() cuts short raises GateStopped, one
        still waiting at ``turn_by`` (the loop's clock) raises TurnTooLate. What needs no waiting (a
        free lock, no quiet period left) goes through even after ``turn_by``: a turn won is kept."""
        if self._stopping:
            raise GateStopped()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._waiters.add(task)
        timer = None if turn_by is None else loop.call_at(turn_by, self._cut_short, task, TurnTooLate)
        try:
            yield
        except asyncio.CancelledError:
            reason = self._cut.get(task)
            if reason is None or task.uncancel() > 0:
                raise  # not ours, or its owner cancelled it too: that one wins
            raise reason() from None
        finally:
            if timer is not None:
                timer.cancel()
            self._waiters.discard(task)
            self._cut.pop(task, None)

    def mutation(
        self, panel: str, *, quiet_s: float, turn_by: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection | None]:
        """Hold the panel's gate for mutating calls (see :meth:`_turn`). If the holder before
        ended without letting go, the gate stays closed ``quiet_s`` (scaled) first. A turn that
        has not come by ``turn_by`` (the loop's clock) is given up with TurnTooLate."""
        return self._turn(MUTATIONS, panel, quiet_s, turn_by)

    async def keep_quiet(self, panel: str, quiet_s: float, locked: asyncpg.Connection | None) -> float:
        """Called inside ``panel``'s gate after a call that got no answer, which the panel may
        still be working on: whoever holds the gate next waits ``quiet_s`` (scaled) first.
        ``locked`` is the connection the gate yielded. Returns the quiet period, scaled."""
        self._metrics.panel_quiet_periods.labels(panel, "no_answer").inc()
        turn = self._turns[(MUTATIONS, panel)]
        quiet = quiet_s * self._quiet_scale
        self._quiet_for(turn, quiet)
        if self._local is not None:
            try:
                await self._local.keep_quiet(panel, quiet)  # for the process after this one, too
            except Exception as exc:
                log.warning("could not record panel %s's quiet period: %s", panel, exc.__class__.__name__)
        if locked is not None and self._engine is not None:
            try:
                if locked.is_closed():
                    # The lock went with it: another process may hold the gate already. The row
                    # still tells whoever comes after.
                    async with self._beside() as other:
                        await panel_gates.keep_quiet(other, panel, quiet)
                else:
                    await panel_gates.keep_quiet(locked, panel, quiet)
            except Exception as exc:
                # The row keeps this holder, so the next one waits a quiet period all the same.
                log.warning("could not record panel %s's quiet period: %s", panel, exc.__class__.__name__)
                turn.holder = None
        return quiet

    async def before_long_call(self, panel: str, timeout_s: float, locked: asyncpg.Connection | None) -> None:
        """Called inside ``panel``'s gate before a call that may take longer than the quiet period
        (a certificate issuance): a holder lost during it leaves the panel busy until its timeout,
        and a quiet period after that."""
        if locked is not None:
            await panel_gates.busy_for(locked, panel, timeout_s)
        elif self._local is not None:
            await self._local.busy_for(panel, timeout_s)

    async def after_long_call(self, panel: str, locked: asyncpg.Connection | None) -> None:
        """Called inside ``panel``'s gate once such a call is answered: a holder lost during a later,
        ordinary call leaves only the quiet period (best effort: left, it only makes a wait longer)."""
        try:
            if locked is not None and not locked.is_closed():
                await panel_gates.not_busy(locked, panel)
            elif locked is None and self._local is not None:
                await self._local.not_busy(panel)
        except Exception as exc:
            log.warning("could not clear panel %s's busy time: %s", panel, exc.__class__.__name__)

    def sending(self, panel: str) -> None:
        """Called inside ``panel``'s mutation gate as the call goes: stopped from now on, the holder
        may leave the panel working on it (before, stopping leaves nothing behind)."""
        self._turns[(MUTATIONS, panel)].sending = True

    def _quiet_for(self, turn: _Turn, seconds: float) -> None:
        turn.quiet_until = max(turn.quiet_until, asyncio.get_running_loop().time() + seconds)

    async def _wait_quiet(self, turn: _Turn) -> None:
        wait = turn.quiet_until - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)

    def unproven(
        self, panel: str, *, turn_by: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection | None]:
        """Hold the panel's gate for calls with credentials not yet proven, so that however many
        jobs with bad credentials arrive at once, each sees the breaker the one before it left."""
        return self._turn(UNPROVEN, panel, 0.0, turn_by)

    @contextlib.asynccontextmanager
    async def _turn(
        self, namespace: int, panel: str, quiet_s: float, turn_by: float | None
    ) -> AsyncIterator[asyncpg.Connection | None]:
        """Hold one of the panel's gates; yields the driver connection holding the lock (None in the embedded mode).

        No transaction is open on it, so the caller's last checks before sending take one
        round trip. When more of this process's workers wait for the same panel, the lock
        is handed straight on to the next (up to MAX_STREAK calls), saving the unlock, the
        lock and the wake-up of another process between two calls.
        """
        turn = self._turns[(namespace, panel)]
        turn.waiting += 1
        try:
            with self._waiting(turn_by):
                await turn.lock.acquire()
        except BaseException:
            # Cancelled while queued: a holder may have kept the lock for this worker.
            cleanup = asyncio.ensure_future(self._let_go_if_idle(turn, namespace, panel))
            self._cleanup.add(cleanup)
            cleanup.add_done_callback(self._cleanup.discard)
            raise
        finally:
            turn.waiting -= 1
        turn.sending = False
        try:
            if self._engine is None:
                if self._local is not None and namespace == MUTATIONS and turn.holder is None:
                    await self._claim_local(turn, panel, quiet_s)
                with self._waiting(turn_by):
                    await self._wait_quiet(turn)
                try:
                    yield None
                except asyncio.CancelledError:
                    if not turn.sending:
                        raise
                    # Cut off mid-call (the shutdown grace ran out, say): quiet, as after no answer.
                    quiet = quiet_s * self._quiet_scale
                    self._quiet_for(turn, quiet)
                    if self._local is not None:
                        with contextlib.suppress(Exception):
                            await self._local.keep_quiet(panel, quiet)  # for the process after this one
                    raise
                return
            ok = cancelled = False
            try:
                # The wait for the lock (in _hold) and the quiet period may be cut short, but not the
                # claim in between: cut off, it would leave the row claimed with no holder to clear it.
                driver = await self._hold(turn, namespace, panel, quiet_s, turn_by)
                with self._waiting(turn_by):
                    await self._wait_quiet(turn)
                yield driver
                ok = True
            except asyncio.CancelledError:
                # Stopped in the middle of a call: the panel works it through, so the gate is not
                # let go cleanly and the next holder waits the quiet period.
                cancelled = turn.sending
                raise
            finally:
                turn.streak += 1
                if not ok or turn.waiting == 0 or turn.streak >= self.MAX_STREAK:
                    try:
                        await self._let_go(turn, namespace, panel, cleanly=not cancelled)
                    except Exception as exc:
                        # The connection is closed, and the lock with it; the call's answer, or
                        # the body's own error, must not be lost to this one.
                        log.warning("could not let panel %s's gate go: %s", panel, exc.__class__.__name__)
        finally:
            turn.lock.release()

    async def _hold(
        self, turn: _Turn, namespace: int, panel: str, quiet_s: float, turn_by: float | None
    ) -> asyncpg.Connection:
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
            with self._waiting(turn_by):
                await self._lock(driver, namespace, panel_lock_key(panel))
        except BaseException:
            # Interrupted, the lock may have been granted all the same: a connection that might
            # hold it must not go back to the pool, so it is closed (its session ends, and the lock).
            driver.terminate()
            await stack.aclose()
            raise
        self.acquisitions += 1
        turn.held, turn.driver, turn.streak = stack, driver, 0
        if namespace == MUTATIONS:
            # Anything raised from here lets the lock go (see _turn), leaving the row as it was.
            await self._claim(turn, driver, panel, quiet_s)
        return driver

    async def _claim(self, turn: _Turn, driver: asyncpg.Connection, panel: str, quiet_s: float) -> None:
        """Write this process in ``panel_gates`` as the holder, and learn how long the panel must
        stay quiet first: what is left of a quiet period, or, if the holder before never let go,
        the quiet period (or until its certificate issuance would have timed out) from now."""
        holder = f"{socket.gethostname()}:{os.getpid()}:{driver.get_server_pid()}"[-64:]
        quiet_left = await panel_gates.claim(driver, panel, holder)
        if quiet_left is not None:
            self._quiet_for(turn, quiet_left)
        else:
            before = await panel_gates.lost_holder(driver, panel)
            # The panel works a call through past its timeout too: the quiet period comes after it.
            busy = max(before.busy_s or 0.0, 0.0)
            quiet = max(busy + quiet_s * self._quiet_scale, before.quiet_s or 0.0)
            self._holder_lost(panel, f"{before.held_by}, since {before.held_since}", quiet)
            await panel_gates.take_over(driver, panel, holder, quiet)
            self._quiet_for(turn, quiet)
        turn.holder = holder

    async def _claim_local(self, turn: _Turn, panel: str, quiet_s: float) -> None:
        """The embedded mode's first turn at ``panel`` in this process: what is left of a quiet
        period, or a whole one if the process before ended while holding the gate (after what
        was left of its certificate issuance, if it was issuing one)."""
        assert self._local is not None
        # Of this gate alone: one that stops cleanly lets go of its own marks, never another's.
        holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"[-64:]
        before = await self._local.claim(panel, holder)
        quiet_left = before.quiet_s
        if before.lost_holder is not None:
            # As with PostgreSQL: a certificate issuance may run to its timeout, the quiet period after it.
            quiet_left = max(quiet_left, before.busy_s + quiet_s * self._quiet_scale)
            self._holder_lost(panel, before.lost_holder, quiet_left)
        self._quiet_for(turn, quiet_left)
        turn.holder = holder

    def _holder_lost(self, panel: str, holder: str, quiet: float) -> None:
        log.warning(
            "the holder of panel %s's gate (%s) ended without letting go, perhaps in the middle of a call "
            "the panel is still working on: no mutating call goes to it for %.1f s",
            panel,
            holder,
            quiet,
        )
        self._metrics.panel_quiet_periods.labels(panel, "holder_lost").inc()

    async def close(self) -> None:
        """On a clean stop of the embedded mode, once no call runs: let the process's gates go."""
        if self._local is None:
            return
        for (namespace, panel), turn in self._turns.items():
            if namespace == MUTATIONS and turn.holder is not None:
                await self._local.let_go(panel, turn.holder)
                turn.holder = None

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

    @contextlib.asynccontextmanager
    async def _beside(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of its own, beside the gate's, for a short statement (bounded like a wait check)."""
        assert self._engine is not None
        async with asyncio.timeout(self._wait_check_s), driver_connection(self._engine) as other:
            yield other

    async def _still_waiting(self, pid: int) -> bool:
        """Whether the server says session ``pid`` is waiting for a lock (False if it cannot say)."""
        try:
            async with self._beside() as check:
                return bool(
                    await check.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid)
                )
        except Exception:
            return False

    async def _end_session(self, pid: int) -> None:
        with contextlib.suppress(Exception):
            async with self._beside() as other:
                await other.execute("SELECT pg_terminate_backend($1)", pid)

    async def _let_go_if_idle(self, turn: _Turn, namespace: int, panel: str) -> None:
        async with turn.lock:
            if turn.waiting == 0:
                await self._let_go(turn, namespace, panel)

    async def _let_go(self, turn: _Turn, namespace: int, panel: str, *, cleanly: bool = True) -> None:
        stack, driver, holder = turn.held, turn.driver, turn.holder
        turn.held, turn.driver, turn.holder = None, None, None
        if stack is None or driver is None:
            return
        async with stack:
            if driver.is_closed():
                # Its session is gone, and the lock with it. The row says so only if no call may
                # be in flight; otherwise it stays, and the next holder waits the quiet period.
                if cleanly and holder is not None:
                    await self._clear(panel, holder)
                return
            try:
                if holder is None or not cleanly:
                    await driver.execute(_UNLOCK, namespace, panel_lock_key(panel))
                else:
                    await panel_gates.release_and_unlock(driver, namespace, panel_lock_key(panel), panel, holder)
            except BaseException:
                driver.terminate()  # never pooled while it may hold the lock
                raise

    async def _clear(self, panel: str, holder: str) -> None:
        """Say in the row that ``holder`` let go, over a connection of its own (best effort: left
        as it is, the next holder waits a quiet period for nothing)."""
        with contextlib.suppress(Exception):
            async with self._beside() as conn:
                await panel_gates.clear(conn, panel, holder)


_UNLOCK = "SELECT pg_advisory_unlock($1, $2)"
