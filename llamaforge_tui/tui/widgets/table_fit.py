"""Columns that fit the table's width: long text columns (names, repos) shrink first, with an ellipsis; short
ones (numbers with their units, statuses) keep their natural width, so "241.41 MB" is never cut to "241.41".

A DataTable sizes each column to its widest cell and scrolls sideways past its width, which hides whole
columns (the Models table's HF base at 120 columns). ``fit_widths`` decides the widths, ``fit_table`` applies
them; cells are ``Text`` with ``overflow="ellipsis"``, so a narrowed cell ends in "…".
"""

from __future__ import annotations

from collections.abc import Sequence

from textual.widgets import DataTable

MIN_SHRUNK = 8  # a shrunk column keeps at least this many cells ("alice/ti…")


def fit_widths(natural: Sequence[int], shrinkable: Sequence[bool], available: int, *,
               padding: int = 2, minimum: int = MIN_SHRUNK) -> list[int]:
    """Content widths (padding excluded) for columns of ``natural`` widths in ``available`` cells.

    Only ``shrinkable`` columns shrink: the widest first, each to no less than ``minimum`` (or its natural
    width when that is smaller). Fixed columns keep their width even when that overflows: a cut unit is
    worse than a table that scrolls."""
    widths = list(natural)
    excess = sum(widths) + padding * len(widths) - available
    while excess > 0:
        candidates = [i for i, w in enumerate(widths) if shrinkable[i] and w > min(minimum, natural[i])]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: widths[i])
        others = [widths[i] for i in candidates if i != widest]
        floor = max(min(minimum, natural[widest]), max(others, default=0))
        step = min(excess, widths[widest] - floor) if widths[widest] > floor else 1
        widths[widest] -= step
        excess -= step
    return widths


def fit_table(table: DataTable, shrinkable: Sequence[bool], available: int | None = None) -> None:
    """Give ``table``'s columns widths that fit its width (or ``available``), from their cells' widths."""
    columns = list(table.columns.values())
    if not columns:
        return
    width = available if available is not None else table.size.width - 2  # the vertical scrollbar
    if width <= 0:
        return
    natural = [max(column.label.cell_len, _content_width(table, column.key)) for column in columns]
    widths = fit_widths(natural, shrinkable, width, padding=2 * table.cell_padding)
    for column, w in zip(columns, widths):
        column.auto_width = False
        column.width = w
    # DataTable keeps rendered rows and its virtual size in caches: drop them so the new widths show.
    table._clear_caches()  # noqa: SLF001
    table._require_update_dimensions = True  # noqa: SLF001
    table.refresh(layout=True)


def _content_width(table: DataTable, key: object) -> int:
    widest = 0
    for row_key in table.rows:
        cell = table.get_cell(row_key, key)
        length = cell.cell_len if hasattr(cell, "cell_len") else len(str(cell))
        widest = max(widest, length)
    return widest
