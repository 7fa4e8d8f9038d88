"""An optional cache of dequantized models: safetensors keyed by the GGUF's identity and the dtype.

Dequantizing a 7B Q4_K_M GGUF on a CPU takes tens of seconds; reading back the already dequantized weights is bound
by disk speed. The cache stores exactly the tensors the loader produced (same bits), so reuse is exact.

Key: the Ollama blob digest when the file is a blob (``sha256-<hex>`` names carry the file's hash for free), else
the file's resolved path, size and modification time; plus the dtype and a format version. Entries live under
``<data dir>/cache/dequantized/<key>/`` (``model.safetensors`` + ``meta.json``); ``cache_usage`` reports them so the
cache pane can count them in its totals.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.fsutil import atomic_write_text
from llamaforge_tui.core.hub.cache import CacheScan, scan_cache
from llamaforge_tui.core.model.sources import blob_digest
from llamaforge_tui.core.settings import data_dir

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


def cache_root() -> Path:
    return data_dir() / "cache" / "dequantized"


def cache_key(gguf_path: Path | str, dtype: torch.dtype | str) -> str:
    path = Path(gguf_path).resolve()
    digest = blob_digest(path)
    if digest is None:
        st = path.stat()
        identity = f"file:{path}:{st.st_size}:{st.st_mtime_ns}"
    else:
        identity = f"sha256:{digest}"
    dtype_name = str(dtype).removeprefix("torch.")
    return hashlib.sha256(f"v{FORMAT_VERSION}|{identity}|{dtype_name}".encode()).hexdigest()[:32]


def entry_dir(key: str) -> Path:
    return cache_root() / key


def _unique_state(model: Any) -> dict[str, torch.Tensor]:
    """Parameters by name, each tensor once (a tied head is restored by ``tie_weights``, not stored)."""
    seen: set[int] = set()
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        out[name] = p.detach()
    return out


def save(model: Any, key: str, meta: dict[str, Any]) -> Path | None:
    """Store ``model``'s parameters; failures (disk full, read-only data dir) only log: the cache is optional."""
    from safetensors.torch import save_file

    target = entry_dir(key)
    tmp = target.with_name(target.name + ".partial")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        state = {k: v.contiguous().cpu() for k, v in _unique_state(model).items()}
        save_file(state, str(tmp / "model.safetensors"))
        atomic_write_text(tmp / "meta.json", json.dumps({**meta, "format": FORMAT_VERSION}, indent=1))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        return target
    except OSError as exc:
        log.warning("could not write the dequantized-model cache %s: %s", target, exc)
        shutil.rmtree(tmp, ignore_errors=True)
        return None


def load_into(model: Any, key: str, device: torch.device) -> bool:
    """Fill a meta-parameter skeleton from the cache entry ``key``; False when there is no usable entry."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open
    from torch import nn

    path = entry_dir(key) / "model.safetensors"
    if not path.is_file() or not (entry_dir(key) / "meta.json").is_file():
        return False
    wanted = {name for name in _unique_state(model)}
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as fh:
            if set(fh.keys()) != wanted:
                log.warning("dequantized cache %s does not match the model; ignoring it", path)
                return False
            for name in wanted:
                module_name, _, attr = name.rpartition(".")
                module = model.get_submodule(module_name) if module_name else model
                module._parameters[attr] = nn.Parameter(fh.get_tensor(name), requires_grad=True)
    except (OSError, SafetensorError) as exc:
        log.warning("unreadable dequantized cache %s (%s); loading from the GGUF", path, exc)
        return False
    return True


@dataclass(frozen=True)
class CacheEntry:
    key: str
    path: Path
    size_bytes: int
    source: str | None
    dtype: str | None


def cache_usage() -> list[CacheEntry]:
    """Every complete entry with its size, for the cache pane's totals (and for deleting)."""
    root = cache_root()
    entries = []
    if not root.is_dir():
        return entries
    for d in sorted(root.iterdir()):
        meta_file = d / "meta.json"
        if not d.is_dir() or d.name.endswith(".partial") or not meta_file.is_file():
            continue
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
        entries.append(CacheEntry(d.name, d, size, meta.get("gguf_path"), meta.get("dtype")))
    return entries


def clear(key: str | None = None) -> int:
    """Delete one entry (or all); returns the bytes freed."""
    freed = 0
    for entry in cache_usage():
        if key is None or entry.key == key:
            freed += entry.size_bytes
            shutil.rmtree(entry.path, ignore_errors=True)
    return freed


def scan_cache_with_dequantized(folder: Path | str | None = None) -> CacheScan:
    """The HF cache scan, with the size of LlamaForge's dequantized-GGUF cache beside it (what the cache
    pane and ``llamaforge cache`` show: disk the user pays for)."""
    scan = scan_cache(folder)
    return dataclasses.replace(scan, dequantized_cache_bytes=sum(e.size_bytes for e in cache_usage()))
