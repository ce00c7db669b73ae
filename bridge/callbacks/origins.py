"""Which callback URLs the bridge may call: exact scheme, host and port."""

from __future__ import annotations

from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_origin(url: str) -> str:
    """``scheme://host:port`` with the port made explicit; ValueError when it is not an origin."""
    parts = urlsplit(url.strip())
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) origin like https://billing.example.com")
    if parts.username or parts.password:
        raise ValueError(f"{url!r} must not carry credentials")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    return f"{parts.scheme}://{parts.hostname.lower()}:{port}"


def origin_allowed(url: str, allowed: list[str]) -> bool:
    try:
        return normalise_origin(url) in allowed
    except ValueError:
        return False
