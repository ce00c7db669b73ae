"""``bridge jobs list|show|retry|cancel``: the admin operations from a terminal.

By default against the bridge's database (settings from BRIDGE_* / BRIDGE_CONFIG);
with ``--url URL`` (and ``--token`` or BRIDGE_ADMIN_TOKEN) against a running
bridge's admin API. Exit status 0 on success (``retry --all-failed`` too when it
skipped some jobs), 1 when the operation failed or was refused (one line on
stderr), 2 for a usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from bridge.admin.cli_backends import ApiBackend, Backend, CommandFailed, DatabaseBackend, refusals_as_failures
from bridge.admin.text_tables import excerpt, table
from bridge.domain.jobs import JobStatus
from bridge.settings import SettingsError, load_settings


def add_jobs_parser(sub: Any) -> None:
    """Add ``jobs`` and its subcommands to the ``bridge`` parser."""
    jobs = sub.add_parser("jobs", help="list, show, retry and cancel jobs", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="a running bridge's base URL (default: work on the database directly)")
    common.add_argument("--token", help="admin token for --url (default: BRIDGE_ADMIN_TOKEN)")
    actions = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = actions.add_parser("list", parents=[common], help="jobs, newest first")
    listing.add_argument("--status", choices=[s.value for s in JobStatus])
    listing.add_argument("--service-id")
    listing.add_argument("--domain", help="part of the domain")
    listing.add_argument("--limit", type=int, default=50, help="at most 200")
    listing.add_argument("--cursor", help="the cursor printed under the previous page")
    listing.add_argument("--json", action="store_true", help="print the API's JSON")
    show = actions.add_parser("show", parents=[common], help="one job: steps, compensations, callbacks")
    show.add_argument("job_id")
    show.add_argument("--json", action="store_true", help="print the whole job as JSON (secrets masked)")
    retry = actions.add_parser(
        "retry", parents=[common], help="resume a failed job, or every failed job that matches, where it stopped"
    )
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("job_id", nargs="?")
    which.add_argument(
        "--all-failed",
        action="store_true",
        help="retry the failed jobs that match --service-id and --domain, oldest first",
    )
    retry.add_argument(
        "--password-stdin", action="store_true", help="read a fresh password for the job's panel account from stdin"
    )
    retry.add_argument("--service-id", help="with --all-failed: only this service's jobs")
    retry.add_argument("--domain", help="with --all-failed: only jobs whose domain holds this")
    retry.add_argument("--limit", type=int, help="with --all-failed: at most this many (default 50, at most 200)")
    retry.add_argument("--cursor", help="with --all-failed: go on past the jobs an earlier run tried (it prints this)")
    cancel = actions.add_parser("cancel", parents=[common], help="cancel a job that has not finished")
    cancel.add_argument("job_id")


def cmd_jobs(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    problem = _usage_problem(args)
    if problem is not None:
        print(f"bridge jobs {args.jobs_command}: {problem}", file=err)
        return 2
    try:
        backend_factory = _backend_factory(args)
        password = _read_password(args)
        asyncio.run(_run(args, backend_factory, password, out))
    except CommandFailed as exc:
        print(f"bridge jobs {args.jobs_command}: {exc}", file=err)
        return 1
    return 0


def _usage_problem(args: argparse.Namespace) -> str | None:
    """Which options of ``retry`` go together, beyond what its parser checks."""
    if args.jobs_command != "retry":
        return None
    if args.all_failed and args.password_stdin:
        return "--password-stdin: not with --all-failed (each job keeps its account's password)"
    filters = {"--service-id": args.service_id, "--domain": args.domain, "--limit": args.limit, "--cursor": args.cursor}
    given = [name for name, value in filters.items() if value is not None]
    if given and not args.all_failed:
        return f"{', '.join(given)}: only with --all-failed"
    for name in ("--service-id", "--domain"):
        if filters[name] is not None and not str(filters[name]).strip():
            # Left out instead, it would retry every failed job (a script's "$ID" unset, say).
            return f"{name}: empty; leave it out to match every failed job"
    if args.limit is not None and args.limit < 1:
        return "--limit: must be at least 1"
    return None


def _query(**values: object) -> dict[str, str]:
    """Query parameters as text, without those not given."""
    return {name: str(value) for name, value in values.items() if value not in (None, "")}


def _backend_factory(args: argparse.Namespace) -> Callable[[], Any]:
    if args.url:
        token = args.token or os.environ.get("BRIDGE_ADMIN_TOKEN", "")
        if not token:
            raise CommandFailed("--url needs --token or BRIDGE_ADMIN_TOKEN")
        return lambda: ApiBackend(args.url, token)
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise CommandFailed(f"configuration error: {exc}".replace("\n", "; ")) from None
    return lambda: DatabaseBackend(settings)


def _read_password(args: argparse.Namespace) -> str | None:
    if not getattr(args, "password_stdin", False):
        return None
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandFailed("--password-stdin: no password on standard input")
    return password


async def _run(args: argparse.Namespace, factory: Callable[[], Any], password: str | None, out: TextIO) -> None:
    backend = factory()
    try:
        async with refusals_as_failures():
            await COMMANDS[args.jobs_command](args, backend, password, out)
    finally:
        await backend.close()


async def _list(args: argparse.Namespace, backend: Backend, _password: str | None, out: TextIO) -> None:
    query = _query(
        status=args.status, service_id=args.service_id, domain=args.domain, limit=args.limit, cursor=args.cursor
    )
    jobs, next_cursor = await backend.list_jobs(query)
    if args.json:
        print(json.dumps({"jobs": jobs, "next_cursor": next_cursor}, indent=2), file=out)
        return
    rows = [
        [
            j["job_id"],
            (j["created_at"] or "")[:19].replace("T", " "),
            j["service_id"],
            j["domain"] or "",
            j["type"],
            j["status"],
            excerpt(j["error"], 50),
        ]
        for j in jobs
    ]
    print(table(["JOB ID", "CREATED (UTC)", "SERVICE", "DOMAIN", "TYPE", "STATUS", "ERROR"], rows), file=out)
    if next_cursor:
        print(f"\nmore: --cursor {next_cursor}", file=out)


def _print_job(job: dict[str, Any], out: TextIO) -> None:
    facts = [
        ("job", job["job_id"]),
        (
            "status",
            job["status"] + (" (cancel requested)" if job.get("cancel_requested") and not job["finished_at"] else ""),
        ),
        ("type", job["type"]),
        ("service", job["service_id"]),
        ("domain", job["domain"] or "-"),
        ("panel/account", f"{job['panel']}/{job['account']}"),
        ("created", job["created_at"]),
        ("finished", job["finished_at"] or "-"),
    ]
    if job["error"]:
        facts.append(("error", job["error"]))
    print("\n".join(f"{name:<14} {value}" for name, value in facts), file=out)
    steps = [
        [s["position"], s["kind"], s["status"], s["attempts"], excerpt(s["error"] or json.dumps(s["result"]), 70)]
        for s in job["steps"]
    ]
    print("\nSTEPS\n" + table(["#", "STEP", "STATUS", "ATTEMPTS", "RESULT / ERROR"], steps, max_width=70), file=out)
    if job["compensations"]:
        comps = [[c["id"], c["step"], c["status"], c["action"]] for c in job["compensations"]]
        print("\nCOMPENSATIONS\n" + table(["ID", "STEP", "STATUS", "ACTION"], comps, max_width=80), file=out)
    if job.get("callbacks"):
        cbs = [[c["type"], c["status"], c["attempts"], c["last_error"] or ""] for c in job["callbacks"]]
        print("\nCALLBACKS\n" + table(["TYPE", "STATUS", "TRIES", "LAST ERROR"], cbs), file=out)


async def _show(args: argparse.Namespace, backend: Backend, _password: str | None, out: TextIO) -> None:
    job = await backend.show(args.job_id)
    if args.json:
        print(json.dumps(job, indent=2), file=out)
    else:
        _print_job(job, out)


async def _retry(args: argparse.Namespace, backend: Backend, password: str | None, out: TextIO) -> None:
    if args.all_failed:
        await _retry_failed(args, backend, out)
        return
    account = None
    if password is not None:
        account = {"username": (await backend.show(args.job_id))["account"], "password": password}
    job = await backend.retry(args.job_id, account)
    print(f"job {job['job_id']}: {job['status']}; it resumes from its first unfinished step", file=out)


async def _retry_failed(args: argparse.Namespace, backend: Backend, out: TextIO) -> None:
    query = _query(service_id=args.service_id, domain=args.domain, limit=args.limit, cursor=args.cursor)
    outcome = await backend.retry_failed(query)
    for job_id in outcome["retried"]:
        print(f"job {job_id}: retried; it resumes from its first unfinished step", file=out)
    for skipped in outcome["skipped"]:
        print(f"job {skipped['job_id']}: skipped: {skipped['error']}", file=out)
    counts = f"{len(outcome['retried'])} retried, {len(outcome['skipped'])} skipped"
    if outcome["more"]:
        print(f"{counts}; more failed jobs match: run again with --cursor {outcome['next_cursor']}", file=out)
    else:
        print(f"{counts}; those were all the failed jobs that matched", file=out)


async def _cancel(args: argparse.Namespace, backend: Backend, _password: str | None, out: TextIO) -> None:
    job = await backend.cancel(args.job_id)
    if job["status"] == "cancelled":
        print(f"job {job['job_id']}: cancelled", file=out)
    else:
        print(f"job {job['job_id']}: cancel requested; the step being sent finishes first", file=out)


COMMANDS = {"list": _list, "show": _show, "retry": _retry, "cancel": _cancel}
