"""One model in the Ollama store, and Ollama's model names (``[host/][namespace/]name[:tag]``).

Split from ``ollama.py`` (which walks the store and fills these in) so that the name rules and the
``models --json`` shape can be read, and imported, on their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.errors import StoreError
from llamaforge_tui.core.fsutil import loads_json, read_regular
from llamaforge_tui.core.ollama.manifest import Layer

if TYPE_CHECKING:
    from llamaforge_tui.core.gguf.info import GgufSummary

DEFAULT_REGISTRY = "registry.ollama.ai"
# manifests-v2 writes the public registry as ollama.com; both names mean the same registry.
PUBLIC_HOSTS = frozenset({"registry.ollama.ai", "ollama.com"})
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
STATUSES = ("ok", "cloud", "tensor", "split", "missing_blob", "broken", "unsupported")
MAX_TEXT_LAYER = 4 * 1024 * 1024  # template/system/params/license: real ones are a few kB


@dataclass
class OllamaModel:
    """One model in the store. ``status`` is one of ``STATUSES``; ``reason`` explains anything but ``ok``."""

    name: str
    tag: str
    namespace: str
    registry: str
    manifest_path: Path
    root: Path
    layout: str  # "manifests-v2" or "manifests"
    status: str = "ok"
    reason: str = ""
    gguf_path: Path | None = None
    size_bytes: int | None = None  # the GGUF blob's size, else the manifest's total
    layers: dict[str, Path | str] = field(default_factory=dict)  # kind -> blob path (first of each kind)
    all_layers: list[Layer] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: GgufSummary | None = None
    # Filled a layer up (``core.model.basemodel``), which joins the store with the HF cache: any object
    # with ``repo`` and ``to_dict()``.
    base_model: Any = None

    @property
    def full_name(self) -> str:
        """The name Ollama shows: ``gemma3:270m``, ``user/model:tag``, ``host/ns/model:tag``."""
        if self.registry in PUBLIC_HOSTS:
            if self.namespace == DEFAULT_NAMESPACE:
                return f"{self.name}:{self.tag}"
            return f"{self.namespace}/{self.name}:{self.tag}"
        return f"{self.registry}/{self.namespace}/{self.name}:{self.tag}"

    @property
    def key(self) -> tuple[str, str, str, str]:
        host = DEFAULT_REGISTRY if self.registry in PUBLIC_HOSTS else self.registry.lower()
        return (host, self.namespace.lower(), self.name.lower(), self.tag.lower())

    @property
    def total_size_bytes(self) -> int:
        return sum(layer.size for layer in self.all_layers)

    def layer_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for layer in self.all_layers:
            counts[layer.kind] = counts.get(layer.kind, 0) + 1
        return counts

    def read_layer_text(self, kind: str) -> str | None:
        """The text of a ``template``/``system``/``license`` layer (several license layers are joined)."""
        texts = []
        for layer in self.all_layers:
            if layer.kind == kind:
                try:  # regular files only (a FIFO would block), and bounded
                    texts.append(read_regular(layer.path, MAX_TEXT_LAYER).decode("utf-8", errors="replace"))
                except OSError as exc:
                    raise StoreError(f"{self.full_name}: cannot read {kind} layer {layer.path}: {exc.strerror or exc}") from exc
        return "\n\n".join(texts) if texts else None

    def params(self) -> dict[str, Any]:
        """The params layer (e.g. ``{"stop": [...], "temperature": 0.7}``); ``{}`` when there is none."""
        text = self.read_layer_text("params")
        if text is None:
            return {}
        try:
            value = loads_json(text)
        except ValueError as exc:  # malformed, nested too deep, a number too long
            raise StoreError(f"{self.full_name}: params layer is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise StoreError(f"{self.full_name}: params layer is not a JSON object")
        return value

    def to_dict(self) -> dict[str, Any]:
        """The ``models --json`` shape of ``shared/CLI.md`` (keys may be added, never renamed)."""
        s = self.summary
        b = self.base_model
        return {
            "name": self.name,
            "tag": self.tag,
            "namespace": self.namespace,
            "registry": self.registry,
            "full_name": self.full_name,
            "manifest_path": str(self.manifest_path),
            "layout": self.layout,
            "status": self.status,
            "reason": self.reason,
            "gguf_path": str(self.gguf_path) if self.gguf_path else None,
            "size_bytes": self.size_bytes,
            "architecture": s.architecture if s else None,
            "quantization": s.quantization if s else None,
            "parameter_count": s.parameter_count if s else None,
            "context_length": s.context_length if s else None,
            "has_chat_template": s.has_chat_template if s else None,
            "layers": {kind: str(path) for kind, path in self.layers.items()},
            "layer_counts": self.layer_counts(),
            "gguf": s.to_dict() if s else None,
            "base_model": b.to_dict() if b else {"repo": None, "source": None, "cache_status": None,
                                                   "cache_size_bytes": None},
        }


def parse_model_name(text: str) -> tuple[str, str, str, str]:
    """``gemma3`` / ``gemma3:270m`` / ``user/m:t`` / ``host/ns/m:t`` -> (registry, namespace, name, tag)."""
    raw = text.strip()
    if raw.startswith("ollama:"):
        raw = raw[len("ollama:"):]
    if not raw:
        raise StoreError("empty model name")
    path, _, tag = raw.rpartition(":") if ":" in raw.rsplit("/", 1)[-1] else (raw, "", "")
    parts = path.split("/")
    if len(parts) == 1:
        registry, namespace, name = DEFAULT_REGISTRY, DEFAULT_NAMESPACE, parts[0]
    elif len(parts) == 2:
        registry, (namespace, name) = DEFAULT_REGISTRY, parts
    elif len(parts) == 3:
        registry, namespace, name = parts
    else:
        raise StoreError(f"invalid Ollama model name {text!r} (expected [host/][namespace/]name[:tag])")
    if not all((registry, namespace, name)):
        raise StoreError(f"invalid Ollama model name {text!r}")
    return registry, namespace, name, tag or DEFAULT_TAG
