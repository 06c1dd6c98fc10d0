"""Plain-text tables for the command line's reports."""

from __future__ import annotations


def table(headers: list[str], rows: list[list[str]], align: str, indent: str = "",
          empty: str | None = None) -> str:
    """Aligned columns: ``align`` has an ``l`` or ``r`` per column. ``empty``: what to print
    instead when there are no rows (None: the header alone)."""
    assert len(align) == len(headers), (align, headers)
    if not rows and empty is not None:
        return indent + empty
    cells = [headers, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        assert len(row) == len(headers), row
        padded = (c.rjust(w) if a == "r" else c.ljust(w)
                  for c, w, a in zip(row, widths, align, strict=True))
        lines.append((indent + "  ".join(padded)).rstrip())
    return "\n".join(lines)
