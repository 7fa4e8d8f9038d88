"""A plotext chart that redraws within a CPU budget: the base of the loss chart and the metric chart.

Points arrive faster than a terminal needs redraws, so ``_points_changed`` redraws at once only when the last
redraw is at least ``redraw_interval`` old; otherwise it marks the chart dirty and a timer redraws it, so a
chart is drawn once per interval at most. Drawing is not free (tens of ms of Python on a slow CPU, taken
from a CPU training run), so the interval also stretches to keep each chart within its ``render_budget``
of one core, and long series are averaged down to two points per column (braille has two dots per cell
across) before plotting. Zoom: all steps, or the last N.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from textual.reactive import reactive
from textual_plotext import PlotextPlot

ZOOM_LEVELS: tuple[int | None, ...] = (None, 50, 200, 1000)  # None = all
RENDER_BUDGET = 0.02  # a chart's share of one core, at most: its redraw interval stretches to keep to it

Points = Sequence[tuple[int, float]]


def zoom_label(zoom: int | None) -> str:
    return "all steps" if zoom is None else f"last {zoom} steps"


def visible(points: Points, zoom: int | None, last_step: int) -> list[tuple[int, float]]:
    """Points within the zoom window: steps greater than ``last_step - zoom`` (all when zoom is None)."""
    if zoom is None:
        return list(points)
    first = last_step - zoom
    return [p for p in points if p[0] > first]


def downsample(points: Points, buckets: int) -> list[tuple[int, float]]:
    """At most ``buckets`` points: consecutive runs of points averaged (mean step, mean value), in order.
    A chart cannot show more points than it has dot columns, and plotting them all costs time."""
    if buckets <= 0 or len(points) <= buckets:
        return list(points)
    out: list[tuple[int, float]] = []
    n = len(points)
    for b in range(buckets):
        chunk = points[b * n // buckets:(b + 1) * n // buckets]
        if chunk:
            out.append((round(sum(p[0] for p in chunk) / len(chunk)), sum(p[1] for p in chunk) / len(chunk)))
    return out


class BudgetChart(PlotextPlot):
    """Subclasses draw in ``_draw(columns, last_step)`` and report their series' last step in ``last_step``."""

    zoom: reactive[int | None] = reactive(None)

    def __init__(self, *, redraw_interval: float = 1.0, render_budget: float = RENDER_BUDGET,
                 id: str | None = None) -> None:
        super().__init__(id=id)
        self.redraws = 0
        self.drawn_step = 0
        self.render_budget = render_budget
        self._dirty = True
        self._redraw_interval = redraw_interval
        self._last_redraw = 0.0
        self.render_seconds = 0.0  # how long the last draw took

    def on_mount(self) -> None:
        super().on_mount()
        self.set_interval(self._redraw_interval, self._redraw_if_dirty, name=f"{self.id or 'chart'}-redraw")
        self._replot()

    def _points_changed(self) -> None:
        """The data changed: redraw now if the last redraw is old enough, else at the next tick."""
        self._dirty = True
        if time.monotonic() - self._last_redraw >= 0.9 * self.redraw_interval:
            self._redraw_if_dirty()

    @property
    def redraw_interval(self) -> float:
        """The configured interval, stretched so drawing stays within the chart's budget of a core."""
        return max(self._redraw_interval, self.render_seconds / self.render_budget)

    def render(self):  # noqa: ANN201 - PlotextPlot's own return type
        started = time.perf_counter()
        try:
            return super().render()
        finally:
            self.render_seconds = time.perf_counter() - started

    def action_cycle_zoom(self) -> None:
        index = ZOOM_LEVELS.index(self.zoom) if self.zoom in ZOOM_LEVELS else 0
        self.zoom = ZOOM_LEVELS[(index + 1) % len(ZOOM_LEVELS)]

    def on_resize(self) -> None:
        self._dirty = True  # the downsampling depends on the width
        self._redraw_if_dirty()

    def watch_zoom(self) -> None:
        self.replot_now()

    def replot_now(self) -> None:
        """The user asked for a change (zoom, smoothing, another series): draw now, whatever the budget."""
        self._dirty = True
        if self.is_mounted:
            self._replot()

    def _redraw_if_dirty(self) -> None:
        if self._dirty and self.is_mounted and time.monotonic() - self._last_redraw >= 0.9 * self.redraw_interval:
            self._replot()

    @property
    def last_step(self) -> int:
        return 0

    def _replot(self) -> None:
        self._dirty = False
        self._last_redraw = time.monotonic()
        self.redraws += 1
        self.plt.clear_data()
        last = self.last_step
        self.drawn_step = last
        columns = 2 * (self.size.width - 10) if self.size.width > 10 else 0  # less the y-axis labels; 0: all
        self._draw(columns, last)
        self.refresh()

    def _draw(self, columns: int, last_step: int) -> None:
        raise NotImplementedError
