"""Summarise a ``py-spy record -f raw`` profile: where the samples went.

Prints the functions with the most samples on the stack (inclusive) and at the
top of it (self), as shares of all samples. Idle samples (the event loop waiting
in select/epoll) are counted apart, so the shares are of busy time.

Run: ``python bench/profile_summary.py bench/out/intake-serve.pyspy.txt [--top 30] [--match intake]``
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

IDLE = ("select (selectors.py", "poll (selectors.py", "_run_once", "run_forever")


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def is_idle(frames: list[str]) -> bool:
    top = frames[-1]
    return top.startswith(("select (selectors.py", "poll (selectors.py", "run_forever (")) or "epoll" in top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--match", default="", help="only functions whose frame text contains this")
    args = parser.parse_args()
    stacks = load(args.profile)
    total = sum(n for _, n in stacks)
    idle = sum(n for frames, n in stacks if is_idle(frames))
    busy = total - idle
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, n in stacks:
        if is_idle(frames):
            continue
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    print(f"{total} samples, {idle} idle ({idle / max(total, 1):.0%}), {busy} busy")
    for title, counter in (("inclusive (on the stack)", inclusive), ("self (top of the stack)", own)):
        print(f"\n{title}, % of busy samples:")
        shown = 0
        for frame, n in counter.most_common():
            if args.match and args.match not in frame:
                continue
            print(f"{n / max(busy, 1):6.1%}  {frame}")
            shown += 1
            if shown >= args.top:
                break


if __name__ == "__main__":
    main()
