"""What one accepted event writes (secrets already encrypted), and what storing it found."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bridge.domain.events import OrderEvent
from bridge.domain.jobs import JobStatus, plan
from bridge.store.crypto import SecretBox
from bridge.store.types import utcnow


@dataclass(frozen=True)
class StoredEvent:
    job_id: str
    duplicate: bool
    # For a duplicate, where the job it found is now (a retried delivery may come after the work).
    job_status: str = JobStatus.ACCEPTED.value


@dataclass(frozen=True)
class IntakeRows:
    """What one accepted event writes, secrets already encrypted."""

    webhook_id: str
    job_id: str
    now: datetime
    event: dict[str, Any]
    job: dict[str, Any]
    steps: list[dict[str, Any]]

    @classmethod
    def build(cls, box: SecretBox, webhook_id: str, event: OrderEvent) -> IntakeRows:
        now = utcnow()
        job_id = str(uuid.uuid4())
        data = event.data
        payload = box.encrypt_fields(event.model_dump(mode="json"))
        # A database step carries its database's password: the payload's token for it, one Fernet
        # call fewer. Only those: a token shared by two different secrets would show they are equal.
        tokens = {
            plain.password: stored["password"]
            for plain, stored in zip(data.databases, payload["data"]["databases"], strict=True)
        }
        event_row = {"webhook_id": webhook_id, "type": event.type, "payload": payload, "received_at": now}
        job_row = {
            "public_id": job_id,
            "webhook_id": webhook_id,
            "type": event.type,
            "service_id": data.service_id,
            "panel": data.panel,
            "domain": data.domain,
            "account_username": data.account.username,
            # The payload's token for the same field: one Fernet call fewer.
            "account_password": payload["data"]["account"]["password"],
            "callback_url": data.callback_url,
            "status": JobStatus.ACCEPTED.value,
            "next_run_at": now,
            "enqueued_at": now,
            "cancel_requested": False,
            "created_at": now,
            "updated_at": now,
        }
        step_rows = [
            {"position": position, "kind": step.kind.value, "params": box.encrypt_fields(step.params, tokens)}
            for position, step in enumerate(plan(event))
        ]
        return cls(webhook_id, job_id, now, event_row, job_row, step_rows)
