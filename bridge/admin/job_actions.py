"""Admin actions that the API and the page share, where more than the store is involved."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from bridge.store import admin_ops

if TYPE_CHECKING:
    from bridge.admin.params import JobFilter
    from bridge.bootstrap import Runtime

log = logging.getLogger("bridge.admin")


async def cancel_job(runtime: Runtime, job_id: str) -> dict[str, Any]:
    """Cancel a job; one no worker held is finished here, so it is counted here.

    A held job is only asked to stop (``cancel_requested``): its worker finishes and counts it.
    """
    job = await admin_ops.cancel_job(runtime.engine, job_id, policy=runtime.records.callback_policy)
    if job["status"] == "cancelled":
        runtime.metrics.jobs_finished.labels("cancelled").inc()
    return job


async def retry_failed_jobs(runtime: Runtime, filters: JobFilter) -> dict[str, Any]:
    """Retry the failed jobs that match (see :func:`admin_ops.retry_failed_jobs`), then wake the
    workers once for all of them."""
    outcome = await admin_ops.retry_failed_jobs(runtime.engine, runtime.box, **filters.as_match_kwargs())
    runtime.wake_all()
    log.info(
        "admin retried %d failed jobs (%d skipped%s)",
        len(outcome["retried"]),
        len(outcome["skipped"]),
        "; more match" if outcome["more"] else "",
    )
    return outcome
