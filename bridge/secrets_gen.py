"""Fresh secrets for a new installation (``bridge secrets new``)."""

from __future__ import annotations

import base64
import secrets

from cryptography.fernet import Fernet


def new_secrets() -> dict[str, str]:
    return {
        "BRIDGE_WEBHOOK_SECRETS": "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "BRIDGE_CALLBACK_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "BRIDGE_ADMIN_TOKENS": secrets.token_urlsafe(32),
        "BRIDGE_SECRET_KEY": Fernet.generate_key().decode(),
    }
