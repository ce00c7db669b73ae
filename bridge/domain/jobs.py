"""Job and step statuses, step kinds, and the plan: which steps an event becomes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bridge.domain.events import OrderEvent


class JobStatus(StrEnum):
    ACCEPTED = "accepted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


UNFINISHED_JOB_STATUSES: tuple[str, ...] = (JobStatus.ACCEPTED, JobStatus.RUNNING)


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING_RETRY = "waiting_retry"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def done(self) -> bool:
        return self in (StepStatus.SUCCEEDED, StepStatus.SKIPPED)

    @property
    def open(self) -> bool:
        return self in (StepStatus.PENDING, StepStatus.RUNNING, StepStatus.WAITING_RETRY)


# Steps that have not reached an end: a cancelled job cancels them.
OPEN_STEP_STATUSES: frozenset[StepStatus] = frozenset(s for s in StepStatus if s.open)

CANCELLED_BY_ADMIN = "cancelled by an admin"

# What an admin's retry reopens: steps that did not take effect (never one that succeeded).
REOPENED_BY_RETRY: frozenset[StepStatus] = frozenset({StepStatus.FAILED, StepStatus.CANCELLED})


class StepKind(StrEnum):
    CHECK_ACCOUNT = "check_account"
    ADD_DOMAIN = "add_domain"
    ISSUE_SSL = "issue_ssl"
    CREATE_DATABASE = "create_database"
    ADD_CRON_JOB = "add_cron_job"

    @property
    def mutating(self) -> bool:
        return self is not StepKind.CHECK_ACCOUNT


# What names the one thing a step makes on the panel: the same thing, whichever job asks for it.
_EFFECT_FIELDS: dict[StepKind, tuple[str, ...]] = {
    StepKind.ADD_DOMAIN: ("domain",),
    StepKind.CREATE_DATABASE: ("name", "user"),
    StepKind.ADD_CRON_JOB: ("minute", "hour", "day", "month", "weekday", "command"),
}


def effect_key(kind: StepKind, params: dict[str, Any]) -> tuple[str, ...] | None:
    """What the step makes on the panel, as a key two steps share when they make the same thing;
    None for steps that make nothing a later job could meet ("already exists")."""
    fields = _EFFECT_FIELDS.get(kind)
    return None if fields is None else tuple(str(params.get(name, "")) for name in fields)


def redone_with(undone: frozenset[StepKind]) -> frozenset[StepKind]:
    """The step kinds a retry runs again when an admin undid steps of ``undone``'s kinds: those
    and the steps whose effect went with theirs (a domain's certificate goes with the domain)."""
    return undone | ({StepKind.ISSUE_SSL} if StepKind.ADD_DOMAIN in undone else set())


# Steps whose failure to take effect yet does not hold the order back (see CONTRACT.md §3).
DEFERRABLE_KINDS: frozenset[StepKind] = frozenset({StepKind.ISSUE_SSL})


@dataclass(frozen=True)
class PlannedStep:
    kind: StepKind
    params: dict[str, Any] = field(default_factory=dict)


def plan(event: OrderEvent) -> list[PlannedStep]:
    """The ordered steps that provision ``event``. Passwords stay in params: the store encrypts them."""
    data = event.data
    steps: list[PlannedStep] = []
    wants_domain = event.type in ("service.create", "domain.add")
    wants_ssl = event.type == "ssl.issue" or (event.type == "service.create" and data.ssl)
    databases = data.databases if event.type in ("service.create", "database.create") else []
    cron_jobs = data.cron_jobs if event.type in ("service.create", "cronjob.add") else []

    steps.append(
        PlannedStep(
            StepKind.CHECK_ACCOUNT,
            {
                "domains_needed": 1 if wants_domain else 0,
                "databases_needed": len(databases),
                "domain": data.domain if event.type == "ssl.issue" else None,
                # For a closer count when the account looks full (see the check_account step).
                "domain_to_add": data.domain if wants_domain else None,
                "database_users": [db.user for db in databases],
            },
        )
    )
    if wants_domain:
        steps.append(
            PlannedStep(
                StepKind.ADD_DOMAIN,
                {"domain": data.domain, "php_version": data.php_version, "path": data.path},
            )
        )
    if wants_ssl:
        steps.append(PlannedStep(StepKind.ISSUE_SSL, {"domain": data.domain}))
    for db in databases:
        steps.append(PlannedStep(StepKind.CREATE_DATABASE, {"name": db.name, "user": db.user, "password": db.password}))
    for cron in cron_jobs:
        steps.append(PlannedStep(StepKind.ADD_CRON_JOB, cron.model_dump()))
    return steps
