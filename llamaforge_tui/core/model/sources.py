"""One notion of "model source": parse it, resolve it to files, describe it.

A source is ``ollama:NAME[:TAG]``, ``hf:ORG/NAME[@REV]``, a path to a GGUF file (Ollama blobs have no extension, so
a file is recognised by its magic, not its name) or a path to a local Hugging Face model folder. Parsing is pure;
resolving finds the GGUF blob or the HF snapshot (downloading an ``hf:`` repo through the cache module once) and does
no heavy work, so the UI can show what will be loaded before it is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.errors import LlamaForgeError, SourceError

if TYPE_CHECKING:
    from llamaforge_tui.core.ollama.store import OllamaModel
    from llamaforge_tui.core.settings import Settings

WEIGHTS = ("gguf", "hf", "gguf-quantized")
KINDS = ("ollama", "hf", "gguf", "hf_dir")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_OLLAMA_RE = re.compile(r"^(?:[A-Za-z0-9.:_-]+/)*[a-z0-9][a-z0-9._-]*(?::[A-Za-z0-9._-]+)?$", re.IGNORECASE)
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source string. ``kind`` is one of ``ollama``, ``hf``, ``gguf``, ``hf_dir``."""

    text: str
    kind: str
    name: str | None = None  # ollama: "name:tag" (tag defaults to latest)
    repo: str | None = None  # hf: "org/name"
    revision: str | None = None  # hf: "@rev"
    path: Path | None = None  # gguf / hf_dir


def _is_gguf_file(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def parse_source(text: str) -> SourceSpec:
    """Parse a source string; ``SourceError`` with a hint for anything else."""
    raw = (text or "").strip()
    if not raw:
        raise SourceError("empty model source; use ollama:NAME[:TAG], hf:ORG/NAME[@REV], a .gguf file or a model folder")
    if raw.startswith("ollama:"):
        name = raw[len("ollama:") :]
        if not name or not _OLLAMA_RE.match(name) or name.endswith(":"):
            raise SourceError(f"invalid Ollama model name {name!r} in {raw!r} (expected ollama:NAME[:TAG])")
        last = name.rsplit("/", 1)[-1]
        if ":" not in last:
            name = f"{name}:latest"
        return SourceSpec(raw, "ollama", name=name)
    if raw.startswith("hf:"):
        rest = raw[len("hf:") :]
        repo, _, rev = rest.partition("@")
        if not _REPO_RE.match(repo) or "--" in repo or ".." in repo:
            raise SourceError(f"invalid Hugging Face repo {repo!r} in {raw!r} (expected hf:ORG/NAME[@REV])")
        if "@" in rest and not rev:
            raise SourceError(f"empty revision after '@' in {raw!r}")
        return SourceSpec(raw, "hf", repo=repo, revision=rev or None)
    path = Path(raw).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SourceError(f"{path} is a folder without config.json, so not a Hugging Face model folder")
        return SourceSpec(raw, "hf_dir", path=path)
    if path.is_file():
        if path.suffix.lower() == ".gguf" or _is_gguf_file(path):
            return SourceSpec(raw, "gguf", path=path)
        raise SourceError(f"{path} is neither a GGUF file nor a Hugging Face model folder")
    if path.suffix.lower() == ".gguf":
        raise SourceError(f"GGUF file not found: {path}")
    hint = ""
    if _REPO_RE.match(raw):
        hint = f"; for a Hugging Face repo write hf:{raw}"
    elif _OLLAMA_RE.match(raw):
        hint = f"; for an Ollama model write ollama:{raw}"
    raise SourceError(f"unknown model source {raw!r} (no such file or folder{hint})")


def _as_spec(source: str | SourceSpec) -> SourceSpec:
    return source if isinstance(source, SourceSpec) else parse_source(source)


@dataclass
class ResolvedSource:
    """Where a source's files are. Exactly one of ``gguf_path``/``model_dir`` is used for the weights
    (``weights`` says which); an Ollama source also carries the store model (template, params, base mapping)."""

    spec: SourceSpec
    weights: str
    gguf_path: Path | None = None
    model_dir: Path | None = None
    hf_repo: str | None = None
    hf_revision: str | None = None
    ollama_model: OllamaModel | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def uses_gguf(self) -> bool:
        return self.weights in ("gguf", "gguf-quantized")

    @property
    def ollama_template(self) -> str | None:
        return self.ollama_model.read_layer_text("template") if self.ollama_model is not None else None


def check_weights(weights: str) -> str:
    if weights not in WEIGHTS:
        raise SourceError(f"unknown weights {weights!r} (choose one of: {', '.join(WEIGHTS)})")
    return weights


def hf_snapshot(repo: str, revision: str | None, settings: Settings | None, *, download: bool = True,
                progress: Callable[[Any], None] | None = None) -> Path:
    """The local snapshot folder of ``repo``: from the HF cache if it is there, else downloaded once through the
    cache module (config, tokenizer and safetensors only)."""
    from huggingface_hub import try_to_load_from_cache

    from llamaforge_tui.core.hub.layout import cache_dir_from_settings

    # Resolved at call time: huggingface_hub fixes its default cache folder at import, before HF_HOME may change.
    cache_dir = cache_dir_from_settings(settings)
    try:
        cached = try_to_load_from_cache(repo, "config.json", cache_dir=cache_dir, revision=revision)
    except ValueError as exc:  # huggingface_hub's HFValidationError for ids it rejects
        raise SourceError(f"cannot look up {repo} in the Hugging Face cache: {exc}") from exc
    if isinstance(cached, str):
        folder = Path(cached).parent
        if any(folder.glob("*.safetensors")):
            return folder
    if not download:
        raise SourceError(f"{repo} is not in the Hugging Face cache; run `llamaforge download {repo}` first")
    from llamaforge_tui.core.hub.cache import download_repo

    return download_repo(repo, revision, cache_dir, progress=progress)


def resolve_source(source: str | SourceSpec, settings: Settings | None = None, weights: str = "gguf", *,
                   download: bool = True, progress: Callable[[Any], None] | None = None) -> ResolvedSource:
    """Find the files behind a source for the chosen weights. Hugging Face sources always use ``hf`` weights."""
    spec = _as_spec(source)
    weights = check_weights(weights)
    if spec.kind in ("hf", "hf_dir"):
        if weights == "gguf-quantized":
            raise SourceError(f"{spec.text} is a Hugging Face model: --weights gguf-quantized needs a GGUF source")
        if spec.kind == "hf_dir":
            return ResolvedSource(spec, "hf", model_dir=spec.path)
        folder = hf_snapshot(spec.repo or "", spec.revision, settings, download=download, progress=progress)
        return ResolvedSource(spec, "hf", model_dir=folder, hf_repo=spec.repo, hf_revision=spec.revision)
    if spec.kind == "gguf":
        resolved = ResolvedSource(spec, weights, gguf_path=spec.path)
        if weights == "hf":
            repo = _gguf_base_repo(spec.path)
            if repo is None:
                raise SourceError(
                    f"{spec.path} does not name its Hugging Face base (general.base_model.0.repo_url); "
                    "use --weights gguf, or give the base as hf:ORG/NAME"
                )
            resolved.hf_repo = repo
            resolved.model_dir = hf_snapshot(repo, None, settings, download=download, progress=progress)
        return resolved
    # ollama
    from llamaforge_tui.core.model.basemodel import find_ollama_model

    model = find_ollama_model(settings, spec.name or "")
    if model.status != "ok" or model.gguf_path is None:
        reason = f": {model.reason}" if model.reason else ""
        raise SourceError(f"Ollama model {model.full_name} cannot be loaded ({model.status}{reason})")
    resolved = ResolvedSource(spec, weights, gguf_path=Path(model.gguf_path), ollama_model=model)
    if weights == "hf":
        base = model.base_model
        if base is None or not base.repo:
            detail = f" ({base.detail})" if base is not None and getattr(base, "detail", "") else ""
            raise SourceError(
                f"no Hugging Face base model is known for {model.full_name}{detail}; use --weights gguf, "
                "or set base_model_overrides in settings"
            )
        resolved.hf_repo = base.repo
        resolved.hf_revision = getattr(base, "revision", None)
        resolved.model_dir = hf_snapshot(base.repo, resolved.hf_revision, settings, download=download,
                                         progress=progress)
    return resolved


def _gguf_base_repo(path: Path | None) -> str | None:
    from llamaforge_tui.core.gguf.file import GgufFile

    if path is None:
        return None
    with GgufFile(path) as gguf:
        url = gguf.get("general.base_model.0.repo_url") or ""
    m = re.match(r"^https://huggingface\.co/([^/]+/[^/]+)/?$", str(url))
    return m.group(1) if m else None


@dataclass(frozen=True)
class SourceDescription:
    """What was loaded, for the UI, run folders (``source.json``) and export (which reopens ``gguf_path`` to copy
    every KV of the original file)."""

    source: str
    kind: str
    weights: str
    architecture: str | None
    dtype: str
    device: str
    gguf_path: str | None = None
    gguf_file_type: str | None = None
    hf_repo: str | None = None
    hf_revision: str | None = None
    model_dir: str | None = None
    ollama_model: str | None = None
    parameter_count: int = 0
    chat_template: str | None = None
    template_origin: str = "none"
    ollama_template: str | None = None
    gguf_sha256: str | None = None  # the Ollama blob digest when known (a free, exact identity of the file)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceDescription:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def open_gguf(self) -> Any:
        """Reopen the source GGUF (metadata and tensors, lazily) — how export copies the original KV."""
        from llamaforge_tui.core.gguf.file import GgufFile

        if not self.gguf_path:
            raise LlamaForgeError(f"source {self.source} has no GGUF file")
        return GgufFile(self.gguf_path)


def blob_digest(path: Path | None) -> str | None:
    """``sha256-<hex>`` Ollama blob names carry the file's digest; reuse it instead of hashing gigabytes."""
    if path is None:
        return None
    m = re.match(r"^sha256[-:]([0-9a-fA-F]{64})$", path.name)
    return m.group(1).lower() if m else None
