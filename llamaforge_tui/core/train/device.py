"""Which device a run trains on and in which precision, each with the reason in words.

Why the reasons: a run that silently lands on the CPU next to an idle Apple GPU (or in fp32 when bf16 was
possible) is the worst kind of slow, because nothing says why. So every choice comes back as
``(choice, reason)``, and the form, the plan (``train --plan``), the log and ``RunStarted`` all show it.

The facts behind a choice (is CUDA there, is this a ROCm build, is MPS there, which macOS and torch) are read
once into an :class:`Accelerators` snapshot by :func:`probe`; the choosing functions are pure over it, so tests
cover CUDA, ROCm, MPS and CPU machines with a made-up snapshot. ROCm builds of torch drive AMD GPUs through the
``cuda`` device type; ``torch.version.hip`` tells them apart, so the reason names the right one.

MPS facts (from the PyTorch changelogs and issues #99272, #139386, #142397): fp16 autocast since torch 2.5,
bf16 autocast since 2.6 and only on macOS 14+, ``GradScaler("mps")`` (needed to train in fp16) since 2.8.
Apple's M1 and M2 GPUs have no bf16 arithmetic (Metal emulates it), so there fp16 is preferred when it can
train; on later chips bf16 (no loss scaling needed).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.errors import ConfigError
from llamaforge_tui.core.gpu_samplers import apple_chip

if TYPE_CHECKING:
    import torch

MPS_FALLBACK_ENV = "PYTORCH_ENABLE_MPS_FALLBACK"


@dataclass(frozen=True)
class Accelerators:
    """What this machine and this torch build offer. Built by :func:`probe`; made up in tests."""

    torch_version: tuple[int, int] = (0, 0)
    cuda_available: bool = False
    cuda_count: int = 0
    cuda_names: tuple[str, ...] = ()
    hip_version: str | None = None  # set on ROCm builds: their "cuda" devices are AMD GPUs
    cuda_bf16: bool = False
    mps_built: bool = False
    mps_available: bool = False
    macos_version: tuple[int, int] | None = None
    apple_chip: str | None = None  # "Apple M2 Pro"
    cpu_fast_bf16: bool = False

    @property
    def gpu_api(self) -> str:
        return "ROCm" if self.hip_version else "CUDA"

    def gpu_name(self, index: int) -> str:
        return self.cuda_names[index] if 0 <= index < len(self.cuda_names) else f"GPU {index}"

    @property
    def mps_unavailable_reason(self) -> str:
        if not self.mps_built:
            return "this torch build has no MPS support (MPS needs torch for macOS on Apple Silicon)"
        return "MPS is built into this torch but not available (it needs macOS 12.3+ on an Apple Silicon Mac)"

    @property
    def mps_autocast_dtypes(self) -> tuple[str, ...]:
        """The autocast dtypes this torch + macOS can *train* with on MPS, best first for this chip."""
        usable = []
        if self.torch_version >= (2, 6) and (self.macos_version or (0, 0)) >= (14, 0):
            usable.append("bfloat16")
        if self.torch_version >= (2, 8):  # fp16 autocast is 2.5+, but training it needs GradScaler("mps"): 2.8+
            usable.append("float16")
        if _chip_emulates_bf16(self.apple_chip):
            usable.sort(key=lambda d: d != "float16")
        return tuple(usable)


def _chip_emulates_bf16(chip: str | None) -> bool:
    return bool(chip and re.search(r"\bM[12]\b", chip))


def _version(text: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 / AMX: bf16 matmuls run 2-4x faster than fp32 on such CPUs."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


@functools.lru_cache(maxsize=1)
def probe() -> Accelerators:
    """Read the machine once per process (CUDA's device queries take a moment the first time)."""
    import torch

    cuda = torch.cuda.is_available()
    count = torch.cuda.device_count() if cuda else 0
    names: tuple[str, ...] = ()
    bf16 = False
    if cuda:
        with contextlib.suppress(RuntimeError, AssertionError):
            names = tuple(torch.cuda.get_device_name(i) for i in range(count))
            bf16 = bool(torch.cuda.is_bf16_supported())
    mps = getattr(torch.backends, "mps", None)
    mac = platform.mac_ver()[0]
    return Accelerators(
        torch_version=_version(torch.__version__), cuda_available=cuda, cuda_count=count, cuda_names=names,
        hip_version=getattr(torch.version, "hip", None) or None, cuda_bf16=bf16,
        mps_built=bool(mps is not None and mps.is_built()), mps_available=bool(mps is not None and mps.is_available()),
        macos_version=_version(mac) if mac else None, apple_chip=apple_chip(), cpu_fast_bf16=cpu_has_fast_bf16())


# -- device -------------------------------------------------------------------------------------------------------
def choose_device(name: str, local_rank: int = 0, *, world_size: int = 1,
                  acc: Accelerators | None = None) -> tuple[torch.device, str]:
    """``(device, reason)`` for the ``device`` setting (auto, cpu, cuda, cuda:N, mps); ConfigError if impossible."""
    import torch

    acc = acc or probe()
    if name == "auto":
        if acc.cuda_available and acc.cuda_count:
            index = local_rank % acc.cuda_count
            return torch.device("cuda", index), f"auto: {acc.gpu_api} GPU {index} ({acc.gpu_name(index)})"
        if acc.mps_available and world_size > 1:
            return torch.device("cpu"), ("auto: the Apple GPU (MPS) cannot run multi-process (--nproc) training, "
                                         "so the processes use the CPU")
        if acc.mps_available:
            chip = f" ({acc.apple_chip})" if acc.apple_chip else ""
            return torch.device("mps"), f"auto: no CUDA or ROCm GPU; the Apple GPU{chip} through MPS, unified memory"
        why = "no CUDA or ROCm GPU is visible" + ("" if sys.platform != "darwin" else f"; {acc.mps_unavailable_reason}")
        return torch.device("cpu"), f"auto: {why}, so the CPU"
    if name == "cpu":
        return torch.device("cpu"), "cpu: as set"
    if name == "mps":
        if not acc.mps_available:
            raise ConfigError(f"device mps requested but {acc.mps_unavailable_reason}; use --device auto or cpu")
        if world_size > 1:
            raise ConfigError("device mps cannot run multi-process (--nproc) training; use --nproc 1")
        return torch.device("mps"), "mps: as set (the Apple GPU, unified memory)"
    head, _, index_text = name.partition(":")
    if head != "cuda":
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if not acc.cuda_available or not acc.cuda_count:
        other = "--device mps" if acc.mps_available else "--device cpu"
        raise ConfigError(f"device {name} requested but no CUDA or ROCm GPU is visible; use {other}")
    index = int(index_text) if index_text else local_rank % acc.cuda_count
    if index >= acc.cuda_count:
        raise ConfigError(f"device {name} requested but only {acc.cuda_count} GPU(s) are visible (cuda:0 to "
                          f"cuda:{acc.cuda_count - 1})")
    return torch.device("cuda", index), f"{name}: as set, {acc.gpu_api} GPU {index} ({acc.gpu_name(index)})"


def backend_of(device: Any, acc: Accelerators | None = None) -> str:
    """"cuda", "rocm", "mps" or "cpu": the backend a device runs on (ROCm hides behind the cuda type)."""
    kind = str(getattr(device, "type", device)).split(":")[0]
    if kind == "cuda":
        return "rocm" if (acc or probe()).hip_version else "cuda"
    return kind


# -- precision ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Precision:
    """Base weights are stored in ``param_dtype``; matmuls run under ``autocast`` (None: plain fp32).
    LoRA weights, optimizer state and the loss stay fp32 in every mode."""

    param_dtype: str  # "float32" | "bfloat16" | "float16"
    autocast: str | None  # None | "bfloat16" | "float16"

    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.param_dtype)

    def describe(self) -> str:
        if self.autocast is None:
            return "float32"
        return f"{self.autocast} autocast, fp32 LoRA/optimizer/loss"


def _mixed(dtype: str) -> Precision:
    return Precision("float32", None) if dtype == "float32" else Precision(dtype, dtype)


def choose_precision(dtype: str, device: Any, acc: Accelerators | None = None) -> tuple[Precision, str]:
    """``(precision, reason)`` for the ``dtype`` setting on ``device``; ConfigError for a dtype it cannot run."""
    acc = acc or probe()
    kind = str(getattr(device, "type", device)).split(":")[0]
    if kind == "cuda":
        if dtype == "auto":
            if acc.cuda_bf16:
                return _mixed("bfloat16"), f"auto: this {acc.gpu_api} GPU supports bf16"
            return _mixed("float16"), f"auto: this {acc.gpu_api} GPU has no bf16; fp16 with loss scaling"
        return _mixed(dtype), f"{dtype}: as set"
    if kind == "mps":
        return _mps_precision(dtype, acc)
    if dtype == "float16":
        raise ConfigError("dtype float16 needs a GPU (CUDA, ROCm or MPS); use bfloat16 or float32 on the CPU")
    if dtype == "auto":
        if acc.cpu_fast_bf16:
            return _mixed("bfloat16"), "auto: this CPU has fast bf16 (AVX512-BF16/AMX)"
        return _mixed("float32"), "auto: this CPU has no fast bf16, so float32"
    return _mixed(dtype), f"{dtype}: as set"


def _mps_precision(dtype: str, acc: Accelerators) -> tuple[Precision, str]:
    usable = acc.mps_autocast_dtypes
    torch_v = ".".join(map(str, acc.torch_version))
    mac_v = ".".join(map(str, acc.macos_version)) if acc.macos_version else "unknown"
    missing = {"bfloat16": f"bf16 on MPS needs torch 2.6+ and macOS 14+ (here torch {torch_v}, macOS {mac_v})",
               "float16": f"fp16 training on MPS needs torch 2.8+ for GradScaler('mps') (here torch {torch_v})"}
    if dtype == "float32":
        return _mixed("float32"), "float32: as set"
    if dtype != "auto":
        if dtype not in usable:
            raise ConfigError(f"dtype {dtype}: {missing[dtype]}; use --dtype auto or float32")
        return _mixed(dtype), f"{dtype}: as set"
    if not usable:
        return _mixed("float32"), f"auto: float32 on MPS, because {missing['bfloat16']} and {missing['float16']}"
    best = usable[0]
    if best == "float16" and _chip_emulates_bf16(acc.apple_chip):
        return _mixed(best), f"auto: fp16 with loss scaling, since the {acc.apple_chip} GPU emulates bf16"
    return _mixed(best), f"auto: {'bf16' if best == 'bfloat16' else 'fp16 with loss scaling'} on MPS"


# -- for the plan and the form -------------------------------------------------------------------------------------
def plan_device(device: str = "auto", dtype: str = "auto", *, world_size: int = 1,
                acc: Accelerators | None = None) -> dict[str, str]:
    """What a run with these settings would use, as JSON-able text: ``device``, ``backend``, ``device_reason``,
    ``precision``, ``precision_reason`` (the keys ``RunStarted`` has), or ``{"error": why}`` when it cannot run.
    Imports torch: call it from a worker thread in the UI."""
    try:
        acc = acc or probe()
        chosen, device_reason = choose_device(device, world_size=world_size, acc=acc)
        precision, precision_reason = choose_precision(dtype, chosen, acc)
    except ConfigError as exc:
        return {"error": str(exc)}
    return {"device": str(chosen), "backend": backend_of(chosen, acc), "device_reason": device_reason,
            "precision": precision.describe(), "precision_reason": precision_reason}


def describe_plan(plan: dict[str, str]) -> str:
    """One line for people: "-> mps (auto: ...); bfloat16 autocast, ... (auto: ...)"."""
    if "error" in plan:
        return f"cannot run: {plan['error']}"
    return f"-> {plan['device']} ({plan['device_reason']}); {plan['precision']} ({plan['precision_reason']})"


# -- MPS ops that run on the CPU ----------------------------------------------------------------------------------
_FALLBACK_RE = re.compile(r"operator '([^']+)' is not currently (?:supported|implemented) on the MPS backend")


@contextlib.contextmanager
def watch_mps_fallback(device: Any, say: Callable[[str, str], None]) -> Iterator[None]:
    """Around one step on MPS: report each op torch ran on the CPU instead (with PYTORCH_ENABLE_MPS_FALLBACK=1,
    torch warns once per op). Measured, not assumed: the log names the ops of this model that fell back."""
    if str(getattr(device, "type", device)) != "mps":
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    ops = sorted({m.group(1) for w in caught if (m := _FALLBACK_RE.search(str(w.message)))})
    if ops:
        say(f"MPS ran {len(ops)} op(s) on the CPU ({MPS_FALLBACK_ENV}=1): {', '.join(ops)}; expect slower steps",
            "warning")
    for w in caught:  # hand every other warning on, as if we had not looked
        if not _FALLBACK_RE.search(str(w.message)):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def mps_fallback_state() -> str:
    """One log line, at the start of an MPS run, on what happens to an op that has no MPS kernel."""
    if os.environ.get(MPS_FALLBACK_ENV) == "1":
        return (f"{MPS_FALLBACK_ENV}=1: ops without an MPS kernel run on the CPU; the first step names any "
                "that do (ops torch already reported earlier in this process are not named again)")
    return (f"{MPS_FALLBACK_ENV} is not set: an op without an MPS kernel stops the run with its name; "
            f"set {MPS_FALLBACK_ENV}=1 before starting llamaforge to run such ops on the CPU instead")


def mps_missing_op(exc: BaseException) -> str | None:
    """The reason to show when an op has no MPS kernel and the CPU fallback is off; None for other errors."""
    text = str(exc)
    if not isinstance(exc, NotImplementedError) or "MPS" not in text:
        return None
    match = re.search(r"operator '([^']+)'", text)
    op = match.group(1) if match else "an operator"
    state = "is set" if os.environ.get(MPS_FALLBACK_ENV) else "is not set"
    return (f"{op} has no MPS kernel in this torch ({MPS_FALLBACK_ENV} {state}): start llamaforge with "
            f"{MPS_FALLBACK_ENV}=1 to run it on the CPU (slower), use --device cpu, or update torch")
