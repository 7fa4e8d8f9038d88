"""The loss chart: training loss and eval loss against the step, with axes and tick values.

Drawn with plotext (through textual-plotext), which already does axes, ticks, legends and braille
markers better than code of ours would; redrawn within a CPU budget (``budget_chart``). Zoom: all steps,
or the last N (``z`` cycles). Smoothing (``m``): an exponential moving average of the training loss, drawn
over the raw curve, which stays visible, faint.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual.reactive import reactive

from llamaforge_tui.tui.widgets.budget_chart import (  # re-exported: tests and other charts use them
    RENDER_BUDGET,
    ZOOM_LEVELS,
    BudgetChart,
    downsample,
    visible,
    zoom_label,
)

__all__ = ["RENDER_BUDGET", "ZOOM_LEVELS", "LossChart", "downsample", "ema", "visible", "zoom_label"]
EMA_WEIGHT = 0.9  # each smoothed point keeps this much of the previous one (TensorBoard's 0.9 "smoothing")


def ema(values: Sequence[float], weight: float = EMA_WEIGHT, *,
        start: tuple[float, float] = (0.0, 0.0)) -> tuple[list[float], tuple[float, float]]:
    """Exponential moving average, debiased so the first points are not pulled towards 0.

    Returns the smoothed values and the state to continue with: ``start`` takes it back, so a series that
    grows is smoothed once, point by point, not again from its first step at every redraw."""
    out = []
    avg, norm = start
    for v in values:
        avg = weight * avg + (1.0 - weight) * v
        norm = weight * norm + (1.0 - weight)
        out.append(avg / norm)
    return out, (avg, norm)


class LossChart(BudgetChart):
    """Train + eval loss. ``zoom`` is None (all) or a number of most recent steps; ``smooth`` adds the EMA."""

    can_focus = True  # the Train pane's z (zoom) and m (smooth) act on it wherever the pane's focus is

    smooth: reactive[bool] = reactive(False)

    def __init__(self, *, redraw_interval: float = 1.0, id: str | None = None) -> None:
        super().__init__(redraw_interval=redraw_interval, id=id)
        self.train_points: list[tuple[int, float]] = []
        self.eval_points: list[tuple[int, float]] = []
        # The EMA is extended as points arrive (a long run's history is not smoothed again every second).
        self._ema: list[float] = []
        self._ema_state = (0.0, 0.0)

    def set_points(self, train: Sequence[tuple[int, float]], eval_: Sequence[tuple[int, float]]) -> None:
        """Replace the series; redrawn now if the last redraw is old enough, else at the next tick."""
        train, eval_ = list(train), list(eval_)
        if train == self.train_points and eval_ == self.eval_points:
            return
        if train[:len(self.train_points)] != self.train_points:  # not an extension (a resume, another run)
            self._ema, self._ema_state = [], (0.0, 0.0)
        self.train_points, self.eval_points = train, eval_
        self._points_changed()

    def smoothed(self) -> list[tuple[int, float]]:
        """The training loss's EMA, one point per step, brought up to date."""
        new = self.train_points[len(self._ema):]
        if new:
            values, self._ema_state = ema([p[1] for p in new], start=self._ema_state)
            self._ema.extend(values)
        return [(p[0], v) for p, v in zip(self.train_points, self._ema)]

    def action_toggle_smooth(self) -> None:
        self.smooth = not self.smooth

    def watch_smooth(self) -> None:
        self.replot_now()

    @property
    def last_step(self) -> int:
        steps = [p[0] for p in self.train_points[-1:]] + [p[0] for p in self.eval_points[-1:]]
        return max(steps, default=0)

    def _draw(self, columns: int, last_step: int) -> None:
        plt = self.plt
        train = downsample(visible(self.train_points, self.zoom, last_step), columns)
        evals = downsample(visible(self.eval_points, self.zoom, last_step), columns)
        if train:
            plt.plot([p[0] for p in train], [p[1] for p in train], marker="braille",
                     label="train loss (raw)" if self.smooth else "train loss", color="gray" if self.smooth else "cyan")
        if train and self.smooth:
            smooth = downsample(visible(self.smoothed(), self.zoom, last_step), columns)
            plt.plot([p[0] for p in smooth], [p[1] for p in smooth], label="train loss (EMA)", marker="braille",
                     color="cyan")
        if evals:
            plt.plot([p[0] for p in evals], [p[1] for p in evals], label="eval loss", marker="dot", color="orange")
        how = f"{zoom_label(self.zoom)}{', smoothed' if self.smooth else ''}"
        if not train and not evals:
            plt.title(f"loss ({how}) - waiting for the first step")
        else:
            latest = f"{self.train_points[-1][1]:.4f}" if train else "-"  # the last point, not a bucket mean
            plt.title(f"loss ({how}), latest {latest}")
        plt.xlabel("step")
