"""Plain-text tables for the terminal: aligned columns, long cells cut short."""

from __future__ import annotations

from collections.abc import Sequence


def excerpt(value: object, width: int) -> str:
    """``value`` on one line, at most ``width`` characters (an ellipsis marks a cut)."""
    text = " ".join(str("" if value is None else value).split())
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, max_width: int = 60) -> str:
    """Rows under their headers, each column as wide as its widest cell (up to ``max_width``)."""
    cells = [[excerpt(cell, max_width) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    lines += ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines)
