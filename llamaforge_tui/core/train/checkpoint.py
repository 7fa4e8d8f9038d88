"""Resumable checkpoints: ``<run>/checkpoints/step-N/``.

Each holds the LoRA adapter (peft ``save_pretrained``: safetensors + adapter_config.json), the optimizer
and scheduler state, the RNG states (python, numpy, torch, and cuda or mps when in use), the step and
the data position.
Everything is written into ``checkpoints/.tmp-step-N-<pid>/``, fsynced, and then renamed to ``step-N``:
a process killed mid-save leaves only a ``.tmp-*`` folder, which is never picked up and is swept away
by the next run. ``trainer_state.json`` is written last and its presence marks a complete checkpoint.

Only our own optimizer/RNG state goes through ``torch.load``, and always with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.errors import ConfigError

if TYPE_CHECKING:
    import torch

STATE_FILE = "trainer_state.json"
ADAPTER_SUBDIR = "adapter"
_STEP_RE = re.compile(r"^step-(\d+)$")


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first. Half-written (``.tmp-*``) folders are ignored."""
    base = checkpoints_dir(run_dir)
    found = []
    if base.is_dir():
        for p in base.iterdir():
            m = _STEP_RE.match(p.name)
            if m and (p / STATE_FILE).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1][1] if found else None


def sweep_partial(run_dir: Path) -> list[Path]:
    """Delete half-written checkpoint folders left by a crash; returns what was removed."""
    base = checkpoints_dir(run_dir)
    removed = []
    if base.is_dir():
        for p in base.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def rng_state() -> tuple[dict[str, Any], dict[str, Any]]:
    """(JSON-able python/numpy states, tensor states for torch.save)."""
    import numpy as np
    import torch

    py = random.getstate()
    np_state = np.random.get_state()
    json_part = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    tensors: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    if _mps_in_use(torch):
        tensors["mps"] = torch.mps.get_rng_state()
    return json_part, tensors


def _mps_in_use(torch: Any) -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available() and hasattr(torch, "mps"))


def restore_rng(json_part: dict[str, Any], tensors: dict[str, Any]) -> None:
    import numpy as np
    import torch

    if "python" in json_part:
        v, state, gauss = json_part["python"]
        random.setstate((v, tuple(state), gauss))
    if "numpy" in json_part:
        name, keys, pos, has_gauss, cached = json_part["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "torch" in tensors:
        torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError, IndexError):
            torch.cuda.set_rng_state_all(tensors["cuda"])
    if "mps" in tensors and _mps_in_use(torch):
        torch.mps.set_rng_state(tensors["mps"])


def save_checkpoint(run_dir: Path, step: int, *, model: Any, optimizer: torch.optim.Optimizer,
                    scheduler: Any, state: dict[str, Any], keep: int = 3) -> Path:
    """Write ``checkpoints/step-<step>`` atomically (temp folder + rename) and prune old ones.

    ``model`` is the peft model (unwrapped from DDP); ``state`` holds the step, data position and
    anything else the loop needs (JSON-able).
    """
    import torch

    base = checkpoints_dir(run_dir)
    base.mkdir(parents=True, exist_ok=True)
    final = base / f"step-{step}"
    tmp = base / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        model.save_pretrained(str(tmp / ADAPTER_SUBDIR), safe_serialization=True)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng_json, rng_tensors = rng_state()
        torch.save(rng_tensors, tmp / "rng.pt")
        payload = {**state, "step": step, "rng": rng_json}
        (tmp / STATE_FILE).write_text(json.dumps(payload), encoding="utf-8")  # last: marks completeness
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step (e.g. stop right after a periodic save)
            old = base / f".old-step-{step}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old_path in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old_path, ignore_errors=True)
    return final


def load_checkpoint(path: Path, *, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
                    device: Any) -> dict[str, Any]:
    """Restore adapter weights, optimizer, scheduler and RNG from ``path``; return the saved state."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state_path = path / STATE_FILE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"checkpoint {path} is unreadable ({exc}); pick another with --resume") from exc
    # Onto the CPU for MPS (load_state_dict copies into the model's own device); straight onto a CUDA GPU.
    target = "cpu" if getattr(device, "type", str(device)) == "mps" else str(device)
    weights = load_file(str(path / ADAPTER_SUBDIR / "adapter_model.safetensors"), device=target)
    result = set_peft_model_state_dict(model, weights)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ConfigError(f"checkpoint {path} does not match this model (unexpected {unexpected[:3]})")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_tensors = torch.load(path / "rng.pt", weights_only=True)
    restore_rng(state.get("rng", {}), rng_tensors)
    return state


def write_final_adapter(run_dir: Path, model: Any) -> Path:
    """``<run>/adapter``: the final LoRA adapter, written beside and then renamed into place."""
    final = run_dir / "adapter"
    tmp = run_dir / f".tmp-adapter-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final
