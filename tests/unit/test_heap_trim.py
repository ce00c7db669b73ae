"""The heap trimmer: glibc's malloc_trim gives freed pages back, once a minute in every process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

from bridge.heap_trim import HeapTrimmer, glibc_malloc_trim

# Freed memory the allocator keeps: small blocks freed around a few kept alive, so no free
# page is at the end of the heap, where free() itself would give it back.
FRAGMENTED_HEAP = textwrap.dedent(
    """
    from bridge.heap_trim import glibc_malloc_trim

    def rss_kib():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

    blocks = [bytearray(1000) for _ in range(60_000)]
    kept = blocks[::64]
    del blocks
    before = rss_kib()
    glibc_malloc_trim()()
    print(before, rss_kib())
    """
)


def test_malloc_trim_gives_freed_pages_back_to_the_system() -> None:
    assert glibc_malloc_trim() is not None  # this Linux has glibc
    answer = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, check=True)
    before, after = (int(kib) for kib in answer.stdout.split())
    assert before - after > 30_000, (before, after)  # most of the ~58 MiB freed


async def test_the_trimmer_trims_on_its_interval_until_stopped() -> None:
    trims: list[int] = []
    three = asyncio.Event()

    def trim() -> int:
        trims.append(1)
        if len(trims) == 3:
            three.set()
        return 1

    trimmer = HeapTrimmer(trim, every_s=0.01)
    running = asyncio.create_task(trimmer.run())
    await asyncio.wait_for(three.wait(), 5)
    await trimmer.stop()
    await asyncio.wait_for(running, 1)
    counted = len(trims)
    await asyncio.sleep(0.05)
    assert len(trims) == counted  # nothing after the stop


async def test_without_malloc_trim_the_trimmer_does_nothing() -> None:
    await asyncio.wait_for(HeapTrimmer(None, every_s=0.01).run(), 1)
