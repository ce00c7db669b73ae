"""The job engine end to end: webhook → queue → workers → simulator → callbacks."""

from __future__ import annotations

from engine_harness import ACCOUNT, running_bridge
from orders import DB_PASSWORD, service_create


def order(bridge, **kw):  # type: ignore[no-untyped-def]
    return service_create(username=ACCOUNT[0], password=ACCOUNT[1], callback_url=bridge.callback_url, **kw)


async def test_happy_path_provisions_everything_once_and_calls_back(deployment: dict[str, str]) -> None:
    async with running_bridge(**deployment) as bridge:
        status, answer = await bridge.send(order(bridge))
        assert status == 202
        job = await bridge.wait_for(answer["job_id"], "succeeded")
        assert [s["status"] for s in job["steps"]] == ["succeeded"] * 5
        acct = bridge.sim.snapshot()["accounts"]["john"]
        assert [d["domain"] for d in acct["domains"]] == ["example.com"]
        assert acct["databases"] == ["john_wp"]
        assert acct["cron_lines"] == ["*/5 * * * * /usr/bin/php /home/john/public_html/cron.php"]
        assert bridge.sim.snapshot()["certificates"]["example.com"] == "issued"
        types = await bridge.wait_callbacks(answer["job_id"], 2)
        assert types == ["job.started", "job.succeeded"]
        done = next(c for c in bridge.receiver.received if c["type"] == "job.succeeded")
        assert done["data"]["status"] == "succeeded"
        assert done["data"]["steps"][1]["result"]["domain_id"] is not None
        assert DB_PASSWORD not in str(bridge.receiver.received)
        assert all(c["status"] == "not_needed" for c in job["compensations"])
