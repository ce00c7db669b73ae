"""A fake OLSPanel server for tests, the demo and the benchmarks.

It speaks the panel's API as the real code does (see PANEL_API.md): POST only,
form fields only (JSON bodies are ignored), HTTP 200 with ``error`` or
``success: false`` for failures, a 301 that loses the body when the trailing
slash is missing, HTML 404 for unknown paths, HTML 500 for crashes, and the
login firewall (12 failed logins from one address in 5 minutes ban it for 10
minutes with an HTML 403). The views live in ``sim_state.py``, the request
handling in ``sim_http.py``, the firewall in ``sim_firewall.py`` and the
``/_sim/`` control endpoints in ``sim_control.py``.

Where it knowingly differs from the real panel:

- account information shows a package limit of 0 as ``"Unlimited"`` and other
  limits as numbers; disk, e-mail and FTP figures are fixed placeholders;
- the firewall answers HTML 403 (the real one may also drop packets) and never
  escalates to a permanent ban (the real one does after 20 bans in a day);
- only password authentication exists (no ``apikey`` header);
- domain format checks are a simple pattern, and SQL errors for odd database
  names are imitations of MySQL's texts;
- ``db_make`` follows the real code, not the documentation: it reads ``dbname``
  (ignoring ``db``) and answers the real texts;
- ``counters`` count every request that reached a known view (failed logins
  included), ``calls`` only the authenticated ones, each with its arrival
  ``time`` and ``finished``, the time of its answer (``None`` while the panel
  is still working on it);
- certificates are a state per domain (none / self_signed / issued), nothing
  is really issued, and issuance fails only when told to (``fail_ssl``).

Knobs, in process (methods of :class:`PanelSimulator`) or over HTTP under
``/_sim/`` (JSON bodies, no authentication: never expose a simulator):

==========================  ==========================================================
``add_account(...)``        ``POST /_sim/accounts`` ``{"username", "password",
                            "domain_limit", "db_limit", "subdomain_limit", "has_package"}``
``set_latency(s, call)``    ``POST /_sim/latency`` ``{"seconds": 0.5, "call": "mutating"}``
                            (``call``: a call name, ``"mutating"`` or ``"*"``)
``inject_fault(call, f)``   ``POST /_sim/faults`` ``{"call": "add_domain", "fault": "late:2"}``
``fail_ssl(domain, n)``     ``POST /_sim/ssl_failures`` ``{"domain": "x.com", "attempts": 2}``
``set_api_enabled(flag)``   ``POST /_sim/api`` ``{"enabled": false}``
``snapshot()``              ``GET /_sim/state``
``reset()``                 ``POST /_sim/reset``
``clock.advance(s)``        ``POST /_sim/clock`` ``{"advance": 600}`` (manual clock only)
==========================  ==========================================================

Faults are queued per call name and used once each, after authentication:
``html500`` answers an HTML 500 and does nothing; ``reset`` drops the connection
and does nothing; ``late:N`` does the work, then answers only after N seconds;
``reset_after`` does the work, then drops the connection; ``error:TEXT`` answers
the failure TEXT (under the call's usual key) and does nothing. ``ban`` is
different: the caller's address is banned just as the call arrives (as when
someone else's failed logins from the same address trip the firewall), so the
firewall answers it, before authentication, and every call after it for the
ban's 10 minutes, unless ``state.firewall.lift(address)`` ends it sooner (an
admin unblocking it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from bridge.panel.config import MUTATING_CALLS
from bridge.panel.sim_control import add_control_routes
from bridge.panel.sim_http import dispatch
from bridge.panel.sim_state import ManualClock, PanelState, SimAccount

__all__ = [
    "FAULTS",
    "SIMULATOR_KEY",
    "ManualClock",
    "PanelSimulator",
    "add_panel_sim_arguments",
    "panel_sim_main",
    "parse_account_spec",
    "run_simulator",
]

logger = logging.getLogger("bridge.panel.simulator")

FAULTS = ("html500", "reset", "late:N", "reset_after", "error:TEXT", "ban")


def _check_fault(fault: str) -> str:
    kind, _, arg = fault.partition(":")
    if kind in ("html500", "reset", "reset_after", "ban") and not arg:
        return fault
    if kind == "late" and arg:
        float(arg)  # a ValueError names the bad number
        return fault
    if kind == "error" and arg:
        return fault
    raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(FAULTS)}")


class PanelSimulator:
    """A simulated panel server: its state, its knobs, and the aiohttp app serving it."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock: Callable[[], float] = clock or time.monotonic
        self.state = PanelState(self.clock)
        self.latency: dict[str, float] = {}
        self.faults: defaultdict[str, deque[str]] = defaultdict(deque)
        self.mutations_in_flight = 0
        # Calls being worked on, kept referenced so that a client going away does not end them.
        self.unfinished: set[asyncio.Future[web.StreamResponse]] = set()

    # --- knobs ------------------------------------------------------------------

    def add_account(
        self,
        username: str,
        password: str,
        domain_limit: int = 0,
        db_limit: int = 0,
        subdomain_limit: int = 0,
        has_package: bool = True,
    ) -> SimAccount:
        """Create a hosting account (a limit of 0 means unlimited)."""
        return self.state.add_account(username, password, domain_limit, db_limit, subdomain_limit, has_package)

    def account(self, username: str) -> SimAccount:
        return self.state.accounts[username]

    def set_latency(self, seconds: float, call: str = "mutating") -> None:
        """Delay ``call`` (a call name, ``"mutating"`` or ``"*"``) by ``seconds``."""
        self.latency[call] = seconds

    def latency_for(self, call: str) -> float:
        if call in self.latency:
            return self.latency[call]
        if call in MUTATING_CALLS and "mutating" in self.latency:
            return self.latency["mutating"]
        return self.latency.get("*", 0.0)

    def inject_fault(self, call: str, fault: str) -> None:
        """Queue a fault for the next request of ``call``; see the module docstring."""
        self.faults[call].append(_check_fault(fault))

    def next_fault(self, call: str) -> str:
        queue = self.faults.get(call)
        return queue.popleft() if queue else ""

    def bans_next(self, call: str) -> bool:
        """Whether the next fault of ``call`` is ``ban``; taken if it is."""
        queue = self.faults.get(call)
        if queue and queue[0] == "ban":
            queue.popleft()
            return True
        return False

    def fail_ssl(self, domain: str, attempts: int) -> None:
        """The next ``attempts`` issuances for ``domain`` fall back to a self-signed certificate."""
        self.state.fail_ssl(domain, attempts)

    def set_api_enabled(self, enabled: bool) -> None:
        self.state.api_enabled = enabled

    def snapshot(self) -> dict[str, Any]:
        """The whole state as JSON-ready data (account passwords left out)."""
        return {
            **self.state.snapshot(),
            "latency": dict(self.latency),
            "faults": {call: list(q) for call, q in self.faults.items() if q},
        }

    def reset(self) -> None:
        """Forget every account, knob, fault, counter and ban."""
        self.state.reset()
        self.latency.clear()
        self.faults.clear()

    # --- serving ------------------------------------------------------------------

    def app(self) -> web.Application:
        """A fresh aiohttp application serving this simulator."""
        app = web.Application()
        app[SIMULATOR_KEY] = self
        add_control_routes(app, self)

        async def handle(request: web.Request) -> web.StreamResponse:
            return await dispatch(self, request)

        app.router.add_route("*", "/{tail:.*}", handle)
        return app


SIMULATOR_KEY = web.AppKey("panel_simulator", PanelSimulator)


def parse_account_spec(spec: str) -> dict[str, Any]:
    """``USER:PASSWORD[:DOMAIN_LIMIT[:DB_LIMIT]]`` as keyword arguments of add_account."""
    parts = spec.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1] or len(parts) > 4:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected USER:PASSWORD[:DOMAIN_LIMIT[:DB_LIMIT]]")
    try:
        limits = [int(p) for p in parts[2:]]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{spec!r}: limits must be whole numbers") from exc
    names = ("domain_limit", "db_limit")
    return {"username": parts[0], "password": parts[1], **dict(zip(names, limits, strict=False))}


async def run_simulator(
    host: str,
    port: int,
    accounts: list[str],
    ssl_context: ssl.SSLContext | None = None,
    *,
    latency: float = 0.0,
    simulator: PanelSimulator | None = None,
) -> None:
    """Serve a simulator until cancelled; ``accounts`` are USER:PASSWORD[:DL[:DBL]] specs."""
    sim = simulator or PanelSimulator()
    for spec in accounts:
        sim.add_account(**parse_account_spec(spec))
    if latency:
        sim.set_latency(latency, "mutating")
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    scheme = "https" if ssl_context else "http"
    logger.info("panel simulator listening on %s://%s:%s", scheme, host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def add_panel_sim_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``bridge panel-sim``."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="USER:PASSWORD[:DOMAIN_LIMIT[:DB_LIMIT]]",
        help="a hosting account (repeatable; a limit of 0 means unlimited)",
    )
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS", help="delay of mutating calls")
    parser.add_argument("--tls-cert", default=None, help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", default=None, help="the certificate's private key (PEM)")


async def panel_sim_main(args: argparse.Namespace) -> None:
    """Run the simulator as ``bridge panel-sim`` was asked to."""
    for spec in args.account:
        parse_account_spec(spec)  # fail before binding the port
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    await run_simulator(args.host, args.port, args.account, context, latency=args.latency)


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m bridge.panel.simulator")
    add_panel_sim_arguments(_parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(panel_sim_main(_parser.parse_args()))
    except KeyboardInterrupt:
        pass
