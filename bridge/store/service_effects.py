"""What the other jobs of a service made on the panel, for a step that meets it there.

A service provisioned again (re-created after a success, or a changed order after a
failure) meets on the panel what its earlier jobs made: "already exists". That is the
service's own, not a stranger's, when another job of the same service, panel and account
made a thing of that name: its step succeeded and recorded what would undo it, and nobody
has undone it since (that record is not resolved ``done``). Whether it is the same thing
the step asks for (the PHP version, the database's user and password) is for the step to
say, from the fields that differ.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, exists, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.domain.jobs import EarlierEffect, StepKind, StepStatus, effect_key, fields_that_differ
from bridge.store import tables as t
from bridge.store.crypto import SecretBox


async def made_by_another_job(
    engine: AsyncEngine,
    box: SecretBox,
    *,
    job_pk: int,
    service_id: str,
    panel: str,
    account: str,
    kind: StepKind,
    params: dict[str, Any],
) -> EarlierEffect | None:
    """The latest other job of the service that made what this step names, if any."""
    wanted = effect_key(kind, params)
    if wanted is None:
        return None
    jobs, steps, comps = t.jobs.c, t.steps.c, t.compensations.c
    in_effect = exists().where(and_(comps.step_id == steps.id, comps.status != "done"))
    query = (
        select(jobs.public_id, steps.id, steps.params)
        .select_from(t.steps.join(t.jobs, jobs.id == steps.job_id))
        .where(
            jobs.service_id == service_id,
            jobs.panel == panel,
            jobs.account_username == account,
            jobs.id != job_pk,
            steps.kind == kind.value,
            steps.status == StepStatus.SUCCEEDED,
            in_effect,
        )
        .order_by(jobs.id.desc())
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    for row in rows:
        theirs = box.decrypt_fields(row.params)
        if effect_key(kind, theirs) == wanted:
            return EarlierEffect(str(row.public_id), int(row.id), fields_that_differ(kind, params, theirs))
    return None
