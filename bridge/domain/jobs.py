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


# What a step makes on the panel: the fields that name the thing (another job meeting the
# same name meets the same thing), and the fields of the order it must match to be the same.
_CRON_FIELDS = ("minute", "hour", "day", "month", "weekday", "command")
_EFFECT_FIELDS: dict[StepKind, tuple[tuple[str, ...], tuple[str, ...]]] = {
    StepKind.ADD_DOMAIN: (("domain",), ("domain", "php_version", "path")),
    StepKind.CREATE_DATABASE: (("name",), ("name", "user", "password")),
    StepKind.ADD_CRON_JOB: (_CRON_FIELDS, _CRON_FIELDS),
}


def effect_key(kind: StepKind, params: dict[str, Any]) -> tuple[str, ...] | None:
    """The name of what the step makes on the panel, shared by two steps that meet the same
    thing; None for steps that make nothing a later job could meet ("already exists")."""
    fields = _EFFECT_FIELDS.get(kind)
    return None if fields is None else tuple(str(params.get(name, "")) for name in fields[0])


def fields_that_differ(kind: StepKind, mine: dict[str, Any], theirs: dict[str, Any]) -> tuple[str, ...]:
    """The names (never the values: a password is among them) of the fields two steps making
    the same thing ask for differently."""
    return tuple(name for name in _EFFECT_FIELDS[kind][1] if mine.get(name) != theirs.get(name))


@dataclass(frozen=True)
class EarlierEffect:
    """What another job of the same service made, which a step meets on the panel."""

    job_id: str
    step_id: int
    # Fields of this step's order that differ from what that job made (empty: the same thing).
    differs: tuple[str, ...] = ()


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
