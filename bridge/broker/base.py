"""The job queue's interface: wake-ups that say "look at job X now (or after a delay)".

Messages carry job ids and nothing else; the database holds the truth. Losing a
message only delays work (the scheduler re-enqueues due jobs), and a message
delivered twice is harmless (the job's lease decides who works on it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

# Called with the job id of each delivered message. Returning acknowledges the
# message; raising hands it back to the broker (which dead-letters it after too
# many deliveries). A lost broker connection does not cut a running handler off:
# it finishes, only its acknowledgement is lost, and the message comes again.
WakeUpHandler = Callable[[str], Awaitable[None]]


# The longest pause before a message whose handler raised goes back to the queue.
MAX_REDELIVERY_DELAY_S = 30.0


def redelivery_pause_s(first_s: float, failed_before: int) -> float:
    """The pause before a message whose handler raised goes back: ``first_s``, doubled for each
    earlier failed delivery. A handler fails when the database or the broker is briefly
    unavailable; redelivered at once, a message would use up its deliveries within
    milliseconds and be dead-lettered."""
    return min(first_s * 2.0 ** min(failed_before, 16), MAX_REDELIVERY_DELAY_S)


class PublishError(Exception):
    """The broker did not confirm a message (unreachable, nacked, or returned as unroutable)."""


class Consumer(Protocol):
    async def stop(self) -> None:
        """Stop taking new messages, then wait for the handlers already running."""


class JobQueue(Protocol):
    async def start(self) -> None:
        """Connect and declare what the queue needs."""

    async def close(self) -> None: ...

    async def publish(self, job_id: str, delay_s: float = 0.0) -> None:
        """Return only once the broker has the message safely; raise PublishError otherwise."""

    async def publish_many(self, job_ids: Sequence[str]) -> None:
        """Wake several jobs now, as :meth:`publish` would each (the broker may carry them in
        fewer messages); raise PublishError unless the broker has them all."""

    async def consume(self, handler: WakeUpHandler, prefetch: int) -> Consumer:
        """Deliver messages to ``handler``, at most ``prefetch`` unacknowledged at a time."""

    async def ping(self) -> bool:
        """Whether the broker answers now (for readiness checks)."""
