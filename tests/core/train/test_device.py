"""core.train.device: device and precision choices, each with its reason, on made-up CUDA, ROCm, MPS and CPU
machines (this one has none of the GPUs), plus the real probe of this CPU machine."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

from llamaforge_tui.core.errors import ConfigError
from llamaforge_tui.core.train import device as dev
from llamaforge_tui.core.train.device import Accelerators, Precision, choose_device, choose_precision

NVIDIA = Accelerators(torch_version=(2, 13), cuda_available=True, cuda_count=2, cuda_names=("NVIDIA H100", "NVIDIA A10"),
                      cuda_bf16=True)
ROCM = Accelerators(torch_version=(2, 13), cuda_available=True, cuda_count=1, cuda_names=("AMD Instinct MI300X",),
                    hip_version="6.4.43482", cuda_bf16=True)
OLD_GPU = Accelerators(torch_version=(2, 13), cuda_available=True, cuda_count=1, cuda_names=("Tesla T4",))
MAC_M3 = Accelerators(torch_version=(2, 13), mps_built=True, mps_available=True, macos_version=(15, 1),
                      apple_chip="Apple M3 Max")
MAC_M1 = Accelerators(torch_version=(2, 13), mps_built=True, mps_available=True, macos_version=(15, 1),
                      apple_chip="Apple M1")
MAC_OLD_TORCH = Accelerators(torch_version=(2, 5), mps_built=True, mps_available=True, macos_version=(13, 6),
                             apple_chip="Apple M2")
MAC_SONOMA_27 = Accelerators(torch_version=(2, 7), mps_built=True, mps_available=True, macos_version=(14, 4),
                             apple_chip="Apple M2 Pro")
CPU = Accelerators(torch_version=(2, 13))
CPU_AMX = Accelerators(torch_version=(2, 13), cpu_fast_bf16=True)


# -- device -------------------------------------------------------------------------------------------------------
def test_auto_prefers_cuda_and_names_the_gpu() -> None:
    device, reason = choose_device("auto", acc=NVIDIA)
    assert device == torch.device("cuda", 0) and "CUDA GPU 0 (NVIDIA H100)" in reason
    assert choose_device("auto", local_rank=3, acc=NVIDIA)[0] == torch.device("cuda", 1)


def test_auto_on_a_rocm_build_is_the_cuda_device_named_rocm() -> None:
    device, reason = choose_device("auto", acc=ROCM)
    assert device.type == "cuda" and "ROCm GPU 0 (AMD Instinct MI300X)" in reason and "CUDA GPU" not in reason
    assert dev.backend_of(device, ROCM) == "rocm" and dev.backend_of(device, NVIDIA) == "cuda"


def test_auto_picks_mps_when_there_is_no_cuda() -> None:
    device, reason = choose_device("auto", acc=MAC_M3)
    assert device == torch.device("mps") and "Apple M3 Max" in reason and "MPS" in reason
    assert dev.backend_of(device) == "mps"


def test_auto_with_nothing_is_the_cpu_and_says_why() -> None:
    device, reason = choose_device("auto", acc=CPU)
    assert device == torch.device("cpu") and "no CUDA or ROCm GPU" in reason


def test_multi_process_on_a_mac_uses_the_cpu_or_refuses_mps() -> None:
    device, reason = choose_device("auto", world_size=2, acc=MAC_M3)
    assert device.type == "cpu" and "--nproc" in reason
    with pytest.raises(ConfigError, match="--nproc"):
        choose_device("mps", world_size=2, acc=MAC_M3)


def test_explicit_mps_accepted_on_a_mac_and_refused_elsewhere_with_the_cause() -> None:
    assert choose_device("mps", acc=MAC_M1)[0] == torch.device("mps")
    with pytest.raises(ConfigError, match="no MPS support"):
        choose_device("mps", acc=CPU)
    with pytest.raises(ConfigError, match=r"macOS 12\.3"):
        choose_device("mps", acc=Accelerators(mps_built=True))


def test_explicit_cuda_checks() -> None:
    assert choose_device("cuda:1", acc=NVIDIA)[0] == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="only 2 GPU"):
        choose_device("cuda:2", acc=NVIDIA)
    with pytest.raises(ConfigError, match="--device mps"):  # on a Mac the hint is the Mac's GPU
        choose_device("cuda", acc=MAC_M3)
    with pytest.raises(ConfigError, match="--device cpu"):
        choose_device("cuda", acc=CPU)
    with pytest.raises(ConfigError, match="unknown device"):
        choose_device("tpu", acc=CPU)


# -- precision ----------------------------------------------------------------------------------------------------
def test_cuda_and_rocm_precision() -> None:
    assert choose_precision("auto", torch.device("cuda", 0), NVIDIA) == (Precision("bfloat16", "bfloat16"),
                                                                         "auto: this CUDA GPU supports bf16")
    precision, reason = choose_precision("auto", torch.device("cuda", 0), OLD_GPU)
    assert precision == Precision("float16", "float16") and "loss scaling" in reason
    assert "ROCm" in choose_precision("auto", torch.device("cuda", 0), ROCM)[1]


def test_mps_bf16_on_recent_chips_fp16_on_m1() -> None:
    precision, reason = choose_precision("auto", "mps", MAC_M3)
    assert precision == Precision("bfloat16", "bfloat16") and "bf16" in reason
    precision, reason = choose_precision("auto", "mps", MAC_M1)
    assert precision == Precision("float16", "float16") and "emulates bf16" in reason
    assert precision.describe() == "float16 autocast, fp32 LoRA/optimizer/loss"


def test_mps_falls_back_to_fp32_with_the_reason() -> None:
    precision, reason = choose_precision("auto", "mps", MAC_OLD_TORCH)
    assert precision == Precision("float32", None)
    assert "torch 2.6+ and macOS 14+" in reason and "here torch 2.5, macOS 13.6" in reason and "2.8+" in reason


def test_mps_torch_27_on_sonoma_trains_bf16_but_not_fp16() -> None:
    assert choose_precision("auto", "mps", MAC_SONOMA_27)[0].autocast == "bfloat16"
    with pytest.raises(ConfigError, match=r"GradScaler\('mps'\)"):
        choose_precision("float16", "mps", MAC_SONOMA_27)
    with pytest.raises(ConfigError, match="macOS 14"):
        choose_precision("bfloat16", "mps", MAC_OLD_TORCH)
    assert choose_precision("float32", "mps", MAC_OLD_TORCH)[0].autocast is None


def test_cpu_precision() -> None:
    assert choose_precision("auto", "cpu", CPU_AMX)[0] == Precision("bfloat16", "bfloat16")
    precision, reason = choose_precision("auto", "cpu", CPU)
    assert precision.autocast is None and "no fast bf16" in reason
    with pytest.raises(ConfigError, match="float16 needs a GPU"):
        choose_precision("float16", "cpu", CPU)


# -- the probe reads torch ------------------------------------------------------------------------------------------
def test_probe_reads_a_monkeypatched_mps_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends, "mps", SimpleNamespace(is_built=lambda: True, is_available=lambda: True))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev.platform, "mac_ver", lambda: ("14.5", ("", "", ""), "arm64"))
    dev.probe.cache_clear()
    try:
        acc = dev.probe()
        assert acc.mps_available and acc.macos_version == (14, 5) and not acc.cuda_available
        device, reason = choose_device("auto", acc=acc)
        assert device.type == "mps"
        # This torch (2.6+) on macOS 14.5 trains bf16 on MPS.
        assert choose_precision("auto", device, acc)[0].autocast == "bfloat16"
    finally:
        dev.probe.cache_clear()


def test_probe_of_this_machine_and_the_old_entry_points() -> None:
    """The real probe agrees with torch on whatever machine runs the suite (CPU-only here)."""
    from llamaforge_tui.core.train import setup

    acc = dev.probe()
    assert acc.cuda_available == torch.cuda.is_available() and acc.torch_version >= (2, 4)
    assert acc.mps_available == torch.backends.mps.is_available()
    assert acc.hip_version == torch.version.hip
    expected = "cuda" if acc.cuda_available else "mps" if acc.mps_available else "cpu"
    assert setup.resolve_device("auto").type == expected
    assert isinstance(setup.resolve_precision("auto", torch.device("cpu")), Precision)


# -- MPS op fallback ----------------------------------------------------------------------------------------------
def test_fallback_warnings_are_named_in_the_log_and_others_pass_through() -> None:
    said: list[tuple[str, str]] = []
    with warnings.catch_warnings(record=True) as outer:
        warnings.simplefilter("always")
        with dev.watch_mps_fallback("mps", lambda message, level: said.append((message, level))):
            for op in ("aten::_linalg_eigh", "aten::nonzero", "aten::nonzero"):
                warnings.warn(f"The operator '{op}' is not currently supported on the MPS backend and will fall "
                              "back to run on the CPU. This may have performance implications.", UserWarning)
            warnings.warn("something else", UserWarning)
    assert len(said) == 1 and said[0][1] == "warning"
    assert "2 op(s)" in said[0][0] and "aten::_linalg_eigh, aten::nonzero" in said[0][0]
    assert [str(w.message) for w in outer] == ["something else"]


def test_no_watch_off_mps() -> None:
    said: list[str] = []
    with warnings.catch_warnings(record=True) as outer:
        warnings.simplefilter("always")
        with dev.watch_mps_fallback("cpu", lambda m, lvl: said.append(m)):
            warnings.warn("The operator 'aten::x' is not currently supported on the MPS backend", UserWarning)
    assert said == [] and len(outer) == 1


def test_missing_mps_op_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dev.MPS_FALLBACK_ENV, raising=False)
    exc = NotImplementedError("The operator 'aten::_foo' is not currently implemented for the MPS device. As a "
                              "temporary fix, you can set the environment variable `PYTORCH_ENABLE_MPS_FALLBACK=1`")
    reason = dev.mps_missing_op(exc)
    assert reason and "aten::_foo" in reason and "is not set" in reason and "--device cpu" in reason
    assert dev.mps_missing_op(RuntimeError("MPS something")) is None
    assert "is not set" in dev.mps_fallback_state()
    monkeypatch.setenv(dev.MPS_FALLBACK_ENV, "1")
    assert "run on the CPU" in dev.mps_fallback_state()


def test_plan_device_for_the_plan_and_the_form() -> None:
    plan = dev.plan_device("auto", "auto", acc=MAC_M3)
    assert plan == {"device": "mps", "backend": "mps", "device_reason": choose_device("auto", acc=MAC_M3)[1],
                    "precision": "bfloat16 autocast, fp32 LoRA/optimizer/loss", "precision_reason": "auto: bf16 on MPS"}
    assert dev.describe_plan(plan).startswith("-> mps (auto: no CUDA or ROCm GPU; the Apple GPU (Apple M3 Max)")
    assert dev.plan_device("auto", "auto", acc=ROCM)["backend"] == "rocm"
    bad = dev.plan_device("mps", "auto", acc=CPU)
    assert set(bad) == {"error"} and dev.describe_plan(bad).startswith("cannot run: device mps requested")
    assert set(dev.plan_device()) == {"device", "backend", "device_reason", "precision", "precision_reason"}


def test_the_plan_shows_the_device_and_precision_with_reasons() -> None:
    from llamaforge_tui.core.train.plan import TrainPlan

    plan = TrainPlan(target=dev.plan_device("auto", "auto", acc=MAC_M1))
    assert plan.lines()[0] == ("device -> mps (auto: no CUDA or ROCm GPU; the Apple GPU (Apple M1) through MPS, "
                               "unified memory); float16 autocast, fp32 LoRA/optimizer/loss (auto: fp16 with loss "
                               "scaling, since the Apple M1 GPU emulates bf16)")
    data = plan.to_json()
    assert (data["device"], data["backend"], data["precision"]) == ("mps", "mps", plan.target["precision"])
    assert data["device_reason"] == plan.target["device_reason"] and "precision_reason" in data
    refused = TrainPlan(target=dev.plan_device("mps", acc=CPU)).to_json()
    assert refused["device_error"].startswith("device mps requested") and refused["device"] is None
