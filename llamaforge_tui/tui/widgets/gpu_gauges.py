"""GPU gauges (one row per device: NVIDIA, AMD or the Apple GPU) and the host row (CPU, RAM, the training
process's RSS). On a Mac the RAM gauge reads "UMA": it is the unified memory the Apple GPU trains in.

Sampling runs in a thread worker that waits on its ``cancelled_event`` between samples, so it never
blocks the UI and stops promptly. Samples are posted as a coalescing message: if the UI falls behind,
only the newest sample is drawn. The core hands us levels (``core.system.Level``); we turn them into CSS
classes (``-low``, ``-moderate``, ``-high``, ``-na``) and ``app.tcss`` maps those to theme colours.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Label, Static
from textual.worker import Worker, get_current_worker

from llamaforge_tui.core.fsutil import human_bytes
from llamaforge_tui.core.gpu_samplers import AutoGpuSampler
from llamaforge_tui.core.system import (
    GpuResult,
    GpuSample,
    GpuSampler,
    GpuUnavailable,
    HostSample,
    HostSampler,
    Level,
)

NAME_WIDTH = 14
BAR = 5  # cells per bar: a GPU row fits the monitor column of a 120-column terminal
LEVEL_CLASSES = tuple(f"-{level.value}" for level in Level)
# Dropped from a device name so the model fits the name column: "AMD Instinct MI300X" -> "MI300X".
VENDOR_PREFIXES = ("NVIDIA ", "AMD ", "Apple ", "GeForce ", "Instinct ", "Radeon ")
UNIFIED_TIP = "Unified memory: the Mac's RAM, shared by the CPU and the Apple GPU"


def bar_text(percent: float | None, width: int = 10) -> str:
    """A text bar: ``bar_text(55, 10) -> '█████▌░░░░'``; unknown values give a centred ``N/A``."""
    if percent is None:
        return "N/A".center(width)
    eighths = "▏▎▍▌▋▊▉"
    filled = max(0.0, min(100.0, percent)) / 100.0 * width
    full = int(filled)
    rest = int((filled - full) * 8)
    bar = "█" * full
    if full < width:
        bar += (eighths[rest - 1] if rest else "░") + "░" * (width - full - 1)
    return bar


def _pct(value: float | None) -> str:
    return "N/A" if value is None else f"{value:3.0f}%"


def _gb(value: int | None) -> str:
    if value is None:
        return "N/A"
    return f"{value / 1e9:.0f}" if value >= 99.95e9 else f"{value / 1e9:.1f}"  # 192 GB cards fit the column too


def _used_total(used: int | None, total: int | None) -> str:
    return f"{_gb(used)}/{_gb(total)}G"


class Gauge(Label):
    """One labelled value whose colour follows its level."""

    _text: str | None = None

    def set_value(self, text: str, level: Level) -> None:
        if text != self._text:  # an update repaints even when nothing changed
            self._text = text
            self.update(Text(text), layout=False)  # gauges have fixed widths (app.tcss): no layout pass
        wanted = f"-{level.value}"
        if not self.has_class(wanted):  # a class change restyles (and may re-lay out): only on a new level
            self.remove_class(*LEVEL_CLASSES)
            self.add_class(wanted)


class GpuRow(Horizontal):
    """Utilisation, VRAM, temperature and power of one device."""

    def __init__(self, sample: GpuSample, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._first = sample

    def on_mount(self) -> None:
        self.show(self._first)

    def compose(self) -> ComposeResult:
        yield Label(classes="gpu-name")
        yield Gauge(classes="gauge gpu-util")
        yield Gauge(classes="gauge gpu-mem")
        yield Gauge(classes="gauge gpu-temp")
        yield Gauge(classes="gauge gpu-power")

    def show(self, sample: GpuSample) -> None:
        name = sample.name
        for prefix in VENDOR_PREFIXES:
            name = name.removeprefix(prefix)
        label = "MPS" if sample.vendor == "apple" else f"GPU{sample.index}"
        self.query_one(".gpu-name", Label).update(Text(f"{label} {name}"[:NAME_WIDTH]))
        if sample.vendor == "apple":  # no utilisation to read: the tensors inside Metal's share instead
            self.query_one(".gpu-util", Gauge).set_value(
                f"alloc {_gb(sample.allocated)}G", Level.NA if sample.allocated is None else Level.LOW)
        else:
            self.query_one(".gpu-util", Gauge).set_value(
                f"util {bar_text(sample.utilization_percent, BAR)} {_pct(sample.utilization_percent)}",
                sample.utilization_level)
        self.query_one(".gpu-mem", Gauge).set_value(
            f"mem {bar_text(sample.memory_percent, BAR)} {_used_total(sample.memory_used, sample.memory_total)}",
            sample.memory_level)
        temp = "N/A" if sample.temperature_c is None else f"{sample.temperature_c:.0f}°C"
        self.query_one(".gpu-temp", Gauge).set_value(temp, sample.temperature_level)
        if sample.power_w is None:
            power = "N/A W"
        elif sample.power_limit_w is None:
            power = f"{sample.power_w:.0f}W"
        else:
            power = f"{sample.power_w:.0f}/{sample.power_limit_w:.0f}W"
        self.query_one(".gpu-power", Gauge).set_value(power, sample.power_level)


class HostRow(Horizontal):
    def compose(self) -> ComposeResult:
        yield Label(Text("Host"), classes="gpu-name")
        yield Gauge(classes="gauge host-cpu")
        yield Gauge(classes="gauge host-ram")
        yield Gauge(classes="gauge host-rss")

    def show(self, sample: HostSample, *, unified: bool = False) -> None:
        self.query_one(".host-cpu", Gauge).set_value(
            f"CPU {bar_text(sample.cpu_percent, BAR)} {_pct(sample.cpu_percent)}", sample.cpu_level)
        ram = self.query_one(".host-ram", Gauge)
        ram.set_value(f"{'UMA' if unified else 'RAM'} {bar_text(sample.ram_percent, BAR)} "
                      f"{_used_total(sample.ram_used, sample.ram_total)}", sample.ram_level)
        ram.tooltip = UNIFIED_TIP if unified else None
        self.query_one(".host-rss", Gauge).set_value(f"RSS {human_bytes(sample.process_rss)}", Level.LOW)


class GpuGauges(Vertical):
    """Per-device gauges, a plain "no GPU" line when there is none, and the host row below."""

    class Sampled(Message):
        """A new GPU + host sample. Coalesced: an unprocessed older sample is replaced by a newer one."""

        def __init__(self, gpus: GpuResult, host: HostSample) -> None:
            super().__init__()
            self.gpus = gpus
            self.host = host

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, GpuGauges.Sampled)

    def __init__(self, *, gpu_sampler: GpuSampler | None = None, host_sampler: Any = None,
                 interval: float = 1.0, id: str | None = None) -> None:
        super().__init__(id=id)
        self._owns_sampler = gpu_sampler is None
        self.gpu_sampler: GpuSampler = gpu_sampler or AutoGpuSampler()
        self.host_sampler = host_sampler or HostSampler()
        self.interval = interval
        self.last_gpus: GpuResult | None = None
        self._shown_gpus: GpuResult | None = None
        self.last_host: HostSample | None = None
        self._sampler_worker: Worker[None] | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="gpu-unavailable", markup=False)
        yield Vertical(id="gpu-rows")
        yield HostRow(id="host-row")

    def on_mount(self) -> None:
        self._sampler_worker = self._sample_loop()

    def on_unmount(self) -> None:
        if self._sampler_worker is not None:
            self._sampler_worker.cancel()
        if self._owns_sampler and isinstance(self.gpu_sampler, AutoGpuSampler):
            self.gpu_sampler.close()

    @work(thread=True, group="sampling", name="system-sampler", description="GPU and host sampling",
          exit_on_error=False)
    def _sample_loop(self) -> None:
        worker = get_current_worker()
        while not worker.is_cancelled:
            self.post_message(self.Sampled(self.gpu_sampler(), self.host_sampler()))
            if worker.cancelled_event.wait(self.interval):
                break

    def on_gpu_gauges_sampled(self, message: Sampled) -> None:
        # Not stopped: it bubbles on, so the Train pane can refresh its own widgets in the same frame.
        self.show(message.gpus, message.host)

    def show(self, gpus: GpuResult, host: HostSample) -> None:
        """Draw one sample (also called directly by tests)."""
        self._shown_gpus, self.last_gpus, self.last_host = self.last_gpus, gpus, host
        reason = self.query_one("#gpu-unavailable", Static)
        rows = self.query_one("#gpu-rows", Vertical)
        if isinstance(gpus, GpuUnavailable):
            if not isinstance(self._shown_gpus, GpuUnavailable) or self._shown_gpus.reason != gpus.reason:
                reason.update(Text(f"{gpus.reason[:1].upper()}{gpus.reason[1:]}; showing CPU and RAM instead."))
                reason.tooltip = gpus.details or None
            reason.display = True
            rows.display = False
        else:
            reason.display = False
            rows.display = True
            existing = list(rows.query(GpuRow))
            if len(existing) != len(gpus):
                rows.remove_children()
                rows.mount_all(GpuRow(sample, classes="gpu-row") for sample in gpus)
            else:
                for row, sample in zip(existing, gpus):
                    row.show(sample)
        self.query_one(HostRow).show(host, unified=_apple(gpus))

    @property
    def free_accelerator_bytes(self) -> tuple[str, int | None]:
        """("VRAM", free bytes of the emptiest GPU), ("unified memory", what the Apple GPU can still take: no
        more than the Mac has available) or ("RAM", available RAM): what a run can use
        (as ``core.model.memory.device_memory``)."""
        host_free = self.last_host.ram_available if self.last_host else None
        if _apple(self.last_gpus):
            assert isinstance(self.last_gpus, list)
            frees = [f for f in (self.last_gpus[0].memory_free, host_free) if f is not None]
            return "unified memory", min(frees) if frees else None
        if isinstance(self.last_gpus, list) and self.last_gpus:
            frees = [g.memory_free for g in self.last_gpus if g.memory_free is not None]
            return "VRAM", max(frees) if frees else None
        return "RAM", host_free


def _apple(gpus: GpuResult | None) -> bool:
    return isinstance(gpus, list) and bool(gpus) and gpus[0].vendor == "apple"
