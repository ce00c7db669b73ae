"""The provisioning saga's decisions, exhaustively, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bridge.domain.jobs import JobStatus, StepKind, StepStatus
from bridge.domain.saga import Finish, RunStep, StepState, WaitUntil, next_action, resumable

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(minutes=10)
P, R, W, S, F, C = (
    StepStatus.PENDING,
    StepStatus.RUNNING,
    StepStatus.WAITING_RETRY,
    StepStatus.SUCCEEDED,
    StepStatus.FAILED,
    StepStatus.CANCELLED,
)
KINDS = [StepKind.CHECK_ACCOUNT, StepKind.ADD_DOMAIN, StepKind.ISSUE_SSL, StepKind.CREATE_DATABASE]


def steps(*statuses: StepStatus, due: dict[int, datetime] | None = None) -> list[StepState]:
    due = due or {}
    return [StepState(i, KINDS[i], status, due.get(i)) for i, status in enumerate(statuses)]


def test_a_new_job_runs_its_first_step() -> None:
    assert next_action(steps(P, P, P, P), NOW) == RunStep(0)


def test_steps_run_in_order() -> None:
    assert next_action(steps(S, P, P, P), NOW) == RunStep(1)


def test_a_step_left_running_is_run_again_to_be_reconciled() -> None:
    assert next_action(steps(S, R, P, P), NOW) == RunStep(1)


def test_a_step_waiting_for_its_retry_holds_the_job_back() -> None:
    assert next_action(steps(S, W, P, P, due={1: LATER}), NOW) == WaitUntil(LATER)


def test_a_due_retry_runs() -> None:
    assert next_action(steps(S, W, P, P, due={1: NOW}), NOW) == RunStep(1)


def test_a_failed_step_fails_the_job() -> None:
    assert next_action(steps(S, S, S, F), NOW) == Finish(JobStatus.FAILED)


def test_a_cancelled_step_ends_the_job_cancelled() -> None:
    assert next_action(steps(S, C, C, C), NOW) == Finish(JobStatus.CANCELLED)


def test_ssl_waiting_does_not_hold_the_order_back() -> None:
    assert next_action(steps(S, S, W, P, due={2: LATER}), NOW) == RunStep(3)


def test_the_order_succeeds_with_ssl_deferred() -> None:
    assert next_action(steps(S, S, W, S, due={2: LATER}), NOW) == Finish(JobStatus.SUCCEEDED, (2,), LATER)


def test_a_due_deferred_step_runs_after_the_rest() -> None:
    assert next_action(steps(S, S, W, S, due={2: NOW}), NOW) == RunStep(2)


def test_a_finally_failed_ssl_does_not_fail_the_order() -> None:
    assert next_action(steps(S, S, F, S), NOW) == Finish(JobStatus.SUCCEEDED)


def test_without_deferral_ssl_holds_the_job_and_its_failure_fails_it() -> None:
    assert next_action(steps(S, S, W, P, due={2: LATER}), NOW, frozenset()) == WaitUntil(LATER)
    assert next_action(steps(S, S, F, S), NOW, frozenset()) == Finish(JobStatus.FAILED)


def test_everything_done_succeeds() -> None:
    assert next_action(steps(S, S, S, S), NOW) == Finish(JobStatus.SUCCEEDED)


def test_retry_reopens_failed_and_cancelled_steps_only() -> None:
    assert resumable(steps(S, S, F, C)) == [2, 3]
