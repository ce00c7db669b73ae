"""The database schema: the record of truth for every event, job, step, attempt,
panel call, compensation, callback and outbox row."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from bridge.store.types import UTCDateTime, json_type

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("webhook_id", String(255), nullable=False, unique=True),
    Column("type", String(32), nullable=False),
    # The validated body, every secret-named field encrypted.
    Column("payload", json_type(), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    # Integer id gives arrival order (jobs of one service run in this order).
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("public_id", String(36), nullable=False, unique=True),
    Column("event_id", Integer, ForeignKey("events.id"), nullable=False, unique=True),
    Column("webhook_id", String(255), nullable=False),
    Column("type", String(32), nullable=False),
    Column("service_id", String(64), nullable=False),
    Column("panel", String(64), nullable=False),
    Column("domain", String(253)),
    Column("account_username", String(64), nullable=False),
    Column("account_password", Text, nullable=False),  # encrypted
    Column("callback_url", String(2048)),
    Column("status", String(16), nullable=False),
    Column("error", Text),
    # When the job next needs a worker; NULL when there is nothing to do.
    Column("next_run_at", UTCDateTime()),
    Column("enqueued_at", UTCDateTime()),
    Column("lease_owner", String(64)),
    Column("lease_until", UTCDateTime()),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    Index("ix_jobs_service_order", "service_id", "id"),
    Index("ix_jobs_due", "next_run_at"),
    Index("ix_jobs_status_created", "status", "created_at"),
)

steps = Table(
    "steps",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("params", json_type(), nullable=False),  # secret fields encrypted
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    # An attempt was sent whose effect is not known: read the panel back before sending again.
    Column("in_flight", Boolean, nullable=False, default=False),
    Column("next_attempt_at", UTCDateTime()),
    Column("first_attempt_at", UTCDateTime()),
    Column("result", json_type()),
    Column("error", Text),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("job_id", "position"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("step_id", Integer, ForeignKey("steps.id"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("worker", String(64)),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    Column("outcome", String(32)),  # succeeded, retryable, permanent, unknown, reconciled, ...
    Column("message", Text),
    # Also serves the lookups by step.
    Index("uq_attempts_step_id_number", "step_id", "number", unique=True),
)

panel_calls = Table(
    "panel_calls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False, index=True),
    Column("attempt_id", Integer, ForeignKey("attempts.id")),
    Column("panel", String(64), nullable=False),
    Column("call", String(64), nullable=False),
    Column("request", json_type(), nullable=False),  # masked
    Column("http_status", Integer),
    Column("response", Text),  # masked excerpt
    Column("outcome", String(32), nullable=False),
    Column("message", Text),
    Column("duration_ms", Float, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

compensations = Table(
    "compensations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False, index=True),
    Column("step_id", Integer, ForeignKey("steps.id"), nullable=False),
    Column("step", String(32), nullable=False),
    Column("action", Text, nullable=False),
    Column("status", String(16), nullable=False),  # pending, done, not_needed
    Column("created_at", UTCDateTime(), nullable=False),
    Column("resolved_at", UTCDateTime()),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_public_id", String(36), nullable=False),
    Column("delay_s", Float, nullable=False, default=0.0),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("sent_at", UTCDateTime()),
    Index("ix_outbox_unsent", "sent_at", "id"),
)

callbacks = Table(
    "callbacks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("public_id", String(36), nullable=False, unique=True),  # the webhook-id it is sent with
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False, index=True),
    Column("type", String(32), nullable=False),
    Column("url", String(2048), nullable=False),
    Column("body", json_type(), nullable=False),  # holds no secrets
    Column("status", String(16), nullable=False),  # pending, delivered, failed, refused
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime()),
    Column("last_error", Text),
    Index("ix_callbacks_due", "status", "next_attempt_at"),
)

callback_attempts = Table(
    "callback_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("callback_id", Integer, ForeignKey("callbacks.id"), nullable=False, index=True),
    Column("attempted_at", UTCDateTime(), nullable=False),
    Column("http_status", Integer),
    Column("error", Text),
    Column("duration_ms", Float, nullable=False),
)

panel_breakers = Table(
    "panel_breakers",
    metadata,
    Column("panel", String(64), primary_key=True),
    Column("window_started_at", UTCDateTime()),
    Column("failures", Integer, nullable=False, default=0),
    Column("open_until", UTCDateTime()),
    Column("last_reason", Text),
)

# Who holds each panel's mutation gate (PostgreSQL only). The advisory lock dies with its
# session and leaves no trace; this row outlives it: a holder found here by the next one
# ended without letting go (killed, or its connection lost), perhaps in the middle of a call.
panel_gates = Table(
    "panel_gates",
    metadata,
    Column("panel", String(64), primary_key=True),
    Column("held_by", String(64)),
    Column("held_since", UTCDateTime()),
    # Until when the holder's call may run (set before a certificate issuance, minutes long).
    Column("busy_until", UTCDateTime()),
    # No mutating call before this (after a call that got no answer, or a holder that never let go).
    Column("quiet_until", UTCDateTime()),
)
