"""The gauges with each backend's samples in the same widget: two AMD GPUs (one N/A field) through a fake AMD SMI,
the Apple GPU through a fake torch.mps (with unified memory beside it), and "no GPU" worded for every backend."""

from __future__ import annotations

import pytest

from llamaforge_tui.core.gpu_samplers import AmdSmiSampler, AutoGpuSampler, MpsSampler
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.core.system import GpuUnavailable, HostSample
from llamaforge_tui.tui.app import Services, make_app
from llamaforge_tui.tui.widgets.gpu_gauges import GpuGauges, GpuRow, HostRow
from tests.core.test_system_backends import FakeAmdSmi, _fake_torch
from train_helpers import screen_text, show_train, wait_for

HOST = HostSample(cpu_percent=12.0, ram_used=40 * 10**9, ram_total=64 * 10**9, process_rss=3 * 10**9, cpu_count=8)


def _app(sampler: object):  # noqa: ANN202
    return make_app(Settings(), Services(gpu_sampler=sampler))


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_two_amd_gpus_in_the_nvml_widget(size: tuple[int, int]) -> None:
    app = _app(AmdSmiSampler(FakeAmdSmi()))
    async with app.run_test(size=size) as pilot:
        await show_train(app, pilot)
        gauges = app.query_one(GpuGauges)
        await wait_for(pilot, lambda: len(gauges.query(GpuRow)) == 2, what="two AMD rows")
        await pilot.pause(0.1)
        mi300, radeon = gauges.query(GpuRow)
        assert mi300.query_one(".gpu-util").has_class("-high") and mi300.query_one(".gpu-temp").has_class("-high")
        assert radeon.query_one(".gpu-power").has_class("-na") and radeon.query_one(".gpu-util").has_class("-low")
        assert gauges.free_accelerator_bytes[0] == "VRAM"
        if size == (120, 40):
            text = screen_text(app)
            assert "GPU0 MI300X" in text and "189/206G" in text and "650/750W" in text and "88°C" in text
            assert "GPU1 RX 7900 X" in text and "N/A W" in text and "RAM " in text


async def test_apple_gpu_row_and_unified_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from llamaforge_tui.core import gpu_samplers

    monkeypatch.setattr(gpu_samplers, "apple_chip", lambda: "Apple M3 Max")
    app = _app(MpsSampler(_fake_torch(), platform="darwin"))
    async with app.run_test(size=(120, 40)) as pilot:
        await show_train(app, pilot)
        gauges = app.query_one(GpuGauges)
        await wait_for(pilot, lambda: len(gauges.query(GpuRow)) == 1, what="the Apple GPU row")
        gauges.host_sampler = lambda: HOST  # a host with known numbers, from the next sample on
        await wait_for(pilot, lambda: gauges.last_host is HOST, what="the fixed host sample")
        await pilot.pause(0.1)
        row = gauges.query_one(GpuRow)
        assert row.query_one(".gpu-util").has_class("-low") and row.query_one(".gpu-temp").has_class("-na")
        text = screen_text(app)
        assert "MPS M3 Max" in text and "alloc 3.0G" in text and "4.0/21.0G" in text
        assert "UMA " in text and "40.0/64.0G" in text and "RAM " not in text
        assert gauges.query_one(HostRow).query_one(".host-ram").tooltip
        # What a run can use: Metal's headroom (17 GB) or what the Mac has available (24 GB), the smaller.
        assert gauges.free_accelerator_bytes == ("unified memory", 17 * 10**9)


async def test_no_gpu_line_is_true_for_every_backend() -> None:
    none = AutoGpuSampler([AmdSmiSampler(FakeAmdSmi(count=0)), MpsSampler(_fake_torch(), platform="linux")])
    app = _app(none)
    async with app.run_test(size=(120, 40)) as pilot:
        await show_train(app, pilot)
        gauges = app.query_one(GpuGauges)
        await wait_for(pilot, lambda: isinstance(gauges.last_gpus, GpuUnavailable), what="a GPU sample")
        await pilot.pause(0.1)
        text = " ".join(screen_text(app).split())
        assert "No AMD or Apple GPU found; showing CPU and RAM instead." in text and "NVIDIA" not in text
        details = str(gauges.query_one("#gpu-unavailable").tooltip)
        assert "AMD SMI started but reports no GPUs" in details and "not a Mac" in details
        assert gauges.free_accelerator_bytes[0] == "RAM"
