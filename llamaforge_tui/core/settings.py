"""User settings and the folders LlamaForge uses.

Settings live in ``<config dir>/settings.toml``. Nothing is read at import time: the CLI builds a
``Settings`` and passes it down (to the app factory, to core functions), so tests build their own.

Folders (overridable by environment, for tests and for users who keep data elsewhere):
- config: ``$LLAMAFORGE_CONFIG_DIR`` or ``$XDG_CONFIG_HOME/llamaforge`` or ``~/.config/llamaforge``
- data (runs, exports, caches): ``$LLAMAFORGE_DATA_DIR`` or ``$XDG_DATA_HOME/llamaforge`` or
  ``~/.local/share/llamaforge``
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from llamaforge_tui.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def config_dir() -> Path:
    if env := os.environ.get("LLAMAFORGE_CONFIG_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "llamaforge"


def data_dir() -> Path:
    if env := os.environ.get("LLAMAFORGE_DATA_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "llamaforge"


@dataclass
class Settings:
    """What the user can configure. Unknown keys in the file are errors, so typos surface."""

    # Ollama store roots; empty means the default search order ($OLLAMA_MODELS, ~/.ollama/models,
    # /usr/share/ollama/.ollama/models).
    models_dirs: list[str] = field(default_factory=list)
    # Ollama server, e.g. "127.0.0.1:11434"; empty means $OLLAMA_HOST or the default.
    ollama_host: str = ""
    # Hugging Face hub cache folder; empty means huggingface_hub's own resolution (HF_HUB_CACHE, HF_HOME).
    hf_cache_dir: str = ""
    # Where training runs are written; empty means <data dir>/runs.
    runs_dir: str = ""
    # User overrides of the Ollama model -> Hugging Face repo mapping, e.g. {"mymodel:latest": "Qwen/Qwen2.5-3B"}.
    base_model_overrides: dict[str, str] = field(default_factory=dict)
    # llama.cpp's extra buffer types (AMX tiles, repacked quantized weights): faster, but some native builds
    # crash with them on Intel AMX CPUs, so they are off unless this is true (core/export/llama_runner.py).
    llama_cpp_extra_buffers: bool = False

    @property
    def runs_path(self) -> Path:
        return Path(self.runs_dir).expanduser() if self.runs_dir else data_dir() / "runs"

    @classmethod
    def load(cls, path: Path | None = None) -> Settings:
        path = path or (config_dir() / "settings.toml")
        if not path.exists():
            return cls()
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read settings {path}: {exc}") from exc
        return cls.from_dict(raw, origin=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], origin: str = "settings") -> Settings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{origin}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**raw)

    def save(self, path: Path | None = None) -> Path:
        import tomli_w

        from llamaforge_tui.core.fsutil import atomic_write_text

        path = path or (config_dir() / "settings.toml")
        atomic_write_text(path, tomli_w.dumps(asdict(self)))
        return path
