"""Admin actions that the API and the page share, where more than the store is involved."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridge.store import admin_ops

if TYPE_CHECKING:
    from bridge.bootstrap import Runtime


async def cancel_job(runtime: Runtime, job_id: str) -> dict[str, Any]:
    """Cancel a job; one no worker held is finished here, so it is counted here.

    A held job is only asked to stop (``cancel_requested``): its worker finishes and counts it.
    """
    job = await admin_ops.cancel_job(runtime.engine, job_id, policy=runtime.records.callback_policy)
    if job["status"] == "cancelled":
        runtime.metrics.jobs_finished.labels("cancelled").inc()
    return job
