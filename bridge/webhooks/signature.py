"""Standard Webhooks signatures: verifying incoming events and signing outgoing callbacks.

The ``standardwebhooks`` package does the HMAC; this module makes every malformed
input an :class:`InvalidSignature` (the package raises plain exceptions for some),
tries every configured secret (rotation), and keeps the 5-minute tolerance.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from bridge.domain.validation import is_small_whole_number, is_unicode_text

TOLERANCE_S = 5 * 60
SECRET_PREFIX = "whsec_"


class InvalidSignature(Exception):
    """The request is not provably from a holder of a configured secret; ``str()`` says why."""


def check_secret(secret: str) -> None:
    """ValueError unless ``secret`` is a usable ``whsec_`` secret."""
    body = secret.removeprefix(SECRET_PREFIX)
    try:
        raw = base64.b64decode(body + "==", validate=False)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret must be whsec_ followed by base64") from None
    if len(raw) < 16:
        raise ValueError("a webhook secret must hold at least 16 bytes (make one with `bridge secrets new`)")


def check_signing_secret(secret: str) -> None:
    """ValueError unless ``secret`` can sign at all (the callback secret; see :func:`check_secret`)."""
    try:
        Webhook(secret)
    except Exception:  # binascii.Error for bad base64, the package's own error for an empty one
        raise ValueError("must be whsec_ followed by base64 (make one with `bridge secrets new`)") from None


class SignatureVerifier:
    def __init__(self, secrets: Sequence[str], tolerance_s: int = TOLERANCE_S) -> None:
        self._webhooks = [Webhook(secret) for secret in secrets]
        self._tolerance_s = tolerance_s

    def verify(self, body: bytes, headers: Mapping[str, str], now: float | None = None) -> str:
        """The ``webhook-id`` of a correctly signed request; InvalidSignature otherwise."""
        if not self._webhooks:
            raise InvalidSignature("no webhook secret is configured")
        msg_id = headers.get("webhook-id", "")
        stamp = headers.get("webhook-timestamp", "")
        signatures = headers.get("webhook-signature", "")
        missing = [
            name
            for name, value in (
                ("webhook-id", msg_id),
                ("webhook-timestamp", stamp),
                ("webhook-signature", signatures),
            )
            if not value
        ]
        if missing:
            raise InvalidSignature(f"missing header(s): {', '.join(missing)}")
        if len(msg_id) > 255:
            raise InvalidSignature("webhook-id: longer than 255 characters")
        # Header bytes that are not UTF-8 arrive as lone surrogates, which cannot be signed.
        if not is_unicode_text(msg_id):
            raise InvalidSignature("webhook-id: not valid UTF-8")
        if not is_small_whole_number(stamp, 12):
            raise InvalidSignature("webhook-timestamp: must be whole Unix seconds")
        timestamp = int(stamp)
        now = time.time() if now is None else now
        if timestamp < now - self._tolerance_s:
            raise InvalidSignature("webhook-timestamp: too old (more than 5 minutes)")
        if timestamp > now + self._tolerance_s:
            raise InvalidSignature("webhook-timestamp: too far in the future (more than 5 minutes)")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidSignature("body: not UTF-8, so it cannot have been signed") from None
        offered = _offered_signatures(signatures)
        if not offered:
            raise InvalidSignature("webhook-signature: no v1 signature (expected 'v1,<base64>')")
        signed_at = datetime.fromtimestamp(timestamp, tz=UTC)
        for webhook in self._webhooks:
            expected = base64.b64decode(webhook.sign(msg_id, signed_at, text).split(",", 1)[1])
            if any(_constant_time_equal(expected, candidate) for candidate in offered):
                return msg_id
        raise InvalidSignature("webhook-signature: does not match any configured secret")


def _offered_signatures(header: str) -> list[bytes]:
    offered = []
    for token in header.split():
        version, _, value = token.partition(",")
        if version != "v1" or not value:
            continue
        try:
            offered.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return offered


def _constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` (used for callbacks, tests and benchmarks)."""
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body.decode("utf-8"))
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}
