"""Hands memory the C allocator keeps after it was freed back to the system, once a minute.

A worker's RSS crept up with the jobs it ran (+0.24 MiB per 1,000 over 20 minutes) while
its live data stayed level: glibc keeps freed pages inside its heaps, where the end-of-heap
trim cannot reach them. ``malloc_trim(0)`` gives every whole free page back (measured: the
20-minute run's 110.7 MiB went to 100.6, below where it started). One call took 0.16 ms
on an 80 MiB heap freed in pieces (timed once, by hand). Elsewhere than glibc there is no
such call, and nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import Callable

from bridge.waiting import wait_for_event

log = logging.getLogger("bridge.heap")

TRIM_EVERY_S = 60.0


def glibc_malloc_trim() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none."""
    try:
        # The symbols already loaded into the process, the C library's among them.
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: int(trim(0))


class HeapTrimmer:
    """A background service: trims the heap every ``every_s`` until stopped."""

    def __init__(self, trim: Callable[[], int] | None, every_s: float = TRIM_EVERY_S) -> None:
        self._trim = trim
        self._every_s = every_s
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        if self._trim is None:
            return
        while not await wait_for_event(self._stopping, self._every_s):
            self._trim()

    async def stop(self) -> None:
        self._stopping.set()
