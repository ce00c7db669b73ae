"""The panel simulator as a process of its own, with the benchmark's accounts made in-process.

Accounts are ``u<run><n>`` for n in 0..count-1 (the names bench/loadgen.py orders
use), each with the password ``Acct-Passw0rd-<n>`` or, with ``--shared-password``,
one password for all (the memory benchmark encrypts it once). Creating 100,000
accounts over ``/_sim/accounts`` would take longer than the benchmark itself.

Run: ``python bench/sim_server.py --port 8090 --run abc123 --count 1000 [--latency 0.2]``
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.panel.simulator import PanelSimulator, run_simulator


def account_password(n: int, shared: str | None) -> str:
    return shared or f"Acct-Passw0rd-{n}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every mutating call")
    parser.add_argument("--shared-password", default=None)
    args = parser.parse_args()
    sim = PanelSimulator()
    for n in range(args.count):
        sim.add_account(f"u{args.run}{n}", account_password(n, args.shared_password))
    try:
        asyncio.run(run_simulator("127.0.0.1", args.port, [], latency=args.latency, simulator=sim))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
