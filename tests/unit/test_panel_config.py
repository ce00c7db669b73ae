"""Panel server settings: URL, fingerprint and per-call timeouts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bridge.panel.config import PanelServer


def test_url_loses_its_trailing_slash() -> None:
    assert PanelServer(name="p", url="https://203.0.113.5:8443/").url == "https://203.0.113.5:8443"


@pytest.mark.parametrize("url", ["ftp://h:1", "203.0.113.5:8443", "https://", "https://u:pw@h:1", "https://h:1/?x=1"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(ValidationError):
        PanelServer(name="p", url=url)


def test_fingerprint_is_normalised() -> None:
    server = PanelServer(name="p", url="https://h:1", tls_fingerprint=":".join(["AB"] * 32))
    assert server.tls_fingerprint == "ab" * 32
    assert server.fingerprint_bytes == bytes([0xAB]) * 32


@pytest.mark.parametrize(
    ("settings", "read", "ordinary", "ssl"),
    [
        ({}, 15, 120, 600),
        ({"timeout_s": 5}, 5, 5, 600),
        ({"timeout_s": 900}, 15, 900, 900),
        ({"timeout_s": 30, "read_timeout_s": 40, "ssl_timeout_s": 60}, 40, 30, 60),
    ],
)
def test_timeouts_per_call(settings: dict[str, float], read: float, ordinary: float, ssl: float) -> None:
    server = PanelServer(name="p", url="https://h:1", **settings)
    assert [server.timeout_for(c) for c in ("domain_list", "account_info", "cronjob_list")] == [read] * 3
    assert [server.timeout_for(c) for c in ("add_domain", "db_make", "cronjob_add")] == [ordinary] * 3
    assert server.timeout_for("domain_issue_ssl") == ssl


@pytest.mark.parametrize("field", [{"max_concurrency": 0}, {"timeout_s": 0}, {"read_timeout_s": -1}])
def test_limits_must_be_positive(field: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        PanelServer(name="p", url="https://h:1", **field)


def test_server_is_frozen() -> None:
    server = PanelServer(name="p", url="https://h:1")
    with pytest.raises(ValidationError):
        server.url = "https://other:1"  # type: ignore[misc]
