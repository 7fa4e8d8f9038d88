"""The loss chart: training loss and eval loss against the step, with axes and tick values.

Drawn with plotext (through textual-plotext), which already does axes, ticks, legends and braille
markers better than code of ours would. Points arrive faster than a terminal needs redraws, so
``set_points`` redraws at once only when the last redraw is at least ``redraw_interval`` old; otherwise
it marks the chart dirty and a timer redraws it, so the chart is drawn once per interval at most.
Drawing is not free (tens of ms of Python on a slow CPU, taken from a CPU training run), so the interval
also stretches to keep the chart within ``RENDER_BUDGET`` of one core, and a long run's series is
averaged down to two points per column (braille has two dots per cell across) before plotting.
Zoom: all steps, or the last N (``z`` cycles).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from textual.binding import Binding
from textual.reactive import reactive
from textual_plotext import PlotextPlot

ZOOM_LEVELS: tuple[int | None, ...] = (None, 50, 200, 1000)  # None = all
RENDER_BUDGET = 0.02  # the chart's share of one core, at most: its redraw interval stretches to keep to it


def zoom_label(zoom: int | None) -> str:
    return "all steps" if zoom is None else f"last {zoom} steps"


def visible(points: Sequence[tuple[int, float]], zoom: int | None, last_step: int) -> list[tuple[int, float]]:
    """Points within the zoom window: steps greater than ``last_step - zoom`` (all when zoom is None)."""
    if zoom is None:
        return list(points)
    first = last_step - zoom
    return [p for p in points if p[0] > first]


def downsample(points: Sequence[tuple[int, float]], buckets: int) -> list[tuple[int, float]]:
    """At most ``buckets`` points: consecutive runs of points averaged (mean step, mean loss), in order.
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


class LossChart(PlotextPlot):
    """Train + eval loss. ``zoom`` is None (all) or a number of most recent steps."""

    can_focus = True
    BINDINGS = [Binding("z", "cycle_zoom", "Zoom", id="training.chart_zoom")]

    zoom: reactive[int | None] = reactive(None)

    def __init__(self, *, redraw_interval: float = 1.0, id: str | None = None) -> None:
        super().__init__(id=id)
        self.train_points: list[tuple[int, float]] = []
        self.eval_points: list[tuple[int, float]] = []
        self.redraws = 0
        self.drawn_step = 0
        self._dirty = True
        self._redraw_interval = redraw_interval
        self._last_redraw = 0.0
        self.render_seconds = 0.0  # how long the last draw took

    def on_mount(self) -> None:
        super().on_mount()
        self.set_interval(self._redraw_interval, self._redraw_if_dirty, name="loss-chart-redraw")
        self._replot()

    def set_points(self, train: Sequence[tuple[int, float]], eval_: Sequence[tuple[int, float]]) -> None:
        """Replace the series; redrawn now if the last redraw is old enough, else at the next tick."""
        train, eval_ = list(train), list(eval_)
        if train == self.train_points and eval_ == self.eval_points:
            return
        self.train_points, self.eval_points = train, eval_
        self._dirty = True
        if time.monotonic() - self._last_redraw >= 0.9 * self.redraw_interval:
            self._redraw_if_dirty()

    @property
    def redraw_interval(self) -> float:
        """The configured interval, stretched so drawing stays within ``RENDER_BUDGET`` of a core."""
        return max(self._redraw_interval, self.render_seconds / RENDER_BUDGET)

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
        self._dirty = True
        if self.is_mounted:
            self._replot()  # the user asked: now, whatever the budget

    def _redraw_if_dirty(self) -> None:
        if self._dirty and self.is_mounted and time.monotonic() - self._last_redraw >= 0.9 * self.redraw_interval:
            self._replot()

    @property
    def last_step(self) -> int:
        steps = [p[0] for p in self.train_points[-1:]] + [p[0] for p in self.eval_points[-1:]]
        return max(steps, default=0)

    def _replot(self) -> None:
        self._dirty = False
        self._last_redraw = time.monotonic()
        self.redraws += 1
        plt = self.plt
        plt.clear_data()
        last = self.last_step
        self.drawn_step = last
        columns = 2 * (self.size.width - 10) if self.size.width > 10 else 0  # less the y-axis labels; 0: all
        train = downsample(visible(self.train_points, self.zoom, last), columns)
        evals = downsample(visible(self.eval_points, self.zoom, last), columns)
        if train:
            plt.plot([p[0] for p in train], [p[1] for p in train], label="train loss", marker="braille",
                     color="cyan")
        if evals:
            plt.plot([p[0] for p in evals], [p[1] for p in evals], label="eval loss", marker="dot",
                     color="orange")
        if not train and not evals:
            plt.title(f"loss ({zoom_label(self.zoom)}) - waiting for the first step")
        else:
            latest = f"{self.train_points[-1][1]:.4f}" if train else "-"  # the last point, not a bucket mean
            plt.title(f"loss ({zoom_label(self.zoom)}), latest {latest}")
        plt.xlabel("step")
        self.refresh()
