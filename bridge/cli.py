"""The ``bridge`` command line (CONTRACT.md §1)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from bridge.settings import Settings, SettingsError, load_settings, scale_out_problems, unknown_environment_variables


def _settings_or_exit(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        for line in str(exc).splitlines():
            print(f"bridge: configuration error: {line}", file=sys.stderr)
        raise SystemExit(2) from None


def _configure_logging(settings: Settings) -> None:
    from bridge.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    for name in unknown_environment_variables(os.environ):
        logging.getLogger("bridge").warning("%s is not a setting of the bridge; ignored (misspelt?)", name)


def cmd_migrate(args: argparse.Namespace) -> int:
    from bridge.store.database import migrate

    settings = _settings_or_exit()
    _configure_logging(settings)
    asyncio.run(migrate(settings.database_url))
    print("database is at the latest schema")
    return 0


def _require_webhook_secret(settings: Settings) -> None:
    if not settings.webhook_secrets:
        print(
            "bridge: configuration error: BRIDGE_WEBHOOK_SECRETS: required to accept orders "
            "(make one with `bridge secrets new`)",
            file=sys.stderr,
        )
        raise SystemExit(2)


def _require_scale_out(settings: Settings) -> None:
    """serve and worker are separate processes: they must share a broker and a database server."""
    problems = scale_out_problems(settings)
    for setting, problem in problems:
        print(f"bridge: configuration error: {setting}: {problem}", file=sys.stderr)
    if problems:
        raise SystemExit(2)


def cmd_roles(args: argparse.Namespace) -> int:
    from bridge.bootstrap import CannotListen, Role, run_roles
    from bridge.store.database import is_sqlite, migrate
    from bridge.store.embedded_lock import DatabaseInUse, sole_process

    settings = _settings_or_exit()
    if args.command != "run":
        _require_scale_out(settings)
    _configure_logging(settings)
    roles = {
        "run": {Role.HTTP, Role.BACKGROUND, Role.WORKER},
        "serve": {Role.HTTP, Role.BACKGROUND},
        "worker": {Role.WORKER},
    }[args.command]
    if Role.HTTP in roles:
        _require_webhook_secret(settings)

    async def main() -> None:
        if args.command == "run":
            # One process owns its database in the embedded mode: bring it up to date itself.
            await migrate(settings.database_url)
        await run_roles(settings, roles)

    try:
        with contextlib.ExitStack() as embedded:
            if args.command == "run" and is_sqlite(settings.database_url):
                # The embedded mode's gate and queue are the process's own: one process per database.
                embedded.enter_context(sole_process(settings.database_url))
            asyncio.run(main())
    except (CannotListen, DatabaseInUse) as exc:
        print(f"bridge: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from bridge.demo import run_demo
    from bridge.logs import configure_logging

    configure_logging("text", "ERROR")
    return asyncio.run(run_demo())


def cmd_panel_sim(args: argparse.Namespace) -> int:
    from bridge.panel.simulator import panel_sim_main

    asyncio.run(panel_sim_main(args))
    return 0


def cmd_secrets_new(args: argparse.Namespace) -> int:
    from bridge.secrets_gen import new_secrets

    for name, value in new_secrets().items():
        print(f"{name}={value}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from bridge.admin.cli import cmd_jobs as run_jobs_command

    return run_jobs_command(args)


def cmd_config_check(args: argparse.Namespace) -> int:
    from bridge.config_check import run_check

    report = asyncio.run(run_check())
    print(report.render())
    return report.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="everything in one process (embedded default without configuration)")
    sub.add_parser("serve", help="HTTP server, outbox relay, scheduler and callbacks")
    sub.add_parser("worker", help="job workers only")
    sub.add_parser("migrate", help="apply database migrations up to the latest")
    sub.add_parser("demo", help="the embedded bridge, the panel simulator and a few sample orders, shown live")
    sim = sub.add_parser("panel-sim", help="run the panel simulator alone")
    from bridge.panel.simulator import add_panel_sim_arguments

    add_panel_sim_arguments(sim)
    secrets = sub.add_parser("secrets", help="make fresh secrets")
    secrets_sub = secrets.add_subparsers(dest="secrets_command", required=True)
    secrets_sub.add_parser("new", help="print a webhook secret, callback secret, admin token and Fernet key")
    config = sub.add_parser("config", help="inspect the configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_sub.add_parser(
        "check", help="validate the settings, try the database, broker and panels; print them with secrets masked"
    )
    from bridge.admin.cli import add_jobs_parser

    add_jobs_parser(sub)
    return parser


HANDLERS = {
    "run": cmd_roles,
    "serve": cmd_roles,
    "worker": cmd_roles,
    "migrate": cmd_migrate,
    "panel-sim": cmd_panel_sim,
    "demo": cmd_demo,
    "secrets": cmd_secrets_new,
    "jobs": cmd_jobs,
    "config": cmd_config_check,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return HANDLERS[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
