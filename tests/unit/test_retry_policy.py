"""Retry policies: backoff, jitter bounds, limits, SSL's spaced schedule and daily cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bridge.domain.jobs import StepKind
from bridge.domain.retry import DEFAULT_POLICIES, RetryPolicy

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def no_jitter() -> float:
    return 0.5  # the middle of the jitter range: no spread


def test_backoff_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=10, max_total_s=10**6, base_delay_s=2, max_delay_s=20)
    assert [policy.delay_before(n, no_jitter) for n in range(1, 6)] == [2, 4, 8, 16, 20]


def test_jitter_stays_within_its_bounds() -> None:
    policy = RetryPolicy(max_attempts=10, max_total_s=10**6, base_delay_s=10, jitter=0.25)
    assert policy.delay_before(1, lambda: 0.0) == 7.5
    assert policy.delay_before(1, lambda: 1.0) == 12.5


def test_gives_up_after_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, max_total_s=10**6)
    assert policy.next_attempt_at(attempts_made=2, first_attempt_at=T0, now=T0, rand=no_jitter) is not None
    assert policy.next_attempt_at(attempts_made=3, first_attempt_at=T0, now=T0, rand=no_jitter) is None


def test_gives_up_past_the_total_time() -> None:
    policy = RetryPolicy(max_attempts=100, max_total_s=60, base_delay_s=10)
    now = T0 + timedelta(seconds=55)
    assert policy.next_attempt_at(attempts_made=1, first_attempt_at=T0, now=now, rand=no_jitter) is None


def test_the_scale_shrinks_delays_and_limits_alike() -> None:
    policy = RetryPolicy(max_attempts=5, max_total_s=100, base_delay_s=10)
    at = policy.next_attempt_at(attempts_made=1, first_attempt_at=T0, now=T0, scale=0.01, rand=no_jitter)
    assert at == T0 + timedelta(seconds=0.1)
    late = T0 + timedelta(seconds=0.95)  # past 100 s x 0.01 once the next delay is added
    assert policy.next_attempt_at(attempts_made=1, first_attempt_at=T0, now=late, scale=0.01, rand=no_jitter) is None


def test_ssl_waits_minutes_then_hours() -> None:
    ssl = DEFAULT_POLICIES[StepKind.ISSUE_SSL]
    delays = [ssl.delay_before(n, no_jitter) for n in range(1, 9)]
    assert delays == [600, 1800, 3600, 10800, 21600, 43200, 86400, 86400]


def test_ssl_following_its_own_schedule_never_exceeds_five_attempts_a_day() -> None:
    ssl = DEFAULT_POLICIES[StepKind.ISSUE_SSL]
    attempts = [T0]
    while (
        at := ssl.next_attempt_at(
            attempts_made=len(attempts), first_attempt_at=T0, now=attempts[-1], recent_attempts=attempts, rand=no_jitter
        )
    ) is not None:
        attempts.append(at)
    assert len(attempts) == ssl.max_attempts
    for start in attempts:
        assert sum(start <= a < start + timedelta(days=1) for a in attempts) <= 5


def test_ssl_daily_cap_pushes_the_next_attempt_to_the_next_day() -> None:
    ssl = DEFAULT_POLICIES[StepKind.ISSUE_SSL]
    assert ssl.daily_cap is not None
    recent = [T0 + timedelta(minutes=m) for m in range(ssl.daily_cap)]
    now = recent[-1]
    at = ssl.next_attempt_at(
        attempts_made=ssl.daily_cap, first_attempt_at=T0, now=now, recent_attempts=recent, rand=no_jitter
    )
    assert at is not None and at >= recent[0] + timedelta(days=1)


def test_every_step_kind_has_a_policy() -> None:
    assert set(DEFAULT_POLICIES) == set(StepKind)
