"""Runs side by side (``v`` in the Runs tab on marked runs): their loss curves overlaid on one chart, and their
figures and configs in one table where the values that differ between runs stand out (``d`` shows every key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Label
from textual_plotext import PlotextPlot

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.train.run_details import RunComparison, compare_runs, duration_text
from llamaforge_tui.tui.widgets.loss_chart import downsample

COLORS = ("cyan", "orange", "green", "magenta", "red", "blue", "yellow", "white")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_rows(comparison: RunComparison, *, all_keys: bool) -> list[tuple[str, list[str], bool]]:
    """(label, one cell per run, differs) rows: the figures, then the config keys (differing ones first)."""
    runs = comparison.runs
    rows: list[tuple[str, list[str], bool]] = [
        ("status", [r.summary.status for r in runs], False),
        ("step", [f"{r.summary.step}/{r.summary.total_steps}" for r in runs], False),
        ("final loss", [_cell(r.summary.final_loss) for r in runs], False),
        ("eval loss", [_cell(r.eval_loss) for r in runs], False),
        ("tokens/s", [_cell(r.tokens_per_second) for r in runs], False),
        ("duration", [duration_text(r.duration_seconds) for r in runs], False),
    ]
    keys = comparison.differing + ([k for k in comparison.keys if k not in comparison.differing] if all_keys else [])
    differing = set(comparison.differing)
    rows += [(key, [_cell(v) for v in comparison.values[key]], key in differing) for key in keys]
    return rows


class CompareScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    CompareScreen {
        align: center middle;
    }
    CompareScreen > Vertical {
        width: 98%;
        height: 95%;
        border: thick $primary;
        background: $surface;
    }
    CompareScreen PlotextPlot {
        height: 1fr;
        min-height: 8;
    }
    CompareScreen DataTable {
        height: 1fr;
    }
    """

    BINDINGS = [
        Binding("d", "toggle_keys", "All config / differing only", id="compare.toggle_keys"),
        Binding("escape,q", "close", "Close", id="compare.close"),
    ]

    def __init__(self, run_dirs: list[Path]) -> None:
        super().__init__()
        self.run_dirs = run_dirs
        self.comparison: RunComparison | None = None
        self.all_keys = False

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(f"Comparing {len(self.run_dirs)} runs…"), id="compare-title")
            yield PlotextPlot(id="compare-chart")
            table: DataTable[Text] = DataTable(id="compare-table", cursor_type="row", zebra_stripes=True)
            yield table
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#compare-table", DataTable).focus()
        self._load()

    @work(thread=True, group="runs-compare", name="runs.compare", description="Comparing runs", exit_on_error=False)
    def _load(self) -> None:
        try:
            comparison = compare_runs(self.run_dirs)
        except (LlamaForgeError, OSError) as exc:
            self.app.call_from_thread(self.query_one("#compare-title", Label).update, Text(f"Cannot compare: {exc}"))
            return
        self.app.call_from_thread(self._show, comparison)

    def _show(self, comparison: RunComparison) -> None:
        self.comparison = comparison
        n = len(comparison.differing)
        self.query_one("#compare-title", Label).update(Text(
            f"{len(comparison.runs)} runs; {n} config value(s) differ (highlighted); d shows every key"))
        self._plot()
        self._fill()

    def _plot(self) -> None:
        assert self.comparison is not None
        chart = self.query_one("#compare-chart", PlotextPlot)
        plt = chart.plt
        plt.clear_data()
        columns = 2 * (chart.size.width - 10) if chart.size.width > 10 else 0
        for i, run in enumerate(self.comparison.runs):
            color = COLORS[i % len(COLORS)]
            train = downsample(run.train_points, columns)
            if train:
                plt.plot([p[0] for p in train], [p[1] for p in train], label=run.run_id, marker="braille",
                         color=color)
            if run.eval_points:
                plt.scatter([p[0] for p in run.eval_points], [p[1] for p in run.eval_points],
                            label=f"{run.run_id} eval", marker="dot", color=color)
        plt.title("train loss (lines) and eval loss (dots) by step")
        plt.xlabel("step")
        chart.refresh()

    def _fill(self) -> None:
        assert self.comparison is not None
        table = self.query_one("#compare-table", DataTable)
        rows = table_rows(self.comparison, all_keys=self.all_keys)
        table.clear(columns=True)
        # The key column gets its width up front: auto-sized under an empty header, it was sometimes drawn blank
        # (its width still 0 at the first paint, about 1 run in 6 of test_compare_fits_80x24).
        table.add_column("", width=max((len(label) + 2 for label, _, _ in rows), default=2))
        for run in self.comparison.runs:
            table.add_column(run.run_id)
        for label, cells, differs in rows:
            style = "bold reverse" if differs else ""
            table.add_row(Text(("≠ " if differs else "  ") + label, style=style),
                          *(Text(c, style=style) for c in cells))

    def on_resize(self) -> None:
        if self.comparison is not None:
            self._plot()

    def action_toggle_keys(self) -> None:
        self.all_keys = not self.all_keys
        if self.comparison is not None:
            self._fill()

    def action_close(self) -> None:
        self.dismiss(None)
