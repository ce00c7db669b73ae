"""What one panel call came to, whatever the panel answered.

The panel answers HTTP 200 for nearly everything, so the HTTP status says little;
the client reads the body and turns every answer into exactly one of these::

    PanelOutcome
     ├── Succeeded          the call did what it was asked (with the answer's data)
     ├── AlreadyExists      the thing asked for is there already (ours or not: the caller decides)
     ├── PermanentFailure   retrying the same call cannot help; a human must act
     ├── RetryableFailure   nothing happened, or nothing harmful; the same call may be sent again later
     └── UnknownOutcome     a mutating call was sent but no answer came back: read the panel back first
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class FailureReason(StrEnum):
    """Why a permanent failure is permanent; drives the circuit breaker and the admin's message."""

    INVALID_CREDENTIALS = "invalid_credentials"
    API_DISABLED = "api_disabled"
    FIREWALL = "firewall"
    LIMIT_EXCEEDED = "limit_exceeded"
    INVALID_INPUT = "invalid_input"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    TLS = "tls"
    OTHER = "other"


@dataclass(frozen=True)
class Succeeded:
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AlreadyExists:
    message: str
    # The call did the first part of its work before it found the clash (db_make makes the
    # database, then finds its user taken): that part is on the panel now.
    first_part_done: bool = False


@dataclass(frozen=True)
class PermanentFailure:
    message: str
    reason: FailureReason = FailureReason.OTHER


@dataclass(frozen=True)
class RetryableFailure:
    message: str


@dataclass(frozen=True)
class UnknownOutcome:
    message: str


PanelOutcome = Succeeded | AlreadyExists | PermanentFailure | RetryableFailure | UnknownOutcome


def outcome_kind(outcome: PanelOutcome) -> str:
    """A short stable name for records and metrics."""
    return {
        Succeeded: "succeeded",
        AlreadyExists: "already_exists",
        PermanentFailure: "permanent",
        RetryableFailure: "retryable",
        UnknownOutcome: "unknown",
    }[type(outcome)]
