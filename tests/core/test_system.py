"""core.system: NVML sampling through a fake pynvml module, the real "no GPU" path, host samples."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace


from llamaforge_tui.core import system
from llamaforge_tui.core.system import GpuSample, GpuUnavailable, HostSampler, Level, NvmlSampler, level_for


class FakeNvml:
    """Just enough of pynvml: two devices; device 1 cannot report power (NotSupported)."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    class NVMLError_LibraryNotFound(NVMLError):
        pass

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, count: int = 2, init_error: Exception | None = None) -> None:
        self.count = count
        self.init_error = init_error
        self.calls: dict[str, int] = {}
        self.shutdowns = 0

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def nvmlInit(self) -> None:
        self._count("init")
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes:
        self._count("name")
        return f"Fake GPU {h}".encode()

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(total=80 * 10**9, used=(70 if h == 0 else 10) * 10**9, free=0)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=95 if h == 0 else 20, memory=0)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return 60 + 20 * h

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        if h == 1:
            raise self.NVMLError_NotSupported("Not Supported")
        return 300_000

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        self._count("limit")
        if h == 1:
            raise self.NVMLError_NotSupported("Not Supported")
        return 400_000


def test_two_fake_gpus_with_one_na_field() -> None:
    fake = FakeNvml()
    sampler = NvmlSampler(fake)
    first = sampler()
    second = sampler()
    assert isinstance(first, list) and len(first) == 2
    gpu0, gpu1 = second
    assert gpu0.name == "Fake GPU 0" and gpu0.utilization_percent == 95.0
    assert gpu0.memory_used == 70 * 10**9 and gpu0.memory_total == 80 * 10**9
    assert gpu0.power_w == 300.0 and gpu0.power_limit_w == 400.0 and gpu0.power_percent == 75.0
    assert gpu0.utilization_level is Level.HIGH and gpu0.memory_level is Level.MODERATE
    assert gpu0.power_level is Level.MODERATE and gpu0.temperature_level is Level.LOW
    # The unsupported field is N/A, the rest of that device still reports.
    assert gpu1.power_w is None and gpu1.power_limit_w is None and gpu1.power_level is Level.NA
    assert gpu1.temperature_c == 80.0 and gpu1.temperature_level is Level.MODERATE
    assert gpu1.utilization_level is Level.LOW
    # Slow fields are read once, not per sample; NVML is initialised once.
    assert fake.calls["name"] == 2 and fake.calls["limit"] == 2 and fake.calls["init"] == 1
    sampler.close()
    assert fake.shutdowns == 1


def test_library_missing_is_a_value_with_a_reason() -> None:
    fake = FakeNvml(init_error=FakeNvml.NVMLError_LibraryNotFound("NVML Shared Library Not Found"))
    result = system.sample_gpus(fake)
    assert isinstance(result, GpuUnavailable)
    assert "driver library" in result.reason and "no NVIDIA GPU" in result.reason


def test_zero_devices_is_unavailable() -> None:
    result = NvmlSampler(FakeNvml(count=0))()
    assert isinstance(result, GpuUnavailable) and "no devices" in result.reason


def test_nvml_package_missing() -> None:
    sampler = NvmlSampler()
    sampler.nvml = None
    result = sampler()
    assert isinstance(result, GpuUnavailable) and "nvidia-ml-py" in result.reason


def test_real_nvml_path() -> None:
    """The real pynvml: on a machine without a driver this is the plain "no GPU" value; with one, real samples."""
    result = system.sample_gpus()
    if isinstance(result, GpuUnavailable):
        assert result.reason.startswith("no NVIDIA GPU")
    else:
        assert result and all(isinstance(s, GpuSample) and s.memory_total for s in result)


def test_levels_and_na() -> None:
    assert level_for(None, "cpu") is Level.NA
    assert level_for(10, "cpu") is Level.LOW
    assert level_for(50, "cpu") is Level.MODERATE
    assert level_for(99, "cpu") is Level.HIGH
    assert GpuSample(index=0, name="x").memory_percent is None


def test_host_sampler_reports_ram_and_rss() -> None:
    sampler = HostSampler()
    first = sampler()
    second = sampler()
    assert first.cpu_percent is None  # priming reading
    assert second.cpu_percent is not None and 0.0 <= second.cpu_percent <= 100.0 * (second.cpu_count or 1)
    assert second.ram_total and 0 < second.ram_used <= second.ram_total
    assert second.process_rss and second.process_rss > 10**6
    assert second.ram_level in (Level.LOW, Level.MODERATE, Level.HIGH)
    one_shot = system.sample_host()
    assert one_shot.cpu_percent is not None and one_shot.process_rss


def test_system_module_imports_no_ui() -> None:
    code = ("import sys, llamaforge_tui.core.system; "
            "bad = [m for m in ('textual', 'rich', 'torch', 'llamaforge_tui.tui') if m in sys.modules]; "
            "print(bad); assert not bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
