"""The provisioning saga: given the steps' states, what the job does next. No I/O.

Steps run in order. A step waiting for its retry holds the job back, except a
deferrable step (SSL issuance): that one waits on its own schedule while the rest
go on, and once everything else has succeeded the job is ``succeeded`` with the
step listed as deferred.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from bridge.domain.jobs import DEFERRABLE_KINDS, REOPENED_BY_RETRY, JobStatus, StepKind, StepStatus


@dataclass(frozen=True)
class StepState:
    position: int
    kind: StepKind
    status: StepStatus
    next_attempt_at: datetime | None = None


@dataclass(frozen=True)
class RunStep:
    position: int


@dataclass(frozen=True)
class WaitUntil:
    """Nothing can run before ``at``; the job keeps its status."""

    at: datetime


@dataclass(frozen=True)
class Finish:
    status: JobStatus
    # Deferred steps still waiting, and when the earliest of them is due (None: nothing left to do).
    deferred: tuple[int, ...] = ()
    wake_at: datetime | None = None


NextAction = RunStep | WaitUntil | Finish


def next_action(
    steps: Sequence[StepState], now: datetime, deferrable: frozenset[StepKind] = DEFERRABLE_KINDS
) -> NextAction:
    """What to do next. ``deferrable`` is empty for jobs whose whole point is that one step."""
    ordered = sorted(steps, key=lambda s: s.position)
    if any(s.status is StepStatus.FAILED and s.kind not in deferrable for s in ordered):
        return Finish(JobStatus.FAILED)
    if any(s.status is StepStatus.CANCELLED for s in ordered):
        return Finish(JobStatus.CANCELLED)
    deferred: list[StepState] = []
    for step in ordered:
        if step.status.done or step.status is StepStatus.FAILED:
            continue
        if step.kind in deferrable and step.status is StepStatus.WAITING_RETRY:
            deferred.append(step)
            continue
        if step.status is StepStatus.WAITING_RETRY and step.next_attempt_at and step.next_attempt_at > now:
            return WaitUntil(step.next_attempt_at)
        return RunStep(step.position)
    for step in deferred:
        if step.next_attempt_at is None or step.next_attempt_at <= now:
            return RunStep(step.position)
    if deferred:
        wake = min(s.next_attempt_at for s in deferred if s.next_attempt_at is not None)
        return Finish(JobStatus.SUCCEEDED, tuple(s.position for s in deferred), wake)
    return Finish(JobStatus.SUCCEEDED)


def resumable(steps: Sequence[StepState]) -> list[int]:
    """Positions an admin retry reopens: failed and cancelled steps (never one that took effect)."""
    return [s.position for s in steps if s.status in REOPENED_BY_RETRY]
