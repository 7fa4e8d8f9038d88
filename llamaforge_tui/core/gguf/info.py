"""A GGUF header summary for listings: what a model is, without touching its weights.

Built on ``gguf_file.GgufFile``, which reads only the header and leaves big arrays (the vocabulary)
undecoded: the vocabulary size is the token array's length, read from its prefix. A summary of a
multi-GB file therefore costs about as much as reading its metadata block.
"""

from __future__ import annotations

from collections import Counter
import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from llamaforge_tui.core.fsutil import atomic_write_text, loads_json, read_regular
from llamaforge_tui.core.gguf.file import FILE_TYPE_NAMES, GgufFile
from llamaforge_tui.core.gguf.values import LazyArray

log = logging.getLogger(__name__)

# Names llama.cpp prints for the quantized types a model is "mostly" in, used when general.file_type is absent.
_WEIGHT_SUFFIX = ".weight"


@dataclass(frozen=True)
class BaseModelRef:
    """One ``general.base_model.N.*`` entry of a GGUF (what the model was made from, per its author)."""

    name: str | None = None
    organization: str | None = None
    version: str | None = None
    repo_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GgufSummary:
    path: Path
    file_size: int
    version: int
    architecture: str | None
    name: str | None
    quantization: str | None  # llama.cpp's name for general.file_type: "Q4_K_M", "Q8_0", "F16"...
    quantization_source: str  # "general.file_type", or "tensors" when guessed from the tensor types
    file_type: int | None
    tensor_types: dict[str, int]  # ggml type name -> number of tensors, most common first
    tensor_count: int
    parameter_count: int
    context_length: int | None
    block_count: int | None
    head_count: int | None
    head_count_kv: int | None
    embedding_length: int | None
    feed_forward_length: int | None
    vocab_size: int | None
    has_chat_template: bool
    tokenizer_model: str | None
    general_type: str | None  # "model", "adapter", ...
    split_count: int
    base_models: tuple[BaseModelRef, ...] = field(default_factory=tuple)

    @property
    def parameter_label(self) -> str:
        """268M, 1.5B, 8.0B: how model cards write sizes."""
        n = self.parameter_count
        if n >= 1e9:
            return f"{n / 1e9:.1f}B"
        if n >= 1e6:
            return f"{n / 1e6:.0f}M"
        return f"{n / 1e3:.0f}K"

    def tensor_types_text(self) -> str:
        return ", ".join(f"{count} {name}" for name, count in self.tensor_types.items())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        out["base_models"] = [b.to_dict() for b in self.base_models]
        return out

    @classmethod
    def from_dict(cls, data: Any) -> GgufSummary:
        """The inverse of ``to_dict``. Every field's type is checked (the dict comes from a cache file on
        disk, which may be corrupt): anything off raises ``ValueError``."""
        if not isinstance(data, dict):
            raise ValueError(f"a summary must be an object, not {type(data).__name__}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                if f.name == "base_models":
                    continue
                raise ValueError(f"missing field {f.name!r}")
            value = data[f.name]
            if not _field_ok(str(f.type), value):
                raise ValueError(f"field {f.name!r} has a wrong type ({type(value).__name__})")
            values[f.name] = value
        values["path"] = Path(values["path"])
        refs = values.get("base_models", [])
        if not isinstance(refs, list) or not all(
                isinstance(b, dict) and set(b) <= _REF_FIELDS and all(v is None or isinstance(v, str) for v in b.values())
                for b in refs):
            raise ValueError("field 'base_models' is not a list of base model entries")
        values["base_models"] = tuple(BaseModelRef(**b) for b in refs)
        return cls(**values)


_REF_FIELDS = frozenset(f.name for f in fields(BaseModelRef))


def _field_ok(annotation: str, value: Any) -> bool:
    """Whether a JSON value fits a ``GgufSummary`` field's annotation (the few kinds it uses)."""
    if value is None:
        return annotation.endswith("| None")
    base = annotation.removesuffix(" | None")
    if base == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if base == "bool":
        return isinstance(value, bool)
    if base in ("str", "Path"):
        return isinstance(value, str)
    if base == "dict[str, int]":
        return isinstance(value, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in value.values())
    return base.startswith("tuple[")  # base_models: checked by from_dict


def _int_or_none(value: Any) -> int | None:
    """Scalars as int; per-layer arrays (some archs store heads per layer) as their maximum."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, LazyArray):
        value = value.load()
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = [v for v in (value.tolist() if hasattr(value, "tolist") else value) if isinstance(v, int)]
        return max(items) if items else None
    return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _base_models(gf: GgufFile) -> tuple[BaseModelRef, ...]:
    count = gf.kv.get("general.base_model.count")
    if not isinstance(count, int) or count <= 0:
        return ()
    refs = []
    for i in range(min(count, 16)):
        prefix = f"general.base_model.{i}."
        ref = BaseModelRef(
            name=_str_or_none(gf.kv.get(prefix + "name")),
            organization=_str_or_none(gf.kv.get(prefix + "organization")),
            version=_str_or_none(gf.kv.get(prefix + "version")),
            repo_url=_str_or_none(gf.kv.get(prefix + "repo_url")),
        )
        if any(asdict(ref).values()):
            refs.append(ref)
    return tuple(refs)


def _guess_quantization(types: Counter[str], weight_types: Counter[str]) -> str | None:
    """Without general.file_type: the most common type among 2-D weights (F32 norms would dominate otherwise)."""
    source = weight_types or types
    return source.most_common(1)[0][0] if source else None


def summarize(gf: GgufFile) -> GgufSummary:
    """Summary of an open GGUF. Touches no tensor data and decodes no large array."""
    arch = gf.architecture
    types: Counter[str] = Counter()
    weight_types: Counter[str] = Counter()
    params = 0
    for info in gf.tensors:
        types[info.ggml_type.name] += 1
        params += info.n_elements
        if len(info.ne) >= 2 and info.name.endswith(_WEIGHT_SUFFIX):
            weight_types[info.ggml_type.name] += 1
    file_type = gf.kv.get("general.file_type")
    file_type = file_type if isinstance(file_type, int) and not isinstance(file_type, bool) else None
    if file_type is not None:
        quant, quant_source = FILE_TYPE_NAMES.get(file_type, f"unknown file type {file_type}"), "general.file_type"
    else:
        quant, quant_source = _guess_quantization(types, weight_types), "tensors"

    def arch_kv(suffix: str) -> Any:
        return gf.kv.get(f"{arch}.{suffix}") if arch else None

    vocab = _int_or_none(arch_kv("vocab_size"))
    if vocab is None:
        vocab = gf.array_len("tokenizer.ggml.tokens")
    split_count = gf.kv.get("split.count")
    return GgufSummary(
        path=gf.path,
        file_size=gf.file_size,
        version=gf.version,
        architecture=arch,
        name=_str_or_none(gf.kv.get("general.name")),
        quantization=quant,
        quantization_source=quant_source,
        file_type=file_type,
        tensor_types=dict(types.most_common()),
        tensor_count=len(gf.tensors),
        parameter_count=params,
        context_length=_int_or_none(arch_kv("context_length")),
        block_count=_int_or_none(arch_kv("block_count")),
        head_count=_int_or_none(arch_kv("attention.head_count")),
        head_count_kv=_int_or_none(arch_kv("attention.head_count_kv")),
        embedding_length=_int_or_none(arch_kv("embedding_length")),
        feed_forward_length=_int_or_none(arch_kv("feed_forward_length")),
        vocab_size=vocab,
        has_chat_template=isinstance(gf.kv.get("tokenizer.chat_template"), str)
        and bool(gf.kv.get("tokenizer.chat_template")),
        tokenizer_model=_str_or_none(gf.kv.get("tokenizer.ggml.model")),
        general_type=_str_or_none(gf.kv.get("general.type")),
        split_count=split_count if isinstance(split_count, int) and split_count > 0 else 1,
        base_models=_base_models(gf),
    )


def summarize_gguf(path: str | Path) -> GgufSummary:
    """Open, summarize, close. Raises ``GgufError`` (with the path) for anything that is not a sound GGUF."""
    with GgufFile(path) as gf:
        return summarize(gf)


class SummaryCache:
    """Summaries of files already read, on disk, so reopening the app does not re-parse 80 headers.

    Ollama blobs are named by their content hash and never change in place; the key still includes size
    and mtime, so any file that does change is read again. Only sound files are cached (errors are
    re-checked each scan). Entries not used by a scan are dropped when it saves.
    """

    FORMAT = 1
    MAX_BYTES = 256 * 1024 * 1024  # ~100 bytes of JSON per model: far more than any store needs

    def __init__(self, path: Path) -> None:
        self.path = path
        self._old: dict[str, Any] = {}
        self._new: dict[str, Any] = {}
        try:
            doc = loads_json(read_regular(path, self.MAX_BYTES))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable GGUF summary cache %s: %s", path, exc)
            return
        if isinstance(doc, dict) and doc.get("format") == self.FORMAT and isinstance(doc.get("entries"), dict):
            self._old = doc["entries"]

    @staticmethod
    def _stamp(path: Path) -> list[int]:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]

    def summarize(self, path: Path) -> GgufSummary:
        """``summarize_gguf(path)``, from the cache when the file is unchanged."""
        key = str(path)
        stamp = self._stamp(path)
        entry = self._old.get(key) or self._new.get(key)
        if isinstance(entry, dict) and entry.get("stamp") == stamp:
            try:
                summary = GgufSummary.from_dict(entry.get("summary"))
            except (TypeError, ValueError) as exc:  # corrupt entry: discarded, the file is read again
                log.debug("discarding the cached summary of %s: %s", path, exc)
            else:
                self._new[key] = entry
                return summary
        summary = summarize_gguf(path)
        self._new[key] = {"stamp": stamp, "summary": summary.to_dict()}
        return summary

    def save(self) -> None:
        if self._new == self._old:
            return
        try:
            atomic_write_text(self.path, json.dumps({"format": self.FORMAT, "entries": self._new}))
        except OSError as exc:  # a cache that cannot be written only costs time
            log.warning("cannot write the GGUF summary cache %s: %s", self.path, exc)
        self._old = dict(self._new)
