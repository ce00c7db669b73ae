"""The panel gate on PostgreSQL: one mutating call at a time across processes (each
gate here has an engine of its own, as each worker process does), the lock handed on
between a process's own waiting workers, and never kept for a worker that left."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from tcp_proxy import TcpProxy

from bridge.metrics import Metrics
from bridge.store import panel_gates
from bridge.store.database import create_engine
from bridge.worker.panel_gate import MUTATIONS, GateStopped, GateWaitLost, PanelGate, TurnTooLate, panel_lock_key


@pytest.fixture
async def engines(pg_url: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    first, second = create_engine(pg_url), create_engine(pg_url)
    yield first, second
    await first.dispose()
    await second.dispose()


async def test_calls_never_overlap_and_a_process_hands_the_lock_to_its_own_waiters(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    gates = [PanelGate(engine) for engine in engines]
    inside: list[int] = []
    order: list[int] = []
    overlaps = 0

    async def call(n: int) -> None:
        nonlocal overlaps
        # Every hand-over between the processes is clean: never a quiet period.
        async with asyncio.timeout(20), gates[n].mutation("panel-1", quiet_s=60):
            overlaps += len(inside)
            inside.append(n)
            order.append(n)
            await asyncio.sleep(0.002)
            inside.remove(n)

    await asyncio.gather(*(call(n % 2) for n in range(80)))
    assert overlaps == 0 and len(order) == 80
    # Handed on between waiting workers of one process: far fewer lock round trips than calls ...
    assert sum(g.acquisitions for g in gates) < 40
    # ... yet neither process keeps the panel for more than MAX_STREAK calls while the other waits.
    longest, run = 1, 1
    for before, after in itertools.pairwise(order):
        run = run + 1 if before == after else 1
        longest = max(longest, run)
    assert longest <= PanelGate.MAX_STREAK
    assert all(g.acquisitions >= 2 for g in gates)


async def test_a_lock_kept_for_a_worker_that_was_cancelled_is_let_go(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    here, elsewhere = PanelGate(engines[0]), PanelGate(engines[1])
    release = asyncio.Event()
    queued: asyncio.Task[None] | None = None

    async def first() -> None:
        async with here.mutation("panel-1", quiet_s=0):
            await release.wait()
            # Cancelled while queued behind us: we still see it waiting, so we keep the lock for it.
            assert queued is not None
            queued.cancel()

    async def second() -> None:
        async with here.mutation("panel-1", quiet_s=0):
            raise AssertionError("a cancelled worker must not get the gate")

    holder = asyncio.create_task(first())
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(second())
    await asyncio.sleep(0.05)
    release.set()
    await holder
    with pytest.raises(asyncio.CancelledError):
        await queued

    async def other_process() -> None:
        async with elsewhere.mutation("panel-1", quiet_s=0):
            pass

    await asyncio.wait_for(other_process(), timeout=5)


async def test_a_failed_call_lets_the_lock_go(engines: tuple[AsyncEngine, AsyncEngine]) -> None:
    here, elsewhere = PanelGate(engines[0]), PanelGate(engines[1])

    async def failing() -> None:
        async with here.mutation("panel-1", quiet_s=0):
            raise RuntimeError("the call failed")

    async def waiting() -> None:
        async with here.mutation("panel-1", quiet_s=0):
            await asyncio.sleep(0.01)

    results = await asyncio.gather(failing(), waiting(), return_exceptions=True)
    assert isinstance(results[0], RuntimeError) and results[1] is None

    async def other_process() -> None:
        async with elsewhere.mutation("panel-1", quiet_s=0):
            pass

    await asyncio.wait_for(other_process(), timeout=5)


async def test_unproven_calls_queue_among_themselves_but_not_behind_mutations(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    here, elsewhere = PanelGate(engines[0]), PanelGate(engines[1])
    # A first login elsewhere does not wait for the mutation in flight ...
    async with here.mutation("panel-1", quiet_s=0), asyncio.timeout(5), elsewhere.unproven("panel-1"):
        pass
    async with here.unproven("panel-1"):
        # ... but does wait for another call whose credentials are not proven yet.
        blocked = asyncio.create_task(_enter(elsewhere.unproven("panel-1")))
        await asyncio.sleep(0.2)
        assert not blocked.done()
    await asyncio.wait_for(blocked, timeout=5)


async def _enter(gate: contextlib.AbstractAsyncContextManager[object]) -> None:
    async with gate:
        pass


async def test_a_lock_whose_session_the_server_ended_is_taken_again_before_the_next_call(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    here, other = PanelGate(engines[0]), engines[1]
    first_in = asyncio.Event()
    second_held: list[bool] = []

    async def first() -> None:
        async with here.mutation("panel-1", quiet_s=0) as held:
            assert held is not None
            first_in.set()
            # Ended by the server (a restart, an administrator): the advisory lock goes with it.
            async with other.connect() as conn:
                await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": held.get_server_pid()})
            for _ in range(100):
                if held.is_closed():
                    break
                await asyncio.sleep(0.02)
            assert held.is_closed()

    async def second() -> None:
        await first_in.wait()
        # The call before ended cleanly: the lock was lost, not a call, so no quiet period.
        async with asyncio.timeout(10), here.mutation("panel-1", quiet_s=60) as held:
            assert held is not None and not held.is_closed()
            # Really held again: another session cannot take it now.
            async with other.connect() as conn:
                taken = await conn.execute(
                    text("SELECT pg_try_advisory_lock(:ns, :key)"), {"ns": MUTATIONS, "key": panel_lock_key("panel-1")}
                )
                second_held.append(not taken.scalar_one())

    await asyncio.gather(first(), second())
    assert second_held == [True] and here.acquisitions == 2


def set_after(seconds: float) -> asyncio.Event:
    """An event set ``seconds`` from now: entering the gate with it set shows the gate waited."""
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, event.set)
    return event


async def lose_mid_call(gate: PanelGate, *, long_call_s: float | None = None) -> None:
    """A holder killed while the panel works on its call: its session ends (as the kernel closes a
    killed process's socket) and it never runs again."""
    inside = asyncio.Event()

    async def holder() -> None:
        async with gate.mutation("panel-1", quiet_s=0) as held:
            assert held is not None
            if long_call_s is not None:
                await gate.before_long_call("panel-1", long_call_s, held)
            gate.sending("panel-1")
            inside.set()
            held.terminate()
            await asyncio.Event().wait()

    task = asyncio.create_task(holder())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_after_a_holder_that_never_let_go_the_gate_stays_closed_for_the_quiet_period(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    # The lock went with the holder's session at once, but the panel works the call through. The
    # next holder, in another process, sends nothing before the quiet period is over.
    metrics = Metrics()
    dying, survivor = PanelGate(engines[0]), PanelGate(engines[1], metrics=metrics)
    await lose_mid_call(dying)
    panel_done = set_after(0.5)  # what is left of the panel's work
    async with asyncio.timeout(10), survivor.mutation("panel-1", quiet_s=1.0):
        assert panel_done.is_set()
    quiet = {"panel": "panel-1", "reason": "holder_lost"}
    assert metrics.registry.get_sample_value("bridge_panel_quiet_periods_total", quiet) == 1
    # That holder let go cleanly: the next one goes at once, however long the quiet period.
    async with asyncio.timeout(5), dying.mutation("panel-1", quiet_s=60):
        pass


async def test_a_holder_lost_during_a_certificate_issuance_leaves_the_panel_busy_until_its_timeout(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    dying, survivor = PanelGate(engines[0]), PanelGate(engines[1])
    await lose_mid_call(dying, long_call_s=1.0)
    # The issuance's timeout (1.0 s) and then, as after any call with no answer, the quiet period.
    quiet_after_timeout = set_after(1.4)
    async with asyncio.timeout(10), survivor.mutation("panel-1", quiet_s=0.6):
        assert quiet_after_timeout.is_set()


async def test_an_answered_certificate_issuance_leaves_no_busy_time_behind(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    here, survivor = PanelGate(engines[0]), PanelGate(engines[1])
    async with here.mutation("panel-1", quiet_s=0) as held:
        await here.before_long_call("panel-1", 60, held)
        await here.after_long_call("panel-1", held)
    await lose_mid_call(here)  # during a later, ordinary call: only the quiet period is due
    async with asyncio.timeout(5), survivor.mutation("panel-1", quiet_s=0.1):
        pass


async def test_no_answer_on_a_lost_connection_is_still_kept_quiet_for_those_after(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    here, elsewhere = PanelGate(engines[0]), PanelGate(engines[1])
    async with here.mutation("panel-1", quiet_s=0) as held:
        assert held is not None
        held.terminate()  # the lock goes with the session, while the call goes unanswered
        await here.keep_quiet("panel-1", 1.0, held)
        over = set_after(0.8)
    # The next holder's own quiet period is none: only the one recorded for the panel holds it back.
    async with asyncio.timeout(10), elsewhere.mutation("panel-1", quiet_s=0):
        assert over.is_set()


async def test_a_release_that_fails_does_not_lose_the_calls_answer(pg_url: str) -> None:
    # The release waits for the row past the connection's command timeout: it fails, the
    # connection is closed (and the lock with it), and what the body returned still counts.
    impatient = create_async_engine(pg_url, connect_args={"timeout": 5, "command_timeout": 0.3})
    blocker = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        gate = PanelGate(impatient)
        answered = False
        async with gate.mutation("panel-1", quiet_s=0):
            holding_the_row = blocker.transaction()
            await holding_the_row.start()
            await blocker.execute("SELECT 1 FROM panel_gates WHERE panel = 'panel-1' FOR UPDATE")
            answered = True
        assert answered
        await holding_the_row.rollback()
    finally:
        await blocker.close()
        await impatient.dispose()


@pytest.fixture
async def sqlite_engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(sqlite_url)
    yield engine
    await engine.dispose()


async def test_in_the_embedded_mode_a_process_that_ended_holding_a_gate_keeps_the_next_one_quiet(
    sqlite_engine: AsyncEngine,
) -> None:
    crashed = PanelGate(None, local=sqlite_engine)
    async with crashed.mutation("panel-1", quiet_s=0):
        pass  # ... and the process ends without close(): killed, say
    over = set_after(0.8)
    after_a_crash = PanelGate(None, local=sqlite_engine)
    async with asyncio.timeout(10), after_a_crash.mutation("panel-1", quiet_s=1.0):
        assert over.is_set()
    # Stopped cleanly, the next process goes at once.
    await after_a_crash.close()
    async with asyncio.timeout(5), PanelGate(None, local=sqlite_engine).mutation("panel-1", quiet_s=60):
        pass


async def test_in_the_embedded_mode_a_process_that_ended_issuing_a_certificate_leaves_the_panel_busy(
    sqlite_engine: AsyncEngine,
) -> None:
    crashed = PanelGate(None, local=sqlite_engine)
    async with crashed.mutation("panel-1", quiet_s=0) as held:
        await crashed.before_long_call("panel-1", 1.0, held)
        # ... and the process ends during the issuance, without close()
    # The issuance's timeout (1.0 s), then the quiet period (0.6 s).
    quiet_after_timeout = set_after(1.4)
    after_a_crash = PanelGate(None, local=sqlite_engine)
    async with asyncio.timeout(10), after_a_crash.mutation("panel-1", quiet_s=0.6):
        assert quiet_after_timeout.is_set()


async def test_in_the_embedded_mode_an_answered_certificate_issuance_leaves_no_busy_time_behind(
    sqlite_engine: AsyncEngine,
) -> None:
    crashed = PanelGate(None, local=sqlite_engine)
    async with crashed.mutation("panel-1", quiet_s=0) as held:
        await crashed.before_long_call("panel-1", 60, held)
        await crashed.after_long_call("panel-1", held)
        # ... and the process ends later, without close(): only the quiet period is due
    async with asyncio.timeout(5), PanelGate(None, local=sqlite_engine).mutation("panel-1", quiet_s=0.1):
        pass


async def test_in_the_embedded_mode_a_quiet_period_outlives_a_clean_restart(sqlite_engine: AsyncEngine) -> None:
    stopping = PanelGate(None, local=sqlite_engine)
    async with stopping.mutation("panel-1", quiet_s=0) as held:
        await stopping.keep_quiet("panel-1", 1.0, held)
    await stopping.close()
    over = set_after(0.8)
    async with asyncio.timeout(10), PanelGate(None, local=sqlite_engine).mutation("panel-1", quiet_s=0):
        assert over.is_set()


async def test_in_the_embedded_mode_a_call_cut_off_keeps_the_gate_quiet() -> None:
    gate = PanelGate(None)
    inside = asyncio.Event()

    async def cut_off() -> None:
        async with gate.mutation("panel-1", quiet_s=1.0):
            gate.sending("panel-1")
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(cut_off())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    over = set_after(0.8)
    async with asyncio.timeout(5), gate.mutation("panel-1", quiet_s=1.0):
        assert over.is_set()


@pytest.mark.parametrize("next_holder", ["in this process", "in another process"])
async def test_after_a_call_with_no_answer_whoever_holds_the_gate_next_waits(
    engines: tuple[AsyncEngine, AsyncEngine], next_holder: str
) -> None:
    metrics = Metrics()
    here = PanelGate(engines[0], metrics=metrics)
    # Handed the lock by the worker before it, or claiming it, and the quiet period, from the row.
    following = here if next_holder == "in this process" else PanelGate(engines[1])
    over = asyncio.Event()

    async def no_answer() -> None:
        async with here.mutation("panel-1", quiet_s=0) as held:
            await here.keep_quiet("panel-1", 1.0, held)
            asyncio.get_running_loop().call_later(0.8, over.set)
        # The worker that saw no answer is free at once: it records the outcome and goes on.
        assert not over.is_set()

    async def next_call() -> None:
        await asyncio.sleep(0.05)  # queued behind the call with no answer
        async with asyncio.timeout(10), following.mutation("panel-1", quiet_s=0):
            assert over.is_set()

    await asyncio.gather(no_answer(), next_call())
    quiet = {"panel": "panel-1", "reason": "no_answer"}
    assert metrics.registry.get_sample_value("bridge_panel_quiet_periods_total", quiet) == 1


async def test_the_gate_is_let_go_only_once_its_row_says_so(
    pg_url: str, engines: tuple[AsyncEngine, AsyncEngine]
) -> None:
    # Were the lock let go before the row is written, the next holder could claim the gate
    # in between, find the row still held, and keep the panel quiet for nothing.
    gate, dsn = PanelGate(engines[0]), pg_url.replace("postgresql+asyncpg", "postgresql")
    blocker, other = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    key = panel_lock_key("panel-1")
    try:
        entered, leave = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            async with gate.mutation("panel-1", quiet_s=0):
                entered.set()
                await leave.wait()

        holder = asyncio.create_task(hold())
        await entered.wait()
        letting_go = blocker.transaction()  # the row is held up here a moment
        await letting_go.start()
        await blocker.execute("SELECT 1 FROM panel_gates WHERE panel = 'panel-1' FOR UPDATE")
        leave.set()
        await asyncio.sleep(0.3)  # the holder's release is sent, and waits for the row
        assert not holder.done()
        assert not await other.fetchval("SELECT pg_try_advisory_lock($1, $2)", MUTATIONS, key)
        await letting_go.commit()
        await asyncio.wait_for(holder, timeout=5)
        assert await other.fetchval("SELECT pg_try_advisory_lock($1, $2)", MUTATIONS, key)
        assert await other.fetchval("SELECT held_by FROM panel_gates WHERE panel = 'panel-1'") is None
    finally:
        await blocker.close()
        await other.close()


async def test_a_holder_stopped_mid_call_does_not_let_the_gate_go_cleanly(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    # A worker whose shutdown grace ran out in the middle of a call: the panel works it through.
    stopping, other = PanelGate(engines[0]), PanelGate(engines[1])
    inside, panel_done = asyncio.Event(), asyncio.Event()

    async def mid_call() -> None:
        async with stopping.mutation("panel-1", quiet_s=0):
            stopping.sending("panel-1")
            inside.set()
            asyncio.get_running_loop().call_later(0.5, panel_done.set)
            await asyncio.sleep(60)

    task = asyncio.create_task(mid_call())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(10), other.mutation("panel-1", quiet_s=1.0):
        assert panel_done.is_set()


@pytest.mark.parametrize("mode", ["PostgreSQL", "embedded"])
async def test_a_holder_stopped_before_its_call_went_lets_the_gate_go_cleanly(
    engines: tuple[AsyncEngine, AsyncEngine], mode: str
) -> None:
    # Stopped while checking its lease, say: nothing of it is on the panel, so no quiet period.
    first, second = (PanelGate(engines[0]), PanelGate(engines[1])) if mode == "PostgreSQL" else (PanelGate(None),) * 2
    inside = asyncio.Event()

    async def before_the_call() -> None:
        async with first.mutation("panel-1", quiet_s=60):
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(before_the_call())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(5), second.mutation("panel-1", quiet_s=60):
        pass


async def test_the_quiet_period_is_scaled_and_a_gate_let_go_cleanly_has_none(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    scaled = PanelGate(engines[1], quiet_scale=0.001)
    for gate in (PanelGate(engines[0]), scaled):
        async with asyncio.timeout(5), gate.mutation("panel-1", quiet_s=60):
            pass
    await lose_mid_call(PanelGate(engines[0]))
    # 60 s, scaled to 0.06 s.
    async with asyncio.timeout(5), scaled.mutation("panel-1", quiet_s=60):
        pass


async def test_a_worker_waits_its_turn_however_long_the_call_ahead_of_it_takes(pg_url: str) -> None:
    # A connection gives up on a statement after its command timeout (a minute in production),
    # while the call ahead (a certificate issuance) may hold the gate for many minutes. Here the
    # timeout is 0.5 s and the call ahead takes 1.5 s: the wait is for a turn, not a slow statement.
    impatient = create_async_engine(pg_url, connect_args={"timeout": 5, "command_timeout": 0.5})
    other = create_engine(pg_url)
    try:
        # The server is asked often whether the wait goes on: it does, so the wait is not ended.
        here, elsewhere = PanelGate(impatient, wait_check_s=0.2), PanelGate(other)
        inside, answered = asyncio.Event(), asyncio.Event()

        async def slow_call_elsewhere() -> None:
            async with elsewhere.mutation("panel-1", quiet_s=0):
                inside.set()
                await asyncio.sleep(1.5)
                answered.set()

        holder = asyncio.create_task(slow_call_elsewhere())
        await inside.wait()
        async with asyncio.timeout(10), here.mutation("panel-1", quiet_s=0) as held:
            assert held is not None and answered.is_set()
        await holder
    finally:
        await impatient.dispose()
        await other.dispose()


async def test_a_wait_on_a_connection_lost_without_a_word_ends(pg_url: str) -> None:
    # Packets dropped, no reset: the answer granting the lock would never come. The server,
    # asked from another connection (lost the same way here), cannot say the session waits.
    parts = urlsplit(pg_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    through_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    engine = create_async_engine(through_proxy, connect_args={"timeout": 1, "command_timeout": 1})
    holder = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
    key = panel_lock_key("panel-1")
    try:
        await holder.execute("SELECT pg_advisory_lock($1, $2)", MUTATIONS, key)
        gate = PanelGate(engine, wait_check_s=0.3)

        async def enter() -> None:
            async with gate.mutation("panel-1", quiet_s=0):
                pass

        waiter = asyncio.create_task(enter())
        for _ in range(100):  # until the server shows the waiter waiting
            waits = await holder.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            if waits:
                break
            await asyncio.sleep(0.05)
        proxy.silence()
        await holder.execute("SELECT pg_advisory_unlock($1, $2)", MUTATIONS, key)  # granted; the answer is lost
        with pytest.raises(GateWaitLost):
            async with asyncio.timeout(10):
                await waiter
    finally:
        # The session the answer never reached holds the lock until it is ended.
        await holder.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND datname = current_database() AND query LIKE '%pg_advisory_lock%'"
        )
        await holder.close()
        await proxy.cut()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await engine.dispose()


def queue_for_a_turn(gate: PanelGate, quiet_s: float = 0, turn_by: float | None = None) -> asyncio.Task[None]:
    """A step queued for panel-1's gate that must never get its turn (the gate stops first, or
    ``turn_by`` comes)."""

    async def waiter() -> None:
        async with gate.mutation("panel-1", quiet_s=quiet_s, turn_by=turn_by):
            pytest.fail("a turn that should have been given up")

    return asyncio.create_task(waiter())


async def test_a_gate_that_stops_taking_turns_lets_its_waiters_go_and_its_holder_finish() -> None:
    gate = PanelGate(None)
    holder_inside, holder_may_end = asyncio.Event(), asyncio.Event()

    async def holder() -> str:
        async with gate.mutation("panel-1", quiet_s=0):
            holder_inside.set()
            await holder_may_end.wait()
            # No answer: whoever comes next waits a quiet period, here for good.
            await gate.keep_quiet("panel-1", 3600, None)
        return "answered"

    holding = asyncio.create_task(holder())
    await holder_inside.wait()
    queued = queue_for_a_turn(gate)  # behind the holder
    await asyncio.sleep(0.05)
    holder_may_end.set()
    await asyncio.sleep(0.05)  # the waiter has the lock now, and sleeps out the quiet period
    gate.stop_waiting()
    with pytest.raises(GateStopped):
        await asyncio.wait_for(queued, 2)
    assert await holding == "answered"
    with pytest.raises(GateStopped):  # later ones give up at once
        async with asyncio.timeout(2), gate.mutation("panel-2", quiet_s=0):
            pass


async def test_a_wait_for_another_process_ends_when_the_gate_stops_taking_turns(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    here, elsewhere = PanelGate(engines[0]), PanelGate(engines[1])
    async with elsewhere.mutation("panel-1", quiet_s=0):
        queued = queue_for_a_turn(here)  # waits for the advisory lock on the server
        await asyncio.sleep(0.2)
        here.stop_waiting()
        with pytest.raises(GateStopped):
            await asyncio.wait_for(queued, 2)
    # Nothing of it was left holding the lock: another process takes it at once.
    async with asyncio.timeout(2), PanelGate(engines[1]).mutation("panel-1", quiet_s=0):
        pass


async def test_a_gate_that_stops_taking_turns_during_a_claim_lets_the_row_go_too(
    engines: tuple[AsyncEngine, AsyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The claim is committed on the server while its answer is on the way: cut off there, the
    # row would stay claimed, and the next holder would wait a quiet period for a lost holder.
    real_claim = panel_gates.claim
    claimed = asyncio.Event()

    async def slow_answer(conn: asyncpg.Connection, panel: str, holder: str) -> float | None:
        quiet_left = await real_claim(conn, panel, holder)
        claimed.set()
        await asyncio.sleep(0.3)
        return quiet_left

    monkeypatch.setattr(panel_gates, "claim", slow_answer)
    here = PanelGate(engines[0])
    queued = queue_for_a_turn(here, quiet_s=60)
    await asyncio.wait_for(claimed.wait(), 5)
    here.stop_waiting()
    with pytest.raises(GateStopped):
        await asyncio.wait_for(queued, 5)
    monkeypatch.setattr(panel_gates, "claim", real_claim)
    metrics = Metrics()
    async with asyncio.timeout(5), PanelGate(engines[1], metrics=metrics).mutation("panel-1", quiet_s=60):
        pass
    lost = {"panel": "panel-1", "reason": "holder_lost"}
    assert metrics.registry.get_sample_value("bridge_panel_quiet_periods_total", lost) is None


def turn_within(seconds: float) -> float:
    """A ``turn_by`` that many seconds from now, on the loop's clock."""
    return asyncio.get_running_loop().time() + seconds


async def test_a_turn_not_come_in_time_is_given_up_and_the_holder_and_the_next_go_on() -> None:
    gate = PanelGate(None)
    async with gate.mutation("panel-1", quiet_s=0):  # the holder, to the end of its call
        with pytest.raises(TurnTooLate):
            await asyncio.wait_for(queue_for_a_turn(gate, turn_by=turn_within(0.2)), 2)
    # The gate is free: the turn given up left nothing holding it.
    async with asyncio.timeout(2), gate.mutation("panel-1", quiet_s=0, turn_by=turn_within(1)):
        pass


async def test_a_turn_not_come_by_the_end_of_a_quiet_period_is_given_up() -> None:
    gate = PanelGate(None)
    async with gate.mutation("panel-1", quiet_s=0):
        await gate.keep_quiet("panel-1", 3600, None)  # no answer: the panel may be busy for an hour
    with pytest.raises(TurnTooLate):
        await asyncio.wait_for(queue_for_a_turn(gate, turn_by=turn_within(0.2)), 2)
    # Only a turn that has to be waited for is given up: on a free panel it comes whatever the time.
    async with asyncio.timeout(2), gate.mutation("panel-2", quiet_s=0, turn_by=turn_within(-1)):
        pass


async def test_a_turn_waited_for_from_another_process_is_given_up_in_time_and_leaves_no_lock(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    here, elsewhere = PanelGate(engines[0]), PanelGate(engines[1])
    async with elsewhere.mutation("panel-1", quiet_s=0):
        with pytest.raises(TurnTooLate):  # waiting for the advisory lock on the server
            await asyncio.wait_for(queue_for_a_turn(here, turn_by=turn_within(0.3)), 5)
    async with asyncio.timeout(2), PanelGate(engines[1]).mutation("panel-1", quiet_s=0):
        pass
    # ... and the gate that gave a turn up takes the next one as usual.
    async with asyncio.timeout(2), here.mutation("panel-1", quiet_s=0, turn_by=turn_within(1)):
        pass


async def test_a_waiter_its_owner_cancels_as_the_gate_cuts_it_short_is_cancelled() -> None:
    gate = PanelGate(None)
    async with gate.mutation("panel-1", quiet_s=0):
        waiter = queue_for_a_turn(gate)
        await asyncio.sleep(0.05)
        gate.stop_waiting()  # the gate's cut ...
        waiter.cancel()  # ... and its owner's (the shutdown grace running out, say), at once
        with pytest.raises(asyncio.CancelledError):
            await waiter
