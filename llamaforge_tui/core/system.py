"""GPU (NVML) and host (psutil) samples for the monitor: plain numbers plus a level enum, never renderables.
(The memory pool a device trains in is ``core.model.memory.device_memory``.)

Why this shape: the Train pane polls these every second for hours, over SSH, on machines that may have
no NVIDIA driver at all. So every field is allowed to be unknown (``None`` -> "N/A"), fields that never
change (name, VRAM total, power limit) are read once and cached, and "no GPU" is a *value*
(``GpuUnavailable`` with a reason a person can act on), not an exception. The UI maps ``Level`` to a CSS
class; the theme decides the colour.

Tests inject a fake NVML module into ``NvmlSampler`` (or pass any ``GpuSampler`` callable to the app). The
AMD (AMD SMI) and Apple (MPS) samplers, and the one that picks whichever this machine has, are in
``gpu_samplers``; they produce the same ``GpuSample``.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar, TypeVar

import psutil

log = logging.getLogger(__name__)

T = TypeVar("T")


class Level(enum.Enum):
    """How worrying a value is. ``NA`` when the value is unknown."""

    NA = "na"
    LOW = "low"
    MODERATE = "moderate"
    HIGH = "high"


# (moderate from, high from) per kind of value; percentages except temperature (degrees C).
THRESHOLDS: dict[str, tuple[float, float]] = {
    "utilization": (50.0, 90.0),
    "memory": (75.0, 90.0),
    "temperature": (70.0, 85.0),
    "power": (75.0, 95.0),
    "cpu": (50.0, 90.0),
    "ram": (75.0, 90.0),
}


def level_for(value: float | None, kind: str) -> Level:
    """Map a value to a ``Level`` with the thresholds of ``kind`` (see ``THRESHOLDS``)."""
    if value is None:
        return Level.NA
    moderate, high = THRESHOLDS[kind]
    if value >= high:
        return Level.HIGH
    if value >= moderate:
        return Level.MODERATE
    return Level.LOW


def _percent(used: float | None, total: float | None) -> float | None:
    if used is None or not total:
        return None
    return 100.0 * used / total


@dataclass(frozen=True)
class GpuSample:
    """One device at one moment. Any field may be ``None`` when the driver does not report it.

    On an Apple GPU (``vendor == "apple"``) ``memory_used`` is what Metal holds for this process
    (``torch.mps.driver_allocated_memory``), ``memory_total`` Metal's recommended working-set limit, and
    ``allocated`` the tensors inside it (``torch.mps.current_allocated_memory``); the memory is the Mac's
    unified RAM, so the host sample's RAM is the same pool seen from the whole system.
    """

    index: int
    name: str
    utilization_percent: float | None = None
    memory_used: int | None = None
    memory_total: int | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    vendor: str = "nvidia"  # "nvidia" | "amd" | "apple"
    allocated: int | None = None  # Apple: bytes of tensors this process holds

    @property
    def memory_percent(self) -> float | None:
        return _percent(self.memory_used, self.memory_total)

    @property
    def memory_free(self) -> int | None:
        if self.memory_used is None or self.memory_total is None:
            return None
        return max(0, self.memory_total - self.memory_used)

    @property
    def power_percent(self) -> float | None:
        return _percent(self.power_w, self.power_limit_w)

    @property
    def utilization_level(self) -> Level:
        return level_for(self.utilization_percent, "utilization")

    @property
    def memory_level(self) -> Level:
        return level_for(self.memory_percent, "memory")

    @property
    def temperature_level(self) -> Level:
        return level_for(self.temperature_c, "temperature")

    @property
    def power_level(self) -> Level:
        return level_for(self.power_percent, "power")


@dataclass(frozen=True)
class GpuUnavailable:
    """There is no GPU to show, and why (no driver, no device, NVML error). ``details``: each backend's own
    reason, when several were tried (too long for the gauges' one line; the UI shows it on demand)."""

    reason: str
    details: str = ""


@dataclass(frozen=True)
class HostSample:
    """CPU and RAM of the machine, and the RSS of the process that trains."""

    cpu_percent: float | None
    ram_used: int | None
    ram_total: int | None
    process_rss: int | None
    cpu_count: int | None = None

    @property
    def ram_percent(self) -> float | None:
        return _percent(self.ram_used, self.ram_total)

    @property
    def ram_available(self) -> int | None:
        if self.ram_used is None or self.ram_total is None:
            return None
        return max(0, self.ram_total - self.ram_used)

    @property
    def cpu_level(self) -> Level:
        return level_for(self.cpu_percent, "cpu")

    @property
    def ram_level(self) -> Level:
        return level_for(self.ram_percent, "ram")


GpuResult = list[GpuSample] | GpuUnavailable
GpuSampler = Callable[[], GpuResult]


def _load_pynvml() -> ModuleType | None:
    try:
        import pynvml  # nvidia-ml-py; pure Python, only dlopens libnvidia-ml at nvmlInit()
    except ImportError:
        return None
    return pynvml


@dataclass
class _DeviceCache:
    index: int
    handle: Any
    name: str
    memory_total: int | None
    power_limit_w: float | None


class LibrarySampler:
    """What every vendor library's sampler shares: the library opens on the first sample and stays open (opening
    per sample costs tens of ms), one sample at a time, and ``close()`` shuts it down. Subclasses (dataclasses)
    hold ``_devices``, ``_unavailable`` and ``_lock`` and define ``_open``, ``_sample_device`` and ``_shutdown``.
    Callable: ``sampler() -> list[GpuSample] | GpuUnavailable``."""

    _devices: list[Any] | None
    _unavailable: GpuUnavailable | None
    _lock: threading.Lock

    def __call__(self) -> GpuResult:
        return self.sample()

    def sample(self) -> GpuResult:
        with self._lock:
            if self._devices is None and self._unavailable is None:
                self._open()
            if self._unavailable is not None:
                return self._unavailable
            assert self._devices is not None
            return [self._sample_device(dev) for dev in self._devices]

    def close(self) -> None:
        with self._lock:
            if self._devices is not None:
                self._shutdown()
            self._devices = None
            self._unavailable = None

    def _open(self) -> None:
        raise NotImplementedError

    def _sample_device(self, device: Any) -> GpuSample:
        raise NotImplementedError

    def _shutdown(self) -> None:
        raise NotImplementedError


@dataclass
class NvmlSampler(LibrarySampler):
    """Samples every NVIDIA device through NVML. Callable: ``sampler() -> list[GpuSample] | GpuUnavailable``.

    NVML is initialised on the first call and kept open (re-initialising per sample costs tens of ms);
    ``close()`` shuts it down. Device handles, names, VRAM totals and power limits are cached. A field the
    device does not support (``NVMLError_NotSupported`` and friends) becomes ``None`` instead of failing the
    whole sample. ``nvml`` is the pynvml module, replaceable by a fake in tests.
    """

    nvml: ModuleType | Any | None = None
    vendor: ClassVar[str] = "NVIDIA"
    _devices: list[_DeviceCache] | None = field(default=None, init=False, repr=False)
    _unavailable: GpuUnavailable | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.nvml is None:
            self.nvml = _load_pynvml()

    def _shutdown(self) -> None:
        self._call(self.nvml.nvmlShutdown)

    # -- internals -------------------------------------------------------------------------------
    def _open(self) -> None:
        nvml = self.nvml
        if nvml is None:
            self._unavailable = GpuUnavailable("no NVIDIA GPU monitoring: the nvidia-ml-py package is not installed")
            return
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            self._unavailable = GpuUnavailable(_init_failure_reason(nvml, exc))
            return
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            self._call(nvml.nvmlShutdown)
            self._unavailable = GpuUnavailable(f"no NVIDIA GPU: cannot count devices ({exc})")
            return
        if count == 0:
            self._call(nvml.nvmlShutdown)
            self._unavailable = GpuUnavailable("no NVIDIA GPU: the driver is loaded but reports no devices")
            return
        devices = []
        for index in range(count):
            handle = self._call(nvml.nvmlDeviceGetHandleByIndex, index)
            if handle is None:  # e.g. a device we have no permission for; show the others
                continue
            name = self._call(nvml.nvmlDeviceGetName, handle)
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            memory = self._call(nvml.nvmlDeviceGetMemoryInfo, handle)
            limit_mw = self._call(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
            devices.append(_DeviceCache(
                index=index,
                handle=handle,
                name=str(name) if name is not None else f"GPU {index}",
                memory_total=int(memory.total) if memory is not None else None,
                power_limit_w=limit_mw / 1000.0 if limit_mw is not None else None,
            ))
        self._devices = devices

    def _sample_device(self, dev: _DeviceCache) -> GpuSample:
        nvml = self.nvml
        util = self._call(nvml.nvmlDeviceGetUtilizationRates, dev.handle)
        memory = self._call(nvml.nvmlDeviceGetMemoryInfo, dev.handle)
        temp = self._call(nvml.nvmlDeviceGetTemperature, dev.handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
        power_mw = self._call(nvml.nvmlDeviceGetPowerUsage, dev.handle)
        return GpuSample(
            index=dev.index,
            name=dev.name,
            utilization_percent=float(util.gpu) if util is not None else None,
            memory_used=int(memory.used) if memory is not None else None,
            memory_total=int(memory.total) if memory is not None else dev.memory_total,
            temperature_c=float(temp) if temp is not None else None,
            power_w=power_mw / 1000.0 if power_mw is not None else None,
            power_limit_w=dev.power_limit_w,
        )

    def _call(self, fn: Callable[..., T], *args: Any) -> T | None:
        """One NVML query; ``None`` when this device or driver cannot answer it (N/A, not an error)."""
        try:
            return fn(*args)
        except self.nvml.NVMLError as exc:
            log.debug("NVML %s failed: %s", getattr(fn, "__name__", fn), exc)
            return None


def _init_failure_reason(nvml: Any, exc: Exception) -> str:
    not_found = getattr(nvml, "NVMLError_LibraryNotFound", None)
    no_driver = getattr(nvml, "NVMLError_DriverNotLoaded", None)
    if not_found is not None and isinstance(exc, not_found):
        return "no NVIDIA GPU: the NVIDIA driver library (libnvidia-ml) is not installed"
    if no_driver is not None and isinstance(exc, no_driver):
        return "no NVIDIA GPU: the NVIDIA driver is not loaded"
    return f"no NVIDIA GPU: NVML could not start ({exc})"


def sample_gpus(nvml: Any | None = None) -> GpuResult:
    """One-shot sample of every NVIDIA device (opens and closes NVML). Pollers should keep an ``NvmlSampler``."""
    sampler = NvmlSampler(nvml)
    try:
        return sampler.sample()
    finally:
        sampler.close()


class HostSampler:
    """CPU %, system RAM and one process's RSS. Callable; keeps the psutil objects so CPU % is a delta.

    ``pid`` is the training process (default: this one, since the TUI trains in a thread). The first
    CPU reading has no interval behind it, so it primes psutil and reports ``None``.
    """

    def __init__(self, pid: int | None = None) -> None:
        self._process: psutil.Process | None
        try:
            self._process = psutil.Process(pid or os.getpid())
        except psutil.Error:
            self._process = None
        self._primed = False

    def __call__(self) -> HostSample:
        return self.sample()

    def sample(self) -> HostSample:
        cpu = psutil.cpu_percent(interval=None)
        cpu_value: float | None = cpu if self._primed else None
        self._primed = True
        vm = psutil.virtual_memory()
        rss: int | None = None
        if self._process is not None:
            try:
                rss = int(self._process.memory_info().rss)
            except psutil.Error:
                rss = None
        return HostSample(
            cpu_percent=cpu_value,
            ram_used=int(vm.total - vm.available),
            ram_total=int(vm.total),
            process_rss=rss,
            cpu_count=psutil.cpu_count(),
        )


def sample_host(pid: int | None = None) -> HostSample:
    """One-shot host sample; CPU % is measured over a short 0.1 s interval so it is never ``None``."""
    vm = psutil.virtual_memory()
    rss: int | None
    try:
        rss = int(psutil.Process(pid or os.getpid()).memory_info().rss)
    except psutil.Error:
        rss = None
    return HostSample(
        cpu_percent=psutil.cpu_percent(interval=0.1),
        ram_used=int(vm.total - vm.available),
        ram_total=int(vm.total),
        process_rss=rss,
        cpu_count=psutil.cpu_count(),
    )
