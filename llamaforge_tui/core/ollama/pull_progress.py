"""Per-layer progress of a pull: bytes, speed and ETA from the server's ``/api/pull`` lines.

The CLI and the TUI's pull screen both feed ``PullTracker.update`` with each ``PullProgress`` and draw what
it holds. Speed is measured over a sliding window of a few seconds, so a stall shows as a falling speed
rather than the average since the start.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from llamaforge_tui.core.ollama.client import PullProgress

WINDOW_SECONDS = 5.0


@dataclass
class LayerProgress:
    digest: str
    total: int = 0
    completed: int = 0
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    @property
    def done(self) -> bool:
        return self.total > 0 and self.completed >= self.total

    @property
    def fraction(self) -> float:
        return min(1.0, self.completed / self.total) if self.total else 0.0

    @property
    def speed(self) -> float | None:
        """Bytes a second over the last few seconds; None until two samples are apart in time."""
        if len(self.samples) < 2:
            return None
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None

    @property
    def eta_seconds(self) -> float | None:
        speed = self.speed
        if self.done:
            return 0.0
        return max(0.0, (self.total - self.completed) / speed) if speed and speed > 0 and self.total else None

    @property
    def short(self) -> str:
        return self.digest.split(":", 1)[-1][:12]


@dataclass
class PullTracker:
    name: str
    status: str = ""
    layers: dict[str, LayerProgress] = field(default_factory=dict)
    finished: bool = False

    def update(self, line: PullProgress, now: float | None = None) -> LayerProgress | None:
        """Take one line; returns the layer it moved (None for a plain status line)."""
        now = time.monotonic() if now is None else now
        self.status = line.status
        if line.status == "success":
            self.finished = True
        if not line.digest:
            return None
        layer = self.layers.get(line.digest)
        if layer is None:
            layer = self.layers[line.digest] = LayerProgress(line.digest)
        layer.total = int(line.total or layer.total or 0)
        layer.completed = int(line.completed or 0)
        layer.samples.append((now, layer.completed))
        while len(layer.samples) > 2 and now - layer.samples[0][0] > WINDOW_SECONDS:
            layer.samples.popleft()
        return layer

    @property
    def total_bytes(self) -> int:
        return sum(layer.total for layer in self.layers.values())

    @property
    def completed_bytes(self) -> int:
        return sum(layer.completed for layer in self.layers.values())


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
