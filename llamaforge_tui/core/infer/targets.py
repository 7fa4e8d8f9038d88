"""What can be chatted with, and how a TARGET string names it.

A TARGET is one of:

- ``ollama:NAME[:TAG]``: a model on the Ollama server (answered through ``/api/chat``);
- a ``.gguf`` file or an export folder (``RUN/export``, the one holding the ``Modelfile``): the exported model in
  llama.cpp, with the TEMPLATE, SYSTEM and PARAMETERs of its Modelfile. An adapter GGUF (``general.type =
  adapter``) is run on the base its Modelfile names (``FROM`` + ``ADAPTER``);
- a run folder, or a run id under the runs dir: the run's base with its adapter (see ``session.py``).

``list_targets`` offers every run that has an adapter, every export, and every Ollama model in the store.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.infer.generation import ChatError

if TYPE_CHECKING:
    from llamaforge_tui.core.settings import Settings

log = logging.getLogger(__name__)

KINDS = ("run", "gguf", "ollama")
MODELFILE = "Modelfile"


@dataclass(frozen=True)
class ChatTarget:
    """``kind``: run | gguf | ollama. ``text`` is what the user typed (or what the picker offers)."""

    kind: str
    text: str
    label: str
    path: Path | None = None  # the run folder, or the GGUF (the base GGUF when ``adapter`` is set)
    name: str | None = None  # the Ollama model
    adapter: Path | None = None  # an adapter GGUF applied on ``path``
    modelfile: dict[str, Any] = field(default_factory=dict, compare=False)  # parsed Modelfile (gguf targets)

    @property
    def can_compare(self) -> bool:
        return self.kind == "run"


def parse_target(text: str, settings: Settings | None = None) -> ChatTarget:
    """Resolve a TARGET string; raises ChatError (or ConfigError for a missing run) with what was expected."""
    text = text.strip()
    if not text:
        raise ChatError("no chat target: give a run (folder or id), an exported .gguf or export folder, or ollama:NAME")
    if text.startswith("ollama:"):
        name = text.removeprefix("ollama:").strip()
        if not name:
            raise ChatError("ollama: needs a model name, e.g. ollama:gemma3:270m")
        return ChatTarget("ollama", text, name, name=name)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return gguf_target(path, text, settings)
    if path.is_dir() and (path / MODELFILE).is_file():
        return export_folder_target(path, text, settings)
    from llamaforge_tui.core.train import runs

    run_dir = runs.find_run(_settings(settings), text)
    return ChatTarget("run", text, run_dir.name, path=run_dir)


def _settings(settings: Settings | None) -> Settings:
    from llamaforge_tui.core.settings import Settings as _Settings

    return settings or _Settings()


def read_modelfile(path: Path) -> dict[str, Any]:
    from llamaforge_tui.core.ollama.modelfile import parse_modelfile

    try:
        return parse_modelfile(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ChatError(f"cannot read {path}: {exc}") from exc


def _from_path(value: str, folder: Path, settings: Settings | None) -> Path:
    """A Modelfile FROM/ADAPTER value: a file (relative to the Modelfile's folder) or an Ollama model name."""
    value = value.strip().strip('"')
    candidate = Path(value).expanduser()
    candidate = candidate if candidate.is_absolute() else folder / candidate
    if candidate.is_file():
        return candidate.resolve()
    if value.startswith((".", "/", "~")) or value.lower().endswith(".gguf"):
        raise ChatError(f"{folder / MODELFILE}: {value} does not exist")
    from llamaforge_tui.core.ollama.store import find_model

    try:
        model = find_model(_settings(settings), value, summarize=False)
    except LlamaForgeError as exc:
        raise ChatError(f"{folder / MODELFILE}: FROM {value}: {exc}") from exc
    if model.gguf_path is None:
        raise ChatError(f"{folder / MODELFILE}: FROM {value}: the Ollama model has no GGUF weights ({model.status})")
    return Path(model.gguf_path)


def export_folder_target(folder: Path, text: str, settings: Settings | None) -> ChatTarget:
    modelfile = read_modelfile(folder / MODELFILE)
    if not modelfile.get("from"):
        raise ChatError(f"{folder / MODELFILE} has no FROM line")
    base = _from_path(str(modelfile["from"]), folder, settings)
    adapter = _from_path(str(modelfile["adapter"]), folder, settings) if modelfile.get("adapter") else None
    label = f"{folder.parent.name}/{folder.name}" + (" (base + adapter)" if adapter else f" ({base.name})")
    return ChatTarget("gguf", text, label, path=base, adapter=adapter, modelfile=modelfile)


def gguf_target(path: Path, text: str, settings: Settings | None) -> ChatTarget:
    """A merged GGUF (with the Modelfile beside it when that Modelfile serves it), or an adapter GGUF."""
    from llamaforge_tui.core.gguf.file import GgufFile

    path = path.resolve()
    try:
        with GgufFile(path) as gguf:
            kind = gguf.get("general.type")
    except LlamaForgeError as exc:
        raise ChatError(f"{path} is not a readable GGUF: {exc}") from exc
    modelfile_path = path.parent / MODELFILE
    if kind == "adapter":
        if not modelfile_path.is_file():
            raise ChatError(f"{path.name} is a LoRA adapter: it needs its base model. Give the export folder "
                            f"({path.parent}) whose Modelfile names the base (FROM)")
        target = export_folder_target(path.parent, text, settings)
        if target.adapter != path:
            raise ChatError(f"{modelfile_path} does not use {path.name} as its ADAPTER")
        return target
    modelfile: dict[str, Any] = {}
    if modelfile_path.is_file():
        candidate = read_modelfile(modelfile_path)
        with contextlib.suppress(ChatError):
            if not candidate.get("adapter") and _from_path(str(candidate.get("from", "")), path.parent, settings) == path:
                modelfile = candidate
    return ChatTarget("gguf", text, path.name, path=path, modelfile=modelfile)


def run_dir_of(target: ChatTarget | None) -> Path | None:
    """The run behind a target: the run itself, or the run folder an export lives in (for its eval prompts)."""
    if target is None or target.path is None:
        return None
    if target.kind == "run":
        return target.path
    for parent in Path(target.text).expanduser().resolve().parents:
        if (parent / "config.toml").is_file():
            return parent
    return None


def list_targets(settings: Settings | None = None) -> list[ChatTarget]:
    """Runs with an adapter (newest first), their exports, then the Ollama store's models. Never raises: what
    cannot be read is left out (and logged)."""
    from llamaforge_tui.core.infer.run_data import find_adapter
    from llamaforge_tui.core.train import runs

    settings = _settings(settings)
    out: list[ChatTarget] = []
    try:
        found = runs.list_runs(settings)
    except (LlamaForgeError, OSError) as exc:
        log.warning("cannot list runs: %s", exc)
        found = []
    exports: list[ChatTarget] = []
    for run in found:
        with contextlib.suppress(ChatError):
            find_adapter(Path(run.path))
            out.append(ChatTarget("run", str(run.path), run.run_id, path=Path(run.path)))
        folder = Path(run.path) / "export"
        if (folder / MODELFILE).is_file():
            try:
                exports.append(export_folder_target(folder, str(folder), settings))
            except LlamaForgeError as exc:
                log.info("export of %s not offered: %s", run.run_id, exc)
    out.extend(exports)
    try:
        from llamaforge_tui.core.ollama.store import scan_store

        for model in scan_store(settings, summarize=False).models:
            if model.status == "ok":
                out.append(ChatTarget("ollama", f"ollama:{model.full_name}", model.full_name, name=model.full_name))
    except (LlamaForgeError, OSError) as exc:
        log.warning("cannot scan the Ollama store: %s", exc)
    return out
