"""A small chart under the loss chart: the gradient norm or the learning rate against the step (``g`` cycles).

One chart for both, not two, so watching a run costs one more small draw a second, not two; it follows the
loss chart's zoom. Its budget is half the loss chart's: it has fewer cells to draw.
"""

from __future__ import annotations

from collections.abc import Sequence

from llamaforge_tui.tui.widgets.budget_chart import RENDER_BUDGET, BudgetChart, downsample, visible, zoom_label

METRICS: tuple[tuple[str, str, str], ...] = (
    # (key, title, format of the latest value)
    ("grad_norm", "grad-norm", "{:.3f}"),
    ("lr", "learning rate", "{:.2e}"),
)


class MetricChart(BudgetChart):
    """``metric`` is one of METRICS' keys; ``set_series`` gives every metric's points, the chart draws one."""

    def __init__(self, *, redraw_interval: float = 1.0, id: str | None = None) -> None:
        super().__init__(redraw_interval=redraw_interval, render_budget=RENDER_BUDGET / 2, id=id)
        self.metric = METRICS[0][0]
        self.series: dict[str, list[tuple[int, float]]] = {key: [] for key, _, _ in METRICS}

    def set_series(self, series: dict[str, Sequence[tuple[int, float]]]) -> None:
        changed = False
        for key in self.series:
            points = list(series.get(key, ()))
            if points != self.series[key]:
                self.series[key] = points
                changed = changed or key == self.metric
        if changed:
            self._points_changed()

    def cycle_metric(self) -> None:
        keys = [key for key, _, _ in METRICS]
        self.metric = keys[(keys.index(self.metric) + 1) % len(keys)]
        self.replot_now()

    @property
    def points(self) -> list[tuple[int, float]]:
        return self.series[self.metric]

    @property
    def last_step(self) -> int:
        return self.points[-1][0] if self.points else 0

    def _draw(self, columns: int, last_step: int) -> None:
        plt = self.plt
        _, title, fmt = next(m for m in METRICS if m[0] == self.metric)
        shown = downsample(visible(self.points, self.zoom, last_step), columns)
        if shown:
            plt.plot([p[0] for p in shown], [p[1] for p in shown], marker="braille", color="magenta")
            plt.title(f"{title} ({zoom_label(self.zoom)}), latest {fmt.format(self.points[-1][1])}  [g: next]")
        else:
            plt.title(f"{title} - waiting for the first step  [g: next]")
