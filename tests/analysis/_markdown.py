"""Read the tables of a generated markdown report in tests: a row by its first cell, a section by its heading."""

from __future__ import annotations


def md_row(md: str, first: str) -> list[str]:
    """The cells of the first table row whose first cell is ``first``."""
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row for {first} in\n{md}")


def md_section(md: str, heading: str) -> str:
    """From the line starting with ``heading`` to the next ``## `` heading."""
    start = md.index("\n" + heading) + 1
    end = md.find("\n## ", start)
    return md[start:] if end < 0 else md[start:end]
