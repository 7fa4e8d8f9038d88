"""The loss chart: training loss and eval loss against the step, with axes and tick values.

Drawn with plotext (through textual-plotext), which already does axes, ticks, legends and braille
markers better than code of ours would. Points arrive faster than a terminal needs redraws, so
``set_points`` only marks the chart dirty and a timer redraws it a few times a second at most.
Zoom: all steps, or the last N (``z`` cycles).
"""

from __future__ import annotations

from collections.abc import Sequence

from textual.binding import Binding
from textual.reactive import reactive
from textual_plotext import PlotextPlot

ZOOM_LEVELS: tuple[int | None, ...] = (None, 50, 200, 1000)  # None = all


def zoom_label(zoom: int | None) -> str:
    return "all steps" if zoom is None else f"last {zoom} steps"


def visible(points: Sequence[tuple[int, float]], zoom: int | None, last_step: int) -> list[tuple[int, float]]:
    """Points within the zoom window: steps greater than ``last_step - zoom`` (all when zoom is None)."""
    if zoom is None:
        return list(points)
    first = last_step - zoom
    return [p for p in points if p[0] > first]


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

    def on_mount(self) -> None:
        super().on_mount()
        self.set_interval(self._redraw_interval, self._redraw_if_dirty, name="loss-chart-redraw")
        self._replot()

    def set_points(self, train: Sequence[tuple[int, float]], eval_: Sequence[tuple[int, float]]) -> None:
        """Replace the series. Cheap: the redraw happens on the next timer tick."""
        self.train_points = list(train)
        self.eval_points = list(eval_)
        self._dirty = True

    def action_cycle_zoom(self) -> None:
        index = ZOOM_LEVELS.index(self.zoom) if self.zoom in ZOOM_LEVELS else 0
        self.zoom = ZOOM_LEVELS[(index + 1) % len(ZOOM_LEVELS)]

    def watch_zoom(self) -> None:
        self._dirty = True
        self._redraw_if_dirty()

    def _redraw_if_dirty(self) -> None:
        if self._dirty and self.is_mounted:
            self._replot()

    @property
    def last_step(self) -> int:
        steps = [p[0] for p in self.train_points[-1:]] + [p[0] for p in self.eval_points[-1:]]
        return max(steps, default=0)

    def _replot(self) -> None:
        self._dirty = False
        self.redraws += 1
        plt = self.plt
        plt.clear_data()
        last = self.last_step
        self.drawn_step = last
        train = visible(self.train_points, self.zoom, last)
        evals = visible(self.eval_points, self.zoom, last)
        if train:
            plt.plot([p[0] for p in train], [p[1] for p in train], label="train loss", marker="braille",
                     color="cyan")
        if evals:
            plt.plot([p[0] for p in evals], [p[1] for p in evals], label="eval loss", marker="dot",
                     color="orange")
        if not train and not evals:
            plt.title(f"loss ({zoom_label(self.zoom)}) - waiting for the first step")
        else:
            latest = f"{train[-1][1]:.4f}" if train else "-"
            plt.title(f"loss ({zoom_label(self.zoom)}), latest {latest}")
        plt.xlabel("step")
        self.refresh()
