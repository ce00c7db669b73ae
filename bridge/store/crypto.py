"""Encryption of secrets at rest (Fernet; several keys rotate: the first encrypts, all decrypt).

Only password fields are encrypted, in place, so a stored payload stays readable
for admins while the secrets inside it are not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from bridge.domain.masking import is_secret_field

ENCRYPTED_PREFIX = "fernet:"


class SecretsUnavailable(Exception):
    """No key is configured, so secrets cannot be stored or read."""


def check_fernet_key(key: str) -> None:
    try:
        Fernet(key.encode())
    except (ValueError, TypeError):
        raise ValueError(
            "each key must be a Fernet key (32 url-safe base64-encoded bytes); make one with `bridge secrets new`"
        ) from None


class SecretBox:
    """Encrypts and decrypts single secrets and the secret fields of a payload."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._fernet = MultiFernet([Fernet(key.encode()) for key in keys]) if keys else None

    @property
    def available(self) -> bool:
        return self._fernet is not None

    def encrypt(self, plaintext: str) -> str:
        if self._fernet is None:
            raise SecretsUnavailable("BRIDGE_SECRET_KEY is not set: the bridge refuses to store secrets")
        return ENCRYPTED_PREFIX + self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        if not token.startswith(ENCRYPTED_PREFIX):
            raise ValueError("not an encrypted value")
        if self._fernet is None:
            raise SecretsUnavailable("BRIDGE_SECRET_KEY is not set: stored secrets cannot be read")
        try:
            return self._fernet.decrypt(token[len(ENCRYPTED_PREFIX) :].encode()).decode()
        except InvalidToken:
            raise SecretsUnavailable(
                "a stored secret was encrypted with a key that is no longer in BRIDGE_SECRET_KEY"
            ) from None

    def encrypt_fields(self, value: Any, tokens: dict[str, str] | None = None) -> Any:
        """A copy of ``value`` with every secret-named string field encrypted.

        ``tokens`` (plaintext → token) is consulted and filled: the copies of one secret in
        the rows written together (an event's payload, its steps) share one token, one
        encryption."""
        if tokens is None:
            return self._walk(value, self.encrypt)

        def encrypt_once(plaintext: str) -> str:
            token = tokens.get(plaintext)
            if token is None:
                token = tokens[plaintext] = self.encrypt(plaintext)
            return token

        return self._walk(value, encrypt_once)

    def decrypt_fields(self, value: Any) -> Any:
        return self._walk(value, self.decrypt)

    def _walk(self, value: Any, transform: Any) -> Any:
        # Values are JSON-shaped (a model dump, a plan's params, a JSON column): dicts and lists.
        if isinstance(value, dict):
            return {
                key: (
                    transform(item)
                    if isinstance(item, str) and isinstance(key, str) and is_secret_field(key)
                    else self._walk(item, transform)
                )
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [self._walk(item, transform) for item in value]
        return value
