"""GPU samplers beyond NVML, with fakes (this machine has no AMD GPU and is no Mac): AMD SMI with two GPUs and
an N/A field, the Apple GPU through a fake torch.mps, the sampler that picks a backend, and the memory pool."""

from __future__ import annotations

import enum
import sys
from types import SimpleNamespace

import psutil
import pytest

from llamaforge_tui.core import gpu_samplers
from llamaforge_tui.core.gpu_samplers import AmdSmiSampler, AutoGpuSampler, MpsSampler
from llamaforge_tui.core.model import memory
from llamaforge_tui.core.model.memory import device_memory
from llamaforge_tui.core.system import GpuSample, GpuUnavailable, Level, NvmlSampler

MIB = 1024**2


class FakeAmdSmi:
    """Just enough of the amdsmi module, with its units (MB, W, degrees C) and its "N/A" strings. Two GPUs;
    GPU 1 has no power reading ("N/A") and no HOTSPOT sensor (EDGE instead)."""

    class AmdSmiException(Exception):
        pass

    class AmdSmiTemperatureType(enum.IntEnum):
        EDGE = 0
        HOTSPOT = 1

    class AmdSmiTemperatureMetric(enum.IntEnum):
        CURRENT = 0

    def __init__(self, count: int = 2, init_error: bool = False) -> None:
        self.count, self.init_error = count, init_error
        self.calls: dict[str, int] = {}
        self.shutdowns = 0

    def _n(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def amdsmi_init(self) -> None:
        self._n("init")
        if self.init_error:
            raise self.AmdSmiException("AMDSMI_STATUS_INIT_ERROR - Initialization error")

    def amdsmi_shut_down(self) -> None:
        self.shutdowns += 1

    def amdsmi_get_processor_handles(self) -> list[str]:
        return [f"h{i}" for i in range(self.count)]

    def amdsmi_get_gpu_asic_info(self, h: str) -> dict:
        self._n("asic")
        return {"market_name": "AMD Instinct MI300X" if h == "h0" else "AMD Radeon RX 7900 XTX"}

    def amdsmi_get_gpu_vram_usage(self, h: str) -> dict:
        return {"vram_total": 196_592 if h == "h0" else 24_560, "vram_used": 180_000 if h == "h0" else 1_000}

    def amdsmi_get_gpu_activity(self, h: str) -> dict:
        return {"gfx_activity": 97 if h == "h0" else 3, "umc_activity": "N/A", "mm_activity": "N/A"}

    def amdsmi_get_power_info(self, h: str) -> dict:
        if h == "h0":
            return {"current_socket_power": 650, "average_socket_power": 640, "power_limit": 750}
        return {"current_socket_power": "N/A", "average_socket_power": "N/A", "power_limit": "N/A"}

    def amdsmi_get_power_cap_info(self, h: str) -> dict:
        raise self.AmdSmiException("AMDSMI_STATUS_NOT_SUPPORTED - Feature not supported")

    def amdsmi_get_temp_metric(self, h: str, kind: enum.IntEnum, metric: enum.IntEnum) -> int:
        if h == "h1" and kind == self.AmdSmiTemperatureType.HOTSPOT:
            raise self.AmdSmiException("AMDSMI_STATUS_NOT_SUPPORTED - Feature not supported")
        return 88 if h == "h0" else 41


def test_amd_two_gpus_with_an_na_field() -> None:
    fake = FakeAmdSmi()
    sampler = AmdSmiSampler(fake)
    sampler()
    mi300, radeon = sampler()
    assert (mi300.name, mi300.vendor) == ("AMD Instinct MI300X", "amd")
    assert mi300.utilization_percent == 97.0 and mi300.utilization_level is Level.HIGH
    assert (mi300.memory_used, mi300.memory_total) == (180_000 * MIB, 196_592 * MIB)
    assert mi300.memory_level is Level.HIGH  # 91.6 %
    assert (mi300.temperature_c, mi300.temperature_level) == (88.0, Level.HIGH)
    assert (mi300.power_w, mi300.power_limit_w) == (650.0, 750.0) and mi300.power_level is Level.MODERATE
    # The N/A field is None; the rest of that GPU still reports (its EDGE sensor stands in for HOTSPOT).
    assert radeon.power_w is None and radeon.power_limit_w is None and radeon.power_level is Level.NA
    assert radeon.temperature_c == 41.0 and radeon.utilization_level is Level.LOW
    assert fake.calls["asic"] == 2 and fake.calls["init"] == 1  # names read once, AMD SMI started once
    sampler.close()
    assert fake.shutdowns == 1


def test_amd_unavailable_reasons() -> None:
    failed = AmdSmiSampler(FakeAmdSmi(init_error=True))()
    assert isinstance(failed, GpuUnavailable) and "amdgpu driver" in failed.reason
    none = AmdSmiSampler(FakeAmdSmi(count=0))()
    assert isinstance(none, GpuUnavailable) and "reports no GPUs" in none.reason


def test_amd_package_missing_or_library_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real import on this machine (no amdsmi installed), and a wrapper that prints then fails."""
    result = AmdSmiSampler()()
    assert isinstance(result, GpuUnavailable)
    assert "pip install 'llamaforge-tui[amd]'" in result.reason or "libamd_smi.so" in result.reason

    class PrintingFinder:  # what amdsmi does without libamd_smi.so: print, then fail
        def find_module(self, *a):  # pragma: no cover - old protocol
            return None

        def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201
            if name != "amdsmi":
                return None
            print("Unable to find libamd_smi.so library try installing amd-smi-lib")
            raise KeyError("libamd_smi.so")

    monkeypatch.delitem(sys.modules, "amdsmi", raising=False)
    monkeypatch.setattr(sys, "meta_path", [PrintingFinder(), *sys.meta_path])
    module, reason = gpu_samplers._load_amdsmi()
    assert module is None and reason and "libamd_smi.so" in reason


def _fake_torch(available: bool = True, recommended: bool = True) -> SimpleNamespace:
    mps = SimpleNamespace(current_allocated_memory=lambda: 3 * 10**9, driver_allocated_memory=lambda: 4 * 10**9)
    if recommended:
        mps.recommended_max_memory = lambda: 21 * 10**9
    return SimpleNamespace(backends=SimpleNamespace(mps=SimpleNamespace(is_available=lambda: available)), mps=mps)


def test_mps_sample_has_allocated_driver_and_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_samplers, "apple_chip", lambda: "Apple M3 Max")
    [gpu] = MpsSampler(_fake_torch(), platform="darwin")()
    assert (gpu.name, gpu.vendor, gpu.index) == ("Apple M3 Max", "apple", 0)
    assert (gpu.allocated, gpu.memory_used, gpu.memory_total) == (3 * 10**9, 4 * 10**9, 21 * 10**9)
    assert gpu.memory_free == 17 * 10**9 and gpu.memory_level is Level.LOW
    # Apple gives no utilisation, temperature or power without root: N/A, as NVML's unsupported fields.
    assert gpu.utilization_level is Level.NA and gpu.temperature_level is Level.NA and gpu.power_level is Level.NA
    [old] = MpsSampler(_fake_torch(recommended=False), platform="darwin")()  # torch < 2.5
    assert old.memory_total is None and old.memory_percent is None and old.memory_used == 4 * 10**9


def test_mps_unavailable() -> None:
    linux = MpsSampler(_fake_torch(), platform="linux")()
    assert isinstance(linux, GpuUnavailable) and "not a Mac" in linux.reason
    intel_mac = MpsSampler(_fake_torch(available=False), platform="darwin")()
    assert isinstance(intel_mac, GpuUnavailable) and "Apple Silicon" in intel_mac.reason


class _Fixed:
    def __init__(self, result: object) -> None:
        self.result, self.calls, self.closed = result, 0, 0

    def __call__(self) -> object:
        self.calls += 1
        return self.result

    def close(self) -> None:
        self.closed += 1


def test_auto_keeps_the_first_backend_with_gpus() -> None:
    nvidia = _Fixed(GpuUnavailable("no NVIDIA GPU: the NVIDIA driver is not loaded"))
    amd = AmdSmiSampler(FakeAmdSmi())
    auto = AutoGpuSampler([nvidia, amd])
    assert [g.vendor for g in auto()] == ["amd", "amd"]
    assert len(auto()) == 2 and nvidia.calls == 1 and nvidia.closed == 1  # NVML is not asked again
    assert auto.active is amd
    auto.close()
    assert amd._devices is None


def test_auto_with_no_gpu_gives_every_reason() -> None:
    auto = AutoGpuSampler([NvmlSampler(nvml=None), AmdSmiSampler(FakeAmdSmi(count=0))])
    auto.samplers[0].nvml = None
    result = auto()
    assert isinstance(result, GpuUnavailable) and result.reason == "no NVIDIA or AMD GPU found"
    assert "nvidia-ml-py" in result.details and "AMD SMI started but reports no GPUs" in result.details
    assert auto() is result


def test_auto_default_backends_per_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [type(s).__name__ for s in AutoGpuSampler().samplers] == ["NvmlSampler", "AmdSmiSampler"]
    monkeypatch.setattr(gpu_samplers.sys, "platform", "darwin")
    assert [type(s).__name__ for s in AutoGpuSampler().samplers] == ["MpsSampler"]


def test_real_auto_sampler_on_this_machine() -> None:
    result = AutoGpuSampler()()
    if isinstance(result, GpuUnavailable):
        assert result.reason == "no NVIDIA or AMD GPU found" and "no NVIDIA GPU" in result.details
    else:  # pragma: no cover - a machine with a GPU
        assert all(isinstance(g, GpuSample) for g in result)


# -- memory pool (core.model.memory.device_memory) ----------------------------------------------------------------
def test_memory_pool_cpu_is_ram() -> None:
    free, total, label = device_memory("cpu")
    assert label == "RAM" and total == psutil.virtual_memory().total and 0 < free <= total


def test_memory_pool_cuda_is_vram(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    asked: list[object] = []

    def mem_get_info(index: object) -> tuple[int, int]:
        asked.append(index)
        return 5 * 10**9, 24 * 10**9

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    assert device_memory("cuda:1") == (5 * 10**9, 24 * 10**9, "VRAM")
    assert device_memory(torch.device("cuda", 0))[2] == "VRAM" and asked == [1, 0]
    assert device_memory("cuda")[0] == 5 * 10**9 and asked[-1] is None


def test_memory_pool_cuda_real() -> None:
    """Without a GPU (this machine): unknown VRAM, never RAM passed off as VRAM. With one: the driver's figures."""
    import torch

    free, total, label = device_memory("cuda")
    assert label == "VRAM"
    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        assert total and 0 < free <= total and total == torch.cuda.get_device_properties(0).total_memory
    else:
        assert (free, total) == (None, None)


def test_memory_pool_mps_is_unified_memory_capped_by_metal(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    vm = SimpleNamespace(available=30 * 10**9, total=64 * 10**9)
    monkeypatch.setattr(memory.psutil, "virtual_memory", lambda: vm)
    monkeypatch.setattr(torch.backends, "mps", SimpleNamespace(is_available=lambda: True))
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 48 * 10**9)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 20 * 10**9)
    assert device_memory("mps") == (28 * 10**9, 64 * 10**9, "unified memory")  # Metal's share is the tighter
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 0)
    assert device_memory(torch.device("mps"))[0] == 30 * 10**9  # the system's available RAM is the tighter


def test_free_memory_in_the_estimate_uses_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "device_memory", lambda device: (123, 456, "unified memory"))
    assert memory.free_memory("mps") == 123
