"""What the bridge keeps of each panel call: the outcome and a record safe to store.

A record never holds a secret: form fields and headers are masked by name, and
the answer's excerpt has secret-named JSON fields masked and every value sent as
a secret removed, in case the panel quoted it back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bridge.domain.masking import mask, scrub
from bridge.domain.outcomes import PanelOutcome
from bridge.panel.classify import parse_json

__all__ = ["CallResult", "PanelCallRecord", "response_excerpt"]

_EXCERPT_CHARS = 2000


@dataclass(frozen=True)
class PanelCallRecord:
    """What the bridge stores about one panel call; every secret-named field is masked."""

    call: str
    url: str
    request: dict[str, Any]
    http_status: int | None
    response: str
    outcome: str
    message: str
    duration_ms: float


@dataclass(frozen=True)
class CallResult:
    outcome: PanelOutcome
    record: PanelCallRecord


def response_excerpt(body: str, secrets: tuple[str, ...]) -> str:
    """The body for the record: secret-named JSON fields masked, sent secrets removed."""
    answer = parse_json(body)
    if isinstance(answer, dict | list):
        return json.dumps(scrub(mask(answer), secrets), ensure_ascii=False)[:_EXCERPT_CHARS]
    text: str = scrub(body, secrets)
    return text[:_EXCERPT_CHARS]
