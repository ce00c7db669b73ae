"""Building and signing order events the way a billing platform does."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from bridge.webhooks.signature import sign

DB_PASSWORD = "db-Secret-Passw0rd!"
ACCOUNT_PASSWORD = "acct-Secret-Passw0rd!"


def service_create(
    *,
    service_id: str = "4711",
    username: str = "john",
    password: str = ACCOUNT_PASSWORD,
    domain: str = "example.com",
    ssl: bool = True,
    databases: list[dict[str, str]] | None = None,
    cron_jobs: list[dict[str, str]] | None = None,
    callback_url: str | None = None,
    panel: str = "default",
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "service_id": service_id,
        "panel": panel,
        "account": {"username": username, "password": password},
        "domain": domain,
        "php_version": "8.2",
        "ssl": ssl,
        "databases": databases
        if databases is not None
        else [{"name": "wp", "user": "wpuser", "password": DB_PASSWORD}],
        "cron_jobs": cron_jobs
        if cron_jobs is not None
        else [
            {
                "minute": "*/5",
                "hour": "*",
                "day": "*",
                "month": "*",
                "weekday": "*",
                "command": f"/usr/bin/php /home/{username}/public_html/cron.php",
            }
        ],
    }
    if callback_url:
        data["callback_url"] = callback_url
    return {"type": "service.create", "data": data}


def signed(
    secret: str,
    event: dict[str, Any] | bytes,
    *,
    webhook_id: str | None = None,
    timestamp: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    headers = sign(secret, webhook_id or f"msg_{uuid.uuid4().hex}", timestamp or int(time.time()), body)
    headers["Content-Type"] = "application/json"
    return body, headers
