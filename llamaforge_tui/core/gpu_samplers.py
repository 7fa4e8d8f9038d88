"""GPU samplers beside NVML: AMD GPUs through AMD SMI, the Apple GPU through ``torch.mps``, and the sampler that
uses whichever this machine has. Each is a callable ``() -> list[GpuSample] | GpuUnavailable``, like
``system.NvmlSampler``, with the same rules: slow fields read once, a field the device cannot report is
``None`` (N/A) rather than a failed sample, and "no GPU" is a value with a reason a person can act on.

AMD SMI (PyPI ``amdsmi``, the ``amd`` extra) wraps ``libamd_smi.so`` from ROCm. Its units, per AMD's
Python API reference: VRAM in MB, temperatures in degrees C, socket power and the power limit in W, the power
cap in microwatts; a field the device does not report comes back as the string ``"N/A"`` (the wrapper maps
the C API's 0xFFFF to it). Importing the package without the C library *prints* a message and then fails,
so the import runs with stdout captured: a print would tear the TUI's screen.

The Apple sampler reads this process's Metal memory, so it describes the run the TUI trains in its own
process. Apple has no public API for GPU utilisation, temperature or power without root: those are N/A.
"""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from llamaforge_tui.core.system import (
    GpuResult,
    GpuSample,
    GpuSampler,
    GpuUnavailable,
    LibrarySampler,
    NvmlSampler,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
MIB = 1024**2
_SENTINELS = {0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF}  # "not reported" in the C structs


def _number(value: Any) -> float | None:
    """A reported number, or None for "N/A", a sentinel, or anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value in _SENTINELS or value < 0:
        return None
    return float(value)


def apple_chip() -> str | None:
    """"Apple M2 Pro" on a Mac (sysctl), else None."""
    if sys.platform != "darwin":
        return None
    try:
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                             timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


# -- AMD ------------------------------------------------------------------------------------------------------------
def _load_amdsmi() -> tuple[Any | None, str | None]:
    """(the amdsmi module, None) or (None, why not)."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            import amdsmi
    except ModuleNotFoundError:
        return None, "no AMD GPU monitoring: the amdsmi package is not installed (pip install 'llamaforge-tui[amd]')"
    except Exception as exc:  # noqa: BLE001 - the wrapper fails in assorted ways without libamd_smi.so
        log.debug("amdsmi import failed: %s %s", exc, captured.getvalue().strip())
        return None, "no AMD GPU: AMD SMI's library (libamd_smi.so, from ROCm's amd-smi-lib) is not installed"
    return amdsmi, None


@dataclass
class _AmdDevice:
    index: int
    handle: Any
    name: str
    memory_total: int | None
    power_limit_w: float | None
    temperature_sensor: Any


@dataclass
class AmdSmiSampler(LibrarySampler):
    """Samples every AMD GPU through AMD SMI. ``smi`` is the amdsmi module, replaceable by a fake in tests."""

    smi: Any = None
    vendor: ClassVar[str] = "AMD"
    _devices: list[_AmdDevice] | None = field(default=None, init=False, repr=False)
    _unavailable: GpuUnavailable | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _shutdown(self) -> None:
        self._call(self.smi.amdsmi_shut_down)

    def _open(self) -> None:
        if self.smi is None:
            self.smi, reason = _load_amdsmi()
            if self.smi is None:
                self._unavailable = GpuUnavailable(reason or "no AMD GPU")
                return
        smi = self.smi
        try:
            smi.amdsmi_init()
        except smi.AmdSmiException as exc:
            self._unavailable = GpuUnavailable(f"no AMD GPU: AMD SMI could not start; is the amdgpu driver loaded? ({exc})")
            return
        handles = self._call(smi.amdsmi_get_processor_handles) or []
        if not handles:
            self._call(smi.amdsmi_shut_down)
            self._unavailable = GpuUnavailable("no AMD GPU: AMD SMI started but reports no GPUs")
            return
        self._devices = [self._describe(index, handle) for index, handle in enumerate(handles)]

    def _describe(self, index: int, handle: Any) -> _AmdDevice:
        smi = self.smi
        asic = self._call(smi.amdsmi_get_gpu_asic_info, handle) or {}
        vram = self._call(smi.amdsmi_get_gpu_vram_usage, handle) or {}
        total_mb = _number(vram.get("vram_total"))
        power = self._call(smi.amdsmi_get_power_info, handle) or {}
        limit = _number(power.get("power_limit"))  # W
        if limit is None:
            cap = self._call(smi.amdsmi_get_power_cap_info, handle) or {}
            cap_uw = _number(cap.get("power_cap"))
            limit = cap_uw / 1e6 if cap_uw else None
        sensor = None
        kinds = smi.AmdSmiTemperatureType
        for kind in (getattr(kinds, "HOTSPOT", None), getattr(kinds, "EDGE", None)):
            if kind is not None and _number(self._call(smi.amdsmi_get_temp_metric, handle, kind,
                                                       smi.AmdSmiTemperatureMetric.CURRENT)) is not None:
                sensor = kind
                break
        name = str(asic.get("market_name") or "").strip() or f"AMD GPU {index}"
        return _AmdDevice(index, handle, name, int(total_mb * MIB) if total_mb is not None else None, limit or None,
                          sensor)

    def _sample_device(self, dev: _AmdDevice) -> GpuSample:
        smi = self.smi
        activity = self._call(smi.amdsmi_get_gpu_activity, dev.handle) or {}
        vram = self._call(smi.amdsmi_get_gpu_vram_usage, dev.handle) or {}
        power = self._call(smi.amdsmi_get_power_info, dev.handle) or {}
        temp = None
        if dev.temperature_sensor is not None:
            temp = _number(self._call(smi.amdsmi_get_temp_metric, dev.handle, dev.temperature_sensor,
                                      smi.AmdSmiTemperatureMetric.CURRENT))
        used_mb = _number(vram.get("vram_used"))
        total_mb = _number(vram.get("vram_total"))
        watts = _number(power.get("current_socket_power"))  # MI300-class reports current, MI200 average
        if not watts:
            watts = _number(power.get("average_socket_power"))
        return GpuSample(
            index=dev.index, name=dev.name, vendor="amd",
            utilization_percent=_number(activity.get("gfx_activity")),
            memory_used=int(used_mb * MIB) if used_mb is not None else None,
            memory_total=int(total_mb * MIB) if total_mb is not None else dev.memory_total,
            temperature_c=temp, power_w=watts, power_limit_w=dev.power_limit_w)

    def _call(self, fn: Callable[..., T], *args: Any) -> T | None:
        """One AMD SMI query; ``None`` when this device cannot answer it (N/A, not an error)."""
        try:
            return fn(*args)
        except self.smi.AmdSmiException as exc:
            log.debug("AMD SMI %s failed: %s", getattr(fn, "__name__", fn), exc)
            return None


# -- Apple (MPS) ----------------------------------------------------------------------------------------------------
@dataclass
class MpsSampler:
    """The Apple GPU as this process uses it. ``torch_module`` and ``platform`` are replaceable in tests."""

    torch_module: Any = None
    platform: str = field(default_factory=lambda: sys.platform)
    vendor: ClassVar[str] = "Apple"
    _name: str | None = field(default=None, init=False, repr=False)
    _limit: int | None = field(default=None, init=False, repr=False)
    _unavailable: GpuUnavailable | None = field(default=None, init=False, repr=False)

    def __call__(self) -> GpuResult:
        return self.sample()

    def sample(self) -> GpuResult:
        if self._name is None and self._unavailable is None:
            self._open()
        if self._unavailable is not None:
            return self._unavailable
        mps = self.torch_module.mps
        return [GpuSample(index=0, name=self._name or "Apple GPU", vendor="apple",
                          memory_used=self._bytes(mps.driver_allocated_memory), memory_total=self._limit,
                          allocated=self._bytes(mps.current_allocated_memory))]

    def close(self) -> None:
        """Nothing to release; here so every sampler closes alike."""

    def _open(self) -> None:
        if self.platform != "darwin":
            self._unavailable = GpuUnavailable("no Apple GPU: this is not a Mac")
            return
        if self.torch_module is None:
            import torch

            self.torch_module = torch
        backend = getattr(self.torch_module.backends, "mps", None)
        if backend is None or not backend.is_available():
            self._unavailable = GpuUnavailable("no Apple GPU: this torch cannot use MPS (it needs an Apple Silicon "
                                               "Mac with macOS 12.3+ and a torch built for it)")
            return
        self._limit = self._bytes(getattr(self.torch_module.mps, "recommended_max_memory", None))  # torch 2.5+
        self._name = apple_chip() or "Apple GPU"

    @staticmethod
    def _bytes(fn: Callable[[], int] | None) -> int | None:
        if fn is None:
            return None
        try:
            return int(fn())
        except (RuntimeError, AttributeError) as exc:
            log.debug("torch.mps query failed: %s", exc)
            return None


# -- whichever this machine has -------------------------------------------------------------------------------------
class AutoGpuSampler:
    """Tries each backend once, in order, and keeps the first that finds GPUs (NVIDIA, then AMD; on a Mac the
    Apple GPU). With none, the sample is one ``GpuUnavailable`` naming what was looked for, with every
    backend's reason in its ``details``."""

    def __init__(self, samplers: Sequence[GpuSampler] | None = None) -> None:
        if samplers is None:
            samplers = [MpsSampler()] if sys.platform == "darwin" else [NvmlSampler(), AmdSmiSampler()]
        self.samplers = list(samplers)
        self.active: GpuSampler | None = None
        self._unavailable: GpuUnavailable | None = None
        self._lock = threading.Lock()

    def __call__(self) -> GpuResult:
        with self._lock:
            if self.active is None and self._unavailable is None:
                self._pick()
            if self.active is not None:
                return self.active()
            assert self._unavailable is not None
            return self._unavailable

    def _pick(self) -> None:
        reasons = []
        for sampler in self.samplers:
            result = sampler()
            if isinstance(result, list) and result:
                self.active = sampler
                break
            reasons.append(result.reason if isinstance(result, GpuUnavailable) else "no devices")
        for sampler in self.samplers:
            if sampler is not self.active:
                _close(sampler)
        if self.active is None:
            vendors = " or ".join(getattr(s, "vendor", "other") for s in self.samplers)
            self._unavailable = GpuUnavailable(f"no {vendors} GPU found", details="; ".join(reasons))

    def close(self) -> None:
        with self._lock:
            if self.active is not None:
                _close(self.active)
            self.active = None
            self._unavailable = None


def _close(sampler: Any) -> None:
    close = getattr(sampler, "close", None)
    if callable(close):
        close()
