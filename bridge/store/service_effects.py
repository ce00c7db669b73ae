"""What the other jobs of a service made on the panel, for a step that meets it there.

A service provisioned again (re-created after a success, or a changed order after a
failure) meets on the panel what its earlier jobs made: "already exists". That is the
service's own, not a stranger's, when another job of the same service, panel and account
made a thing of that name: its step succeeded and recorded what would undo it, and nobody
has undone it since (the newest such job's record is not resolved ``done``). Whether it is the same thing
the step asks for (the PHP version, the database's user and password) is for the step to
say, from the fields that differ.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bridge.domain.jobs import EarlierEffect, StepKind, StepStatus, effect_key, fields_that_differ
from bridge.store import tables as t
from bridge.store.crypto import SecretBox, SecretsUnavailable


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
    # The step's latest record decides: an admin's "done" on the job that took a thing over
    # stands, whatever older records of the jobs before it say.
    latest_record = (
        select(comps.status).where(comps.step_id == steps.id).order_by(comps.id.desc()).limit(1).scalar_subquery()
    )
    query = (
        select(jobs.public_id, steps.id, steps.params, latest_record.label("record"))
        .select_from(t.steps.join(t.jobs, jobs.id == steps.job_id))
        .where(
            jobs.service_id == service_id,
            jobs.panel == panel,
            jobs.account_username == account,
            jobs.id != job_pk,
            steps.kind == kind.value,
            steps.status == StepStatus.SUCCEEDED,
            latest_record.is_not(None),  # only steps that made something record its undo
        )
        .order_by(jobs.id.desc())
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    # The naming fields are never encrypted: compared as stored, only the newest match decrypted.
    newest = next((row for row in rows if effect_key(kind, row.params) == wanted), None)
    if newest is None or newest.record == "done":
        return None
    try:
        theirs = box.decrypt_fields(newest.params)
    except SecretsUnavailable:
        # Made under a key since retired: what it was made with cannot be told, so not the same.
        return EarlierEffect(str(newest.public_id), int(newest.id), ("password",))
    return EarlierEffect(str(newest.public_id), int(newest.id), fields_that_differ(kind, params, theirs))
