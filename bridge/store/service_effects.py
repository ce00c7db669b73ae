"""What the other jobs of a service made on the panel, for a step that meets it there.

A service provisioned again (re-created after a success, or a changed order after a
failure) meets on the panel what its earlier jobs made: "already exists". That is the
service's own, not a stranger's, when another job of the same service and account made
exactly that: its step succeeded and recorded what would undo it, and nobody has undone it
since (that record is not resolved ``done``). A step that found the thing already made by
another job records no undo of its own, so only the job that made it is ever named.
"""

from __future__ import annotations

from sqlalchemy import and_, exists, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.domain.jobs import StepKind, StepStatus, effect_key
from bridge.store import tables as t


async def made_by_another_job(
    engine: AsyncEngine, *, job_pk: int, service_id: str, account: str, kind: StepKind, params: dict[str, object]
) -> str | None:
    """The public id of another job of the service that made what this step would make, if any."""
    wanted = effect_key(kind, dict(params))
    if wanted is None:
        return None
    jobs, steps, comps = t.jobs.c, t.steps.c, t.compensations.c
    in_effect = exists().where(and_(comps.step_id == steps.id, comps.status != "done"))
    query = (
        select(jobs.public_id, steps.params)
        .select_from(t.steps.join(t.jobs, jobs.id == steps.job_id))
        .where(
            jobs.service_id == service_id,
            jobs.account_username == account,
            jobs.id != job_pk,
            steps.kind == kind.value,
            steps.status == StepStatus.SUCCEEDED,
            in_effect,
        )
        .order_by(jobs.id.desc())
    )
    async with engine.connect() as conn:
        for row in await conn.execute(query):
            # The key fields are never secrets, so the stored (partly encrypted) params do.
            if effect_key(kind, dict(row.params)) == wanted:
                return str(row.public_id)
    return None
