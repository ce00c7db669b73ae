"""What each step kind does on the panel, and how it reconciles an unknown outcome.

The panel has no idempotency keys, so a mutating step that may have taken effect
(``in_flight``: a timeout, a lost connection, a worker killed after sending, or an
answer that can hide a half-done change) reads the panel back before sending again.
"Already exists" is success only when the read-back shows this job's own earlier
attempt, or what another job of the same service made and nobody undid (a service
provisioned again); otherwise it is a conflict for a human. The panel works a call
through even after its client gave up, so an earlier attempt can land after the
read-back found nothing: a step that was in flight reads back once more before it
calls "already exists" a conflict.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from bridge.domain.jobs import EarlierEffect, StepKind
from bridge.domain.outcomes import (
    AlreadyExists,
    FailureReason,
    PanelOutcome,
    PermanentFailure,
    RetryableFailure,
    Succeeded,
    UnknownOutcome,
)
from bridge.worker.panel_access import PanelAccess

Verdict = Literal["succeeded", "retry", "failed"]


@dataclass(frozen=True)
class StepOutcome:
    verdict: Verdict
    message: str
    # Short name for the attempt record and metrics.
    label: str
    result: dict[str, Any] | None = None
    compensation: str | None = None
    # True when the panel may hold an effect of this step that the bridge has not confirmed.
    in_flight: bool = False
    reason: FailureReason | None = None
    # The step of another job of the service that made what this one found: its undo moves here.
    taken_over_from_step: int | None = None


def _reconciled(what: str, result: dict[str, Any], undo: str) -> StepOutcome:
    """An earlier attempt with no clear answer took effect: the read-back found ``what``."""
    return StepOutcome(
        "succeeded",
        f"{what} found on the panel after an earlier attempt with no clear answer",
        "reconciled",
        result=result,
        compensation=undo,
    )


def _from_failure(outcome: PanelOutcome, *, in_flight: bool) -> StepOutcome:
    if isinstance(outcome, RetryableFailure):
        return StepOutcome("retry", outcome.message, "retryable", in_flight=in_flight)
    if isinstance(outcome, UnknownOutcome):
        return StepOutcome("retry", outcome.message, "unknown", in_flight=True)
    if isinstance(outcome, PermanentFailure):
        return StepOutcome("failed", outcome.message, "permanent", in_flight=in_flight, reason=outcome.reason)
    raise AssertionError(f"not a failure: {outcome!r}")


@dataclass
class Step:
    kind: StepKind
    params: dict[str, Any]
    in_flight: bool
    job_type: str = "service.create"
    extra: dict[str, Any] = field(default_factory=dict)
    # Which other job of the service made what this step makes, if one did (asked only when
    # the panel says it is there already).
    made_by_another_job: Callable[[], Awaitable[EarlierEffect | None]] | None = None


def _taken_over(step: Step, earlier: EarlierEffect, what: str, found: StepOutcome) -> StepOutcome:
    """``found`` (the read-back shows it on this account) as what another job of the service made."""
    if earlier.differs:
        conflict = _conflict(
            f"{what} is on the account already, made by job {earlier.job_id} of this service with another "
            f"{', '.join(earlier.differs)} than this order asks for."
        )
        return replace(conflict, in_flight=step.in_flight)
    return replace(
        found,
        message=f"{what} is on the account already, made by job {earlier.job_id} of this service: taken over",
        taken_over_from_step=earlier.step_id,
    )


async def _whose(step: Step, what: str, found: StepOutcome) -> StepOutcome:
    """What a read-back after an attempt with no clear answer found: this job's own (that attempt
    landed), unless another job of the service made it (the attempt then could not have)."""
    if found.verdict != "succeeded" or step.made_by_another_job is None:
        return found
    earlier = await step.made_by_another_job()
    return found if earlier is None else _taken_over(step, earlier, what, found)


async def _made_for_the_service(
    step: Step, what: str, read_back: Callable[[], Awaitable[StepOutcome | None]]
) -> StepOutcome | None:
    """After "already exists" for what this job did not make: taken over when another job of the
    service made it and the panel shows it on this account; None when no job of the service
    made it, or it is not on this account (someone else's, whatever the records say)."""
    if step.made_by_another_job is None or (earlier := await step.made_by_another_job()) is None:
        return None
    found = await read_back()
    if found is None:
        return None
    # This attempt, answered "already exists", left nothing behind: the step is as unsure as it was.
    if found.verdict == "retry":
        return replace(found, in_flight=step.in_flight)  # the panel could not say
    if found.verdict == "failed" and not earlier.differs:
        return replace(found, in_flight=step.in_flight)  # only half of it is there
    # Made differently (say another database user, so the read-back for this order's finds only
    # half): the difference is what to name.
    return _taken_over(step, earlier, what, found)


async def check_account(step: Step, panel: PanelAccess) -> StepOutcome:
    info = await panel.read(lambda c, creds: c.account_info(creds))
    if not isinstance(info.outcome, Succeeded):
        return _from_failure(info.outcome, in_flight=False)
    limits = info.outcome.data.get("limits", {})
    for kind, needed_key, setting in (
        ("domain", "domains_needed", "domain_limit"),
        ("db", "databases_needed", "db_limit"),
    ):
        needed = int(step.params.get(needed_key) or 0)
        limit = limits.get(kind, {}).get("limit")
        used = int(limits.get(kind, {}).get("used") or 0)
        if needed and limit is not None and used + needed > limit:
            # Looks full: count as the panel will (one more read, only then).
            counted = await _counted_as_the_panel_does(kind, step.params, panel)
            if isinstance(counted, StepOutcome):
                return counted
            if counted is not None:
                used, needed = counted
        if needed and limit is not None and used + needed > limit:
            what = "domains" if kind == "domain" else "databases (the panel counts database users)"
            return StepOutcome(
                "failed",
                f"The account {panel.account} has used {used} of its {limit} {what} ({setting}); "
                f"this order needs {needed} more. Raise the package's {setting} or free some, then retry.",
                "limit",
                reason=FailureReason.LIMIT_EXCEEDED,
            )
    domain = step.params.get("domain")
    if domain:
        listed = await panel.read(lambda c, creds: c.domain_list(creds))
        if not isinstance(listed.outcome, Succeeded):
            return _from_failure(listed.outcome, in_flight=False)
        if not _find_domain(listed.outcome, domain):
            return StepOutcome(
                "failed",
                f"The domain {domain} is not on account {panel.account}; add it before issuing SSL.",
                "not_found",
                reason=FailureReason.NOT_FOUND,
            )
    return StepOutcome("succeeded", "account and limits confirmed", "succeeded", result={"limits": limits})


async def _counted_as_the_panel_does(
    kind: str, params: dict[str, Any], panel: PanelAccess
) -> tuple[int, int] | StepOutcome | None:
    """(used, needed) for ``kind`` ("domain" or "db") counted closer than the account's figures
    allow, a failure if the panel could not say, or None for no closer count (a job planned
    before these checks)."""
    if kind == "domain":
        adding = params.get("domain_to_add")
        return None if not adding else await _domains_counted_against_the_limit(adding, panel)
    users = params.get("database_users")
    if users is None:
        return None
    listed = await panel.read(lambda c, creds: c.database_userlist(creds))
    if not isinstance(listed.outcome, Succeeded):
        return _from_failure(listed.outcome, in_flight=False)
    there = set(listed.outcome.data.get("users", []))
    # A user already there takes no new place (a service provisioned again: create_database
    # then says whose it is).
    return len(there), sum(1 for user in users if f"{panel.account}_{user}" not in there)


async def _domains_counted_against_the_limit(domain: str, panel: PanelAccess) -> tuple[int, int] | StepOutcome:
    """(domains used, domains needed) as the panel's add_domain counts them against domain_limit.

    The account's ``domain_used`` counts subdomains too, but add_domain holds a subdomain (a
    name of more than two labels whose last two are a domain of the account) to the package's
    subdomain limit instead, and counts only domains against domain_limit. Read only when the
    account looks full, so the usual order costs no extra call.
    """
    listed = await panel.read(lambda c, creds: c.domain_list(creds))
    if not isinstance(listed.outcome, Succeeded):
        return _from_failure(listed.outcome, in_flight=False)
    names = {str(entry.get("domain", "")).lower() for entry in listed.outcome.data.get("domains", [])}

    def is_subdomain(name: str) -> bool:
        labels = name.split(".")
        return len(labels) > 2 and ".".join(labels[-2:]) in names

    used = sum(1 for name in names if not is_subdomain(name))
    # One already there takes no new place (add_domain then says whose it is).
    needed = 0 if domain in names or is_subdomain(domain) else 1
    return used, needed


def _find_domain(outcome: Succeeded, domain: str) -> dict[str, Any] | None:
    for entry in outcome.data.get("domains", []):
        if str(entry.get("domain", "")).lower() == domain:
            return dict(entry)
    return None


_DOMAIN_UNDO = "remove domain {domain} (panel id {id}) from account {account}"


async def _domain_read_back(domain: str, panel: PanelAccess) -> StepOutcome | None:
    """Reconciled if the panel has the domain, a failure if it cannot say, None if it has not."""
    listed = await panel.read(lambda c, creds: c.domain_list(creds))
    if not isinstance(listed.outcome, Succeeded):
        return _from_failure(listed.outcome, in_flight=True)
    found = _find_domain(listed.outcome, domain)
    if found is None:
        return None
    return _reconciled(
        domain,
        {"domain_id": found.get("id")},
        _DOMAIN_UNDO.format(domain=domain, id=found.get("id"), account=panel.account),
    )


async def add_domain(step: Step, panel: PanelAccess) -> StepOutcome:
    domain = step.params["domain"]
    if step.in_flight and (found := await _domain_read_back(domain, panel)) is not None:
        return await _whose(step, f"the domain {domain}", found)
    sent = await panel.mutate(
        "add_domain",
        lambda c, creds: c.add_domain(creds, domain, step.params["php_version"], step.params["path"]),
    )
    outcome = sent.outcome
    if isinstance(outcome, Succeeded):
        domain_id = outcome.data.get("domain_id")
        return StepOutcome(
            "succeeded",
            outcome.message,
            "succeeded",
            result={"domain_id": domain_id},
            compensation=_DOMAIN_UNDO.format(domain=domain, id=domain_id, account=panel.account),
        )
    if isinstance(outcome, AlreadyExists):
        if step.in_flight and (found := await _domain_read_back(domain, panel)) is not None:
            return await _whose(step, f"the domain {domain}", found)  # the earlier attempt landed after the read-back
        if (
            mine := await _made_for_the_service(step, f"the domain {domain}", lambda: _domain_read_back(domain, panel))
        ) is not None:
            return mine
        return _conflict(f"The domain {domain} already exists on the panel and was not added by this order.")
    if _refused_before_any_change(outcome):
        return _from_failure(outcome, in_flight=step.in_flight)
    # The panel edits web-server configuration before it saves the domain: any other failure may be half-done.
    return _from_failure(outcome, in_flight=True)


def _refused_before_any_change(outcome: PanelOutcome) -> bool:
    """The panel checks its input and the package's limits before add_domain and db_make change
    anything: such a refusal leaves the step exactly as unsure as it was."""
    return isinstance(outcome, PermanentFailure) and outcome.reason in (
        FailureReason.INVALID_INPUT,
        FailureReason.LIMIT_EXCEEDED,
    )


def _conflict(message: str) -> StepOutcome:
    return StepOutcome(
        "failed",
        f"{message} Check who owns it; remove it on the panel or change the order, then retry.",
        "conflict",
        reason=FailureReason.CONFLICT,
    )


async def issue_ssl(step: Step, panel: PanelAccess) -> StepOutcome:
    # No call reads a certificate back, and issuing twice is harmless (only quota), so no reconcile.
    domain = step.params["domain"]
    sent = await panel.mutate("domain_issue_ssl", lambda c, creds: c.domain_issue_ssl(creds, domain))
    if isinstance(sent.outcome, Succeeded):
        return StepOutcome("succeeded", sent.outcome.message, "succeeded", result={"certificate": "issued"})
    if isinstance(sent.outcome, AlreadyExists):
        return StepOutcome("succeeded", sent.outcome.message, "succeeded", result={"certificate": "present"})
    return _from_failure(sent.outcome, in_flight=False)


async def _database_read_back(db_full: str, user_full: str, undo: str, panel: PanelAccess) -> StepOutcome | None:
    """Reconciled if the panel has both, a conflict if half, a failure if it cannot say, None if neither."""
    dbs = await panel.read(lambda c, creds: c.database_list(creds))
    users = await panel.read(lambda c, creds: c.database_userlist(creds))
    for answer in (dbs, users):
        if not isinstance(answer.outcome, Succeeded):
            return _from_failure(answer.outcome, in_flight=True)
    assert isinstance(dbs.outcome, Succeeded) and isinstance(users.outcome, Succeeded)
    has_db = db_full in dbs.outcome.data.get("databases", [])
    has_user = user_full in users.outcome.data.get("users", [])
    if has_db and has_user:
        return _reconciled(
            f"{db_full} and {user_full}",
            {"database": db_full, "user": user_full},
            undo,
        )
    if has_db or has_user:
        return _conflict(
            f"Only half of the database exists on the panel ({db_full if has_db else user_full}): "
            "the panel's db_make is not atomic."
        )
    return None


async def create_database(step: Step, panel: PanelAccess) -> StepOutcome:
    name, user, password = step.params["name"], step.params["user"], step.params["password"]
    db_full, user_full = f"{panel.account}_{name}", f"{panel.account}_{user}"
    undo = f"drop database {db_full} and database user {user_full} from account {panel.account}"
    if step.in_flight and (found := await _database_read_back(db_full, user_full, undo, panel)) is not None:
        return await _whose(step, f"the database {db_full}", found)
    sent = await panel.mutate("db_make", lambda c, creds: c.db_make(creds, name, user, password))
    if isinstance(sent.outcome, Succeeded):
        return StepOutcome(
            "succeeded",
            sent.outcome.message,
            "succeeded",
            result={"database": db_full, "user": user_full},
            compensation=undo,
        )

    def read_back() -> Awaitable[StepOutcome | None]:
        return _database_read_back(db_full, user_full, undo, panel)

    # The panel checks its database limit before it looks for the database: a full account
    # says "limit exceeded" for a database it already has.
    limited = isinstance(sent.outcome, PermanentFailure) and sent.outcome.reason is FailureReason.LIMIT_EXCEEDED
    taken = sent.outcome if isinstance(sent.outcome, AlreadyExists) else None
    if taken is not None or limited:
        if step.in_flight and (found := await read_back()) is not None:
            # The earlier attempt landed after the read-back (or half of it did).
            return await _whose(step, f"the database {db_full}", found)
        if taken is not None and taken.first_part_done:
            return _user_taken(db_full, user_full, panel.account)  # the database is this attempt's
        if (mine := await _made_for_the_service(step, f"the database {db_full}", read_back)) is not None:
            return mine
    if taken is not None:
        return _conflict(f"The database {db_full} or user {user_full} already exists and was not made by this order.")
    if _refused_before_any_change(sent.outcome):
        return _from_failure(sent.outcome, in_flight=step.in_flight)
    return _from_failure(sent.outcome, in_flight=True)


def _user_taken(db_full: str, user_full: str, account: str) -> StepOutcome:
    """db_make made the database, then found a user of that name it had not made: a conflict,
    and the database this order made is recorded, to be dropped before the step runs again."""
    return StepOutcome(
        "failed",
        f"The database user {user_full} already exists on the panel and was not made by this order; "
        f"the panel made the database {db_full} before it found that out. Remove that user if nothing "
        "needs it, drop the database and mark its compensation record done, then retry.",
        "conflict",
        compensation=f"drop database {db_full} from account {account} (made before the panel refused its user)",
        reason=FailureReason.CONFLICT,
    )


def cron_line(params: dict[str, Any]) -> str:
    return " ".join(params[k] for k in ("minute", "hour", "day", "month", "weekday", "command"))


async def _cron_read_back(line: str, undo: str, panel: PanelAccess) -> StepOutcome | None:
    """Reconciled if the panel has the exact line, a failure if it cannot say, None if it has not."""
    found = await panel.read(lambda c, creds: c.cronjob_list(creds, line))
    if isinstance(found.outcome, Succeeded):
        return _reconciled(
            "cron job",
            {"line_number": found.outcome.data.get("line_number")},
            undo,
        )
    if isinstance(found.outcome, PermanentFailure) and found.outcome.reason is FailureReason.NOT_FOUND:
        return None
    return _from_failure(found.outcome, in_flight=True)


async def add_cron_job(step: Step, panel: PanelAccess) -> StepOutcome:
    p = step.params
    line = cron_line(p)
    undo = f"delete cron job '{line}' from account {panel.account}"
    if step.in_flight and (found := await _cron_read_back(line, undo, panel)) is not None:
        return await _whose(step, "the cron job", found)
    sent = await panel.mutate(
        "cronjob_add",
        lambda c, creds: c.cronjob_add(creds, p["minute"], p["hour"], p["day"], p["month"], p["weekday"], p["command"]),
    )
    if isinstance(sent.outcome, Succeeded):
        return StepOutcome("succeeded", sent.outcome.message, "succeeded", result={"line": line}, compensation=undo)
    if isinstance(sent.outcome, AlreadyExists):
        if step.in_flight and (found := await _cron_read_back(line, undo, panel)) is not None:
            return await _whose(step, "the cron job", found)  # the earlier attempt landed after the read-back
        if (
            mine := await _made_for_the_service(step, "the cron job", lambda: _cron_read_back(line, undo, panel))
        ) is not None:
            return mine
        return _conflict(
            f"The panel says a cron job like '{line}' already exists (it compares by substring) "
            "and this order did not add it."
        )
    return _from_failure(sent.outcome, in_flight=True)


EXECUTORS: dict[StepKind, Callable[[Step, PanelAccess], Awaitable[StepOutcome]]] = {
    StepKind.CHECK_ACCOUNT: check_account,
    StepKind.ADD_DOMAIN: add_domain,
    StepKind.ISSUE_SSL: issue_ssl,
    StepKind.CREATE_DATABASE: create_database,
    StepKind.ADD_CRON_JOB: add_cron_job,
}
