"""The worker service's shutdown, with a queue whose consumer cannot be stopped cleanly."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from bridge.broker.base import JobQueue, WakeUpHandler
from bridge.worker.runner import JobRunner
from bridge.worker.service import WorkerService


class BrokenConsumer:
    async def stop(self) -> None:
        raise ConnectionError("the channel could not be closed")


class QueueWithABrokenConsumer:
    async def consume(self, handler: WakeUpHandler, prefetch: int) -> BrokenConsumer:
        return BrokenConsumer()


class IdleRunner:
    stopping = False

    def stop(self) -> None:
        self.stopping = True


async def test_a_consumer_that_fails_to_stop_is_logged_and_the_worker_still_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = WorkerService(
        cast(JobQueue, QueueWithABrokenConsumer()), cast(JobRunner, IdleRunner()), prefetch=1, grace_s=1
    )
    running = asyncio.create_task(worker.run())
    await asyncio.sleep(0)  # subscribed
    await worker.stop()  # the rest of the shutdown goes on
    await asyncio.wait_for(running, 5)
    assert "could not be stopped cleanly: ConnectionError: the channel could not be closed" in caplog.text
