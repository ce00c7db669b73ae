"""``bridge jobs``: against the database (both deployments) and against the admin API."""

from __future__ import annotations

import asyncio
import io
import json
import sys

import pytest
from admin_helpers import (
    add_domain_being_sent,
    admin_bridge,
    failed_at_database,
    failed_job_of_its_own,
    order,
    wait_until,
)
from conftest import ADMIN_TOKEN, CALLBACK_SECRET, FERNET_KEY
from engine_harness import ACCOUNT, Bridge
from orders import ACCOUNT_PASSWORD, DB_PASSWORD

from bridge import cli
from bridge.admin.cli import cmd_jobs


async def jobs(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    """Run ``bridge jobs ...`` in a thread (it runs its own event loop), as a terminal would."""
    args = cli.build_parser().parse_args(["jobs", *argv])
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        saved = sys.stdin
        sys.stdin = io.StringIO(stdin)
        try:
            return cmd_jobs(args, out, err)
        finally:
            sys.stdin = saved

    code = await asyncio.to_thread(run)
    return code, out.getvalue(), err.getvalue()


def use_database_of(bridge: Bridge, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = bridge.runtime.settings
    monkeypatch.delenv("BRIDGE_CONFIG", raising=False)
    monkeypatch.setenv("BRIDGE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("BRIDGE_SECRET_KEY", FERNET_KEY)
    monkeypatch.setenv("BRIDGE_CALLBACK_SECRET", CALLBACK_SECRET)
    monkeypatch.setenv("BRIDGE_CALLBACK_ALLOWED_ORIGINS", ",".join(settings.callback_allowed_origins))


async def test_against_the_database(deployment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    async with admin_bridge(**deployment) as bridge:
        use_database_of(bridge, monkeypatch)
        _, answer = await bridge.send(order(bridge, password=ACCOUNT_PASSWORD))
        job_id = answer["job_id"]
        await bridge.wait_for(job_id, "failed")

        code, out, err = await jobs("list", "--status", "failed")
        assert (code, err) == (0, "")
        header, row = out.splitlines()[:2]
        assert header.split() == ["JOB", "ID", "CREATED", "(UTC)", "SERVICE", "DOMAIN", "TYPE", "STATUS", "ERROR"]
        assert row.startswith(job_id) and " failed " in row and "example.com" in row
        assert header.index("STATUS") == row.index("failed")  # aligned

        code, out, _ = await jobs("show", job_id)
        assert code == 0 and "STEPS" in out and "check_account" in out and "COMPENSATIONS" not in out
        assert "CALLBACKS" in out and "job.failed" in out
        code, raw, _ = await jobs("show", job_id, "--json")
        assert code == 0 and json.loads(raw)["steps"][0]["status"] == "failed"
        for text in (out, raw):
            assert ACCOUNT_PASSWORD not in text and DB_PASSWORD not in text and "********" in raw

        code, out, err = await jobs("retry", job_id, "--password-stdin", stdin=f"{ACCOUNT[1]}\n")
        assert (code, err) == (0, "") and f"job {job_id}: accepted" in out
        await bridge.wait_for(job_id, "succeeded")  # the bridge's relay picks the retry up from the outbox
        assert bridge.sim.snapshot()["counters"]["add_domain"] == 1

        code, out, err = await jobs("cancel", job_id)
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and err.startswith("bridge jobs cancel: 409: ")
        code, _, err = await jobs("show", "no-such-job")
        assert (code, err) == (1, "bridge jobs show: 404: job no-such-job not found\n")
        code, _, err = await jobs("list", "--limit", "0")
        assert code == 1 and "limit" in err


async def test_against_the_api(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        url = str(bridge.client.make_url("/"))
        monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", ADMIN_TOKEN)
        failed = await failed_at_database(bridge)
        code, out, _ = await jobs("list", "--url", url)
        assert code == 0 and failed in out
        code, out, _ = await jobs("list", "--url", url, "--service-id", "nope")
        assert code == 0 and failed not in out
        code, out, _ = await jobs("show", failed, "--url", url)
        assert code == 0 and "COMPENSATIONS" in out and "remove domain example.com" in out and DB_PASSWORD not in out
        code, out, _ = await jobs("retry", failed, "--url", url)
        assert code == 0 and "accepted" in out
        await bridge.wait_for(failed, "succeeded")

        bridge.sim.set_latency(1.0, "add_domain")
        first = (await bridge.send(order(bridge, service_id="77", domain="one.example.com", databases=[])))[1]["job_id"]
        second = (await bridge.send(order(bridge, service_id="77", domain="two.example.com", databases=[])))[1][
            "job_id"
        ]

        async def sending() -> bool:
            return (await bridge.job(first))["steps"][1]["status"] == "running"

        await wait_until(sending)
        assert (await jobs("cancel", second, "--url", url))[1] == f"job {second}: cancelled\n"
        code, out, _ = await jobs("cancel", first, "--url", url)
        assert code == 0 and "cancel requested" in out
        await bridge.wait_for(first, "cancelled")

        code, _, err = await jobs("list", "--url", url, "--token", "wrong")
        assert (code, err) == (1, "bridge jobs list: 401: missing or invalid admin token\n")
        monkeypatch.delenv("BRIDGE_ADMIN_TOKEN")
        code, _, err = await jobs("list", "--url", url)
        assert code == 1 and "--token" in err
        code, _, err = await jobs("list", "--url", "http://127.0.0.1:1", "--token", "x")
        assert code == 1 and "cannot reach" in err


RETRIED = "retried; it resumes from its first unfinished step"
ALL_TRIED = "those were all the failed jobs that matched"


async def test_retry_all_failed_on_the_database(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with admin_bridge(db_url) as bridge:
        use_database_of(bridge, monkeypatch)
        first, second, third = [await failed_job_of_its_own(bridge, n, service_id=f"6{n}") for n in (1, 2, 3)]

        code, out, err = await jobs("retry", "--all-failed", "--service-id", "61")
        assert (code, err) == (0, "")
        assert out.splitlines() == [f"job {first}: {RETRIED}", f"1 retried, 0 skipped; {ALL_TRIED}"]
        code, out, _ = await jobs("retry", "--all-failed", "--domain", "SITE3.example")
        assert code == 0 and out.splitlines() == [f"job {third}: {RETRIED}", f"1 retried, 0 skipped; {ALL_TRIED}"]
        for job_id in (first, third):
            await bridge.wait_for(job_id, "succeeded")  # the bridge's relay picks the retries up from the outbox
        assert (await bridge.job(second))["status"] == "failed"

        fourth = await failed_job_of_its_own(bridge, 4, service_id="64")
        code, out, _ = await jobs("retry", "--all-failed", "--limit", "1")
        *tried, last = out.splitlines()
        assert code == 0 and tried == [f"job {second}: {RETRIED}"]
        assert last.startswith("1 retried, 0 skipped; more failed jobs match: run again with --cursor ")
        code, out, _ = await jobs("retry", "--all-failed", "--cursor", last.rpartition(" ")[2])
        assert code == 0 and out.splitlines() == [f"job {fourth}: {RETRIED}", f"1 retried, 0 skipped; {ALL_TRIED}"]
        for job_id in (second, fourth):
            await bridge.wait_for(job_id, "succeeded")


async def test_retry_all_failed_through_the_api(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with admin_bridge(sqlite_url) as bridge:
        url = str(bridge.client.make_url("/"))
        monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", ADMIN_TOKEN)
        waiting = await failed_job_of_its_own(bridge, 1, service_id="71")
        elsewhere = await failed_job_of_its_own(bridge, 2, service_id="72")
        running = await add_domain_being_sent(bridge, service_id="71")
        code, out, err = await jobs("retry", "--all-failed", "--url", url)
        assert (code, err) == (0, "")  # a job skipped is no failure of the command
        assert out.splitlines() == [
            f"job {elsewhere}: {RETRIED}",
            f"job {waiting}: skipped: job {running} of service 71 is running; retry this one after it has finished",
            f"1 retried, 1 skipped; {ALL_TRIED}",
        ]
        await bridge.wait_for(elsewhere, "succeeded")
        assert (await bridge.job(waiting))["status"] == "failed"
        code, _, err = await jobs("retry", "--all-failed", "--url", url, "--limit", "201")
        assert (code, err) == (0, "")  # taken as 200, as the list does
        code, _, err = await jobs("retry", "--all-failed", "--url", url, "--token", "wrong")
        assert (code, err) == (1, "bridge jobs retry: 401: missing or invalid admin token\n")


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--all-failed", "--password-stdin"], "--password-stdin: not with --all-failed"),
        (["some-job", "--service-id", "61"], "--service-id: only with --all-failed"),
        (["some-job", "--domain", "x", "--limit", "5"], "--domain, --limit: only with --all-failed"),
        (["some-job", "--cursor", "x"], "--cursor: only with --all-failed"),
        # Left out instead, an empty filter would retry every failed job.
        (["--all-failed", "--service-id", ""], "--service-id: empty"),
        (["--all-failed", "--domain", " "], "--domain: empty"),
        (["--all-failed", "--limit", "0"], "--limit: must be at least 1"),
    ],
)
async def test_retry_all_failed_refuses_options_that_do_not_go_with_it(argv: list[str], problem: str) -> None:
    code, out, err = await jobs("retry", *argv)
    assert (code, out) == (2, "") and err.startswith(f"bridge jobs retry: {problem}")


@pytest.mark.parametrize("argv", [["some-job", "--all-failed"], []])
def test_retry_takes_a_job_id_or_all_failed(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["jobs", "retry", *argv])
    assert info.value.code == 2 and "job_id" in capsys.readouterr().err


async def test_wired_into_the_bridge_command(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BRIDGE_CONFIG", raising=False)
    monkeypatch.setenv("BRIDGE_DATABASE_URL", sqlite_url)
    assert await asyncio.to_thread(cli.main, ["jobs", "list"]) == 0
    assert capsys.readouterr().out.startswith("JOB ID")
    with pytest.raises(SystemExit) as info:
        cli.main(["jobs", "list", "--status", "bogus"])
    assert info.value.code == 2
