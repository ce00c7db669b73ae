"""`bridge <command>` in a process of its own, as an operator starts it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def run_bridge(
    command: str, settings: Mapping[str, str], cwd: Path, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run it to its exit with ``settings`` as its only BRIDGE_* variables; its output as text."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(settings)
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", command],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
