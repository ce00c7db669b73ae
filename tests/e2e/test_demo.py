"""`bridge demo` runs to the end with the outcomes it promises."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from bridge.demo import run_demo


async def test_demo_runs_every_order_to_its_end(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.mkdir(tmp_path / "tmp")
    # A machine set up for a real bridge: the demo reads neither its file nor its variables.
    config = tmp_path / "bridge.toml"
    config.write_text('http_prot = 1\ndatabase_url = "postgresql+asyncpg://nobody@127.0.0.1:1/none"\n')
    monkeypatch.setenv("BRIDGE_CONFIG", str(config))
    monkeypatch.setenv("BRIDGE_LEASE_S", "not a number")
    assert await run_demo(timeout_s=60) == 0
    assert os.listdir(tmp_path / "tmp") == []  # its database went with it
    out = capsys.readouterr().out
    assert "(sent again: duplicate): HTTP 200" in out
    assert "4713 DNS not ready for SSL           issue_ssl        waiting_retry" in out
    assert "4714 over the package limit          failed" in out
    # The panel's one transient failure meets the order whose label announces it.
    assert "4711 a full order, panel fails once  add_domain       attempt 1 retryable: " in out
    assert "4711 a full order, panel fails once  add_domain       succeeded     attempt 2" in out
    assert "mutating calls ever in progress at once on the panel: 1" in out
    assert "job.updated" in out
    for secret in ("Str0ng-Db-Passw0rd", "John-Demo-Pass-1"):
        assert secret not in out
