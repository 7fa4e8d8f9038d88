"""Export a finished run: merged GGUF (or LoRA-adapter GGUF), Modelfile, verification, registration.

One blocking call with a progress callback and a stop event (``export_run``), used by ``llamaforge export``
and the TUI's Export view alike. The pieces live beside it: ``export_merge`` (GGUF sources, tensor by
tensor), ``export_hf`` (Hugging Face sources), ``adapter_gguf``, ``kquant``, ``modelfile``, ``register``,
``export_verify``/``verify``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamaforge_tui.core.export import kquant

from llamaforge_tui.core.train import runs
from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.export.merge import FILE_TYPES, PLAIN_TYPES
from llamaforge_tui.core.fsutil import atomic_write_text
from llamaforge_tui.core.gguf.file import GgufFile
from llamaforge_tui.core.gguf.writer import ExportCancelled, ExportError, KVEntry, WriteProgress, kv, write_gguf
from llamaforge_tui.core.model.lora_weights import LoraAdapter, find_adapter_dir, load_lora
from llamaforge_tui.core.export.verify import Verification

__all__ = ["EXPORT_TYPES", "ExportCancelled", "ExportError", "ExportOptions", "ExportProgress", "ExportResult",
           "RunInfo", "VerificationFailed", "default_type", "export_run", "load_run"]

EXPORT_TYPES = ("auto", *PLAIN_TYPES, *kquant.KQUANT_TYPES, "keep", "hybrid", "hybrid-f16")
SMALL_MODEL_PARAMS = 3_000_000_000


class VerificationFailed(ExportError):
    """The exported file does not compute what the trained model computes (gates of the issue)."""

    def __init__(self, message: str, result: ExportResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class ExportProgress:
    """``phase``: prepare/write/quantize/verify/register/done; ``done``/``total`` when measurable."""

    phase: str
    message: str
    done: int = 0
    total: int = 0


@dataclass
class ExportOptions:
    out_type: str = "auto"
    adapter: bool = False
    name: str | None = None
    register: bool = False
    verify: bool = False
    out_dir: Path | None = None
    force: bool = False
    host: str | None = None  # Ollama server; None: settings / $OLLAMA_HOST


@dataclass
class ExportResult:
    gguf_path: Path | None
    type: str
    size_bytes: int
    modelfile_path: Path
    adapter_path: Path | None = None
    registered_as: str | None = None
    verification: Verification | None = None
    create_command: str = ""
    name: str = ""
    warnings: list[str] = field(default_factory=list)
    registration_statuses: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The ``export --json`` shape of CLI.md (keys may be added, never renamed)."""
        v = self.verification
        return {
            "gguf_path": str(self.gguf_path) if self.gguf_path else None, "type": self.type,
            "size_bytes": self.size_bytes, "modelfile_path": str(self.modelfile_path),
            "adapter_path": str(self.adapter_path) if self.adapter_path else None,
            "registered_as": self.registered_as,
            "verification": None if v is None else {
                "top1_agreement": v.top1_agreement, "mean_kl": v.mean_kl, "max_kl": v.max_kl,
                "positions": v.positions, "passed": v.passed, "gate": v.gate, "warnings": v.warnings,
                "floor_kl": v.floor_kl, "method": v.method, "effect_kl": v.effect_kl,
                "buffer_types": v.buffer_types, "notes": v.notes,
                "parts": {k: {"top1_agreement": p.top1_agreement, "mean_kl": p.mean_kl, "min_top1": p.min_top1,
                              "max_kl": p.max_kl, "passed": p.passed, "what": p.what} for k, p in v.parts.items()},
                "sample": None if v.sample is None else {"prompt": v.sample.prompt, "expected": v.sample.expected,
                                                         "generated": v.sample.generated}},
            "name": self.name, "create_command": self.create_command, "warnings": self.warnings,
        }


@dataclass
class RunInfo:
    run_dir: Path
    run_id: str
    config: Any  # TrainConfig
    source: dict[str, Any]  # SourceDescription.to_dict()
    adapter_dir: Path

    @property
    def gguf_based(self) -> bool:
        """Weights came from the source GGUF (dequantized or kept quantized), not from an HF checkpoint."""
        return bool(self.source.get("gguf_path")) and self.source.get("weights") in ("gguf", "gguf-quantized")

    @property
    def ollama_model(self) -> str | None:
        return self.source.get("ollama_model") or None


def load_run(run_dir: Path | str, settings: Any = None) -> RunInfo:
    """A run folder (or run id) with its config, source description and trained adapter."""
    from llamaforge_tui.core.settings import Settings
    from llamaforge_tui.core.train.config import TrainConfig

    path = runs.find_run(settings or Settings(), run_dir)
    config = TrainConfig.from_file(path / runs.CONFIG_FILE)
    source = runs.read_source(path)
    if not source.get("source"):
        raise ExportError(f"{path}: {runs.SOURCE_FILE} is missing; the run never loaded its model")
    return RunInfo(path, path.name, config, source, find_adapter_dir(path))


def default_type(run: RunInfo) -> str:
    """Q8_0 for small models; Q4_K_M for bigger ones whose source was Q4_K_M, when llama.cpp can make it."""
    params = int(run.source.get("parameter_count") or 0)
    if (params >= SMALL_MODEL_PARAMS and (run.source.get("gguf_file_type") or "").upper() == "Q4_K_M"
            and kquant.kquant_available()):
        return "q4_k_m"
    return "q8_0"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:60] or "model"


def _default_name(run: RunInfo) -> str:
    base = run.ollama_model or Path(str(run.source.get("source", "model"))).name
    base = base.split("/")[-1].replace(":", "-").removesuffix(".gguf")
    return _slug(f"{base}-{run.run_id.split('-', 2)[-1] if run.run_id.count('-') >= 2 else run.run_id}-ft")


def _base_name(run: RunInfo) -> str:
    return run.ollama_model or run.source.get("hf_repo") or Path(str(run.source.get("source", ""))).name


def _provenance(run: RunInfo, adapter: LoraAdapter, name: str) -> dict[str, KVEntry]:
    cfg = run.config
    desc = (f"LoRA fine-tune made with LlamaForge (run {run.run_id}; r={adapter.r}, alpha={adapter.alpha:g}"
            f"{', rsLoRA' if adapter.use_rslora else ''}; data {Path(str(cfg.data)).name})")
    meta = {"general.name": kv(name), "general.description": kv(desc),
            "general.base_model.count": kv(1), "general.base_model.0.name": kv(_base_name(run))}
    if run.source.get("hf_repo"):
        meta["general.base_model.0.repo_url"] = kv(f"https://huggingface.co/{run.source['hf_repo']}")
    return meta


def _training_template(run: RunInfo, settings: Any) -> tuple[Any, Any]:
    """(TokenizerBundle, ChatTemplateChoice) as training resolved them."""
    from llamaforge_tui.core.model import loading
    from llamaforge_tui.core.data.chat_templates import resolve_chat_template

    weights = run.source.get("weights") or "gguf"
    bundle = loading.load_tokenizer(run.source["source"], settings, "gguf" if weights == "gguf-quantized" else weights)
    tok = bundle.tokenizer
    if isinstance(bundle.chat_template, str) and not getattr(tok, "chat_template", None):
        tok.chat_template = bundle.chat_template
    return bundle, resolve_chat_template(tok, bundle.architecture or run.source.get("architecture"),
                                         override=run.config.chat_template, ollama_template=bundle.ollama_template)


def _modelfile_spec(run: RunInfo, settings: Any, bundle: Any, choice: Any, from_: str, adapter: str | None) -> Any:
    from llamaforge_tui.core.ollama import modelfile

    if run.ollama_model:
        from llamaforge_tui.core.ollama.store import find_model

        try:
            model = find_model(settings, run.ollama_model, summarize=False)
        except LlamaForgeError:  # the store model is gone: fall back to the template family
            model = None
        if model is not None and model.read_layer_text("template") is not None:
            return modelfile.from_ollama_model(model, from_, adapter=adapter)
    tok = bundle.tokenizer
    family = "completion" if _is_text_data(run) else choice.name
    return modelfile.from_template_family(from_, family, eos_token=tok.eos_token, vocab=set(tok.get_vocab()),
                                          adapter=adapter, chat_template=choice.template)


def _is_text_data(run: RunInfo) -> bool:
    return str(run.config.data_format or "").lower() in ("text", "txt", "raw")


def _emit_writer(emit: Callable[[ExportProgress], None], what: str) -> Callable[[WriteProgress], None]:
    return lambda p: emit(ExportProgress("write", f"{what}: {p.tensor_name}", p.bytes_done, p.bytes_total))


def _write_merged(run: RunInfo, adapter: LoraAdapter, out_type: str, path: Path, meta: dict[str, KVEntry],
                  emit: Callable[[ExportProgress], None], stop_event: threading.Event | None) -> int:
    """The merged GGUF at ``path`` in ``out_type`` (K-quants through an F16 temporary file)."""
    write_type = "f16" if out_type in kquant.KQUANT_TYPES else out_type
    if write_type == "hybrid" and not run.gguf_based:
        raise ExportError("the hybrid output keeps the source's quantized tensors, so it needs a GGUF/Ollama source")
    target = path
    tmpdir = None
    if write_type != out_type:
        tmpdir = Path(tempfile.mkdtemp(prefix=".lf-f16-", dir=path.parent))
        target = tmpdir / "merged-f16.gguf"
    try:
        if run.gguf_based:
            from llamaforge_tui.core.export.merge import plan_gguf_merge

            with GgufFile(run.source["gguf_path"]) as src:
                kvd, plans, merged = plan_gguf_merge(src, adapter, write_type, kv_overrides=meta)
                emit(ExportProgress("write", f"merging {merged} LoRA tensors into {len(plans)} tensors ({write_type})"))
                size = write_gguf(target, kvd, plans, progress=_emit_writer(emit, "writing"), stop_event=stop_event)
        else:
            from llamaforge_tui.core.export.hf import plan_hf_export

            kvd, plans, closer = plan_hf_export(Path(run.source["model_dir"]), run.source.get("architecture"),
                                                adapter, write_type, kv_overrides=meta)
            try:
                size = write_gguf(target, kvd, plans, progress=_emit_writer(emit, "writing"), stop_event=stop_event)
            finally:
                closer()
        if tmpdir is not None:
            emit(ExportProgress("quantize", f"quantizing to {out_type.upper()} with llama.cpp"))
            size = kquant.quantize_file(
                target, path, out_type, stop_event=stop_event,
                on_progress=lambda d, t: emit(ExportProgress("quantize", f"quantizing to {out_type.upper()}", d, t)))
        return size
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def export_run(run_dir: Path | str, options: ExportOptions, settings: Any = None, *,
               progress: Callable[[ExportProgress], None] | None = None,
               stop_event: threading.Event | None = None) -> ExportResult:
    """Write the export of a run, its Modelfile, then verify and register as asked. Raises ``ExportError``s."""
    from llamaforge_tui.core.export.adapter_gguf import write_adapter_gguf
    from llamaforge_tui.core.export.merge import shape_of
    from llamaforge_tui.core.ollama.register import create_command, validate_name

    emit = progress or (lambda p: None)
    run = load_run(run_dir, settings)
    out_type = (options.out_type or "auto").lower()
    if out_type not in EXPORT_TYPES:
        raise ExportError(f"unknown export type {options.out_type!r}; use one of {', '.join(EXPORT_TYPES)}")
    if out_type == "auto":
        out_type = default_type(run)
    if out_type in kquant.KQUANT_TYPES and not options.adapter and not kquant.kquant_available():
        raise ExportError(f"{out_type.upper()} needs llama.cpp's quantizer: install it with {kquant.INSTALL_HINT}")
    if options.verify:
        from llamaforge_tui.core.export.llama_runner import require_llama_cpp

        require_llama_cpp("verification")
    name = validate_name(options.name or _default_name(run))
    out_dir = Path(options.out_dir or run.run_dir / "export").expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    emit(ExportProgress("prepare", f"reading the adapter of {run.run_id}"))
    adapter = load_lora(run.adapter_dir)
    bundle, choice = _training_template(run, settings)
    meta = _provenance(run, adapter, name)
    result_type = "adapter" if options.adapter else out_type
    gguf_path: Path | None = None
    adapter_path: Path | None = None
    if options.adapter:
        if not run.gguf_based:
            raise ExportError("--adapter needs a GGUF or Ollama source: the adapter applies to that exact file. "
                              "This run trained on Hugging Face weights; export the merged GGUF instead")
        adapter_path = out_dir / "adapter.gguf"
        from_ = run.ollama_model or str(Path(run.source["gguf_path"]).resolve())
        spec = _modelfile_spec(run, settings, bundle, choice, from_, "./adapter.gguf")
        spec.notes.append("ADAPTER support in Ollama varies by version; the merged GGUF (without --adapter) "
                          "is the safe default")
        modelfile_text = spec.render()  # before the (long) write: a Modelfile that cannot be written fails first
        with GgufFile(run.source["gguf_path"]) as src:
            shape, names = shape_of(src), {t.name for t in src.tensors}
        emit(ExportProgress("write", f"writing the LoRA adapter ({len(adapter.modules)} modules)"))
        size = write_adapter_gguf(adapter_path, adapter, shape, names, name=name, base_name=_base_name(run),
                                  description=meta["general.description"].value,
                                  progress=_emit_writer(emit, "adapter"))
    else:
        if run.gguf_based:
            with GgufFile(run.source["gguf_path"]) as src:
                has_template = src.get("tokenizer.chat_template") is not None
        else:
            has_template = bool(bundle.chat_template)
        if not has_template and choice.template and not _is_text_data(run):
            meta["tokenizer.chat_template"] = kv(choice.template)  # the source lacked one: the training format
        gguf_path = out_dir / f"{name.replace('/', '-').replace(':', '-')}-{out_type}.gguf"
        spec = _modelfile_spec(run, settings, bundle, choice, f"./{gguf_path.name}", None)
        modelfile_text = spec.render()  # before the (long) write: a Modelfile that cannot be written fails first
        size = _write_merged(run, adapter, out_type, gguf_path, meta, emit, stop_event)
    modelfile_path = out_dir / "Modelfile"
    atomic_write_text(modelfile_path, modelfile_text)
    result = ExportResult(gguf_path, result_type, size, modelfile_path, adapter_path, name=name,
                          create_command=f"cd {out_dir} && {create_command(name, 'Modelfile')}")
    if options.verify:
        from llamaforge_tui.core.export.reference import build_reference

        emit(ExportProgress("verify", "building the reference (merged PyTorch model)"))
        ref = build_reference(run.source, run.config, run.adapter_dir, settings,
                              lambda m: emit(ExportProgress("verify", m)))
        emit(ExportProgress("verify", "comparing llama.cpp with the reference"))
        if options.adapter:
            result.verification = verify_adapter(run, ref, adapter_path, emit)
        else:
            result.verification = verify_merged(run, ref, gguf_path, out_type, out_type, emit)
        result.warnings += result.verification.warnings
        if not result.verification.passed:
            runs.record_export(run.run_dir, result.to_dict())  # `runs show` lists failed exports too
            raise VerificationFailed("verification failed: " + "; ".join(result.verification.warnings), result)
    try:
        if options.register:
            _register(result, spec, options, settings, emit)
    finally:  # the files are written either way; `runs show` lists them, registered or not
        runs.record_export(run.run_dir, result.to_dict())
    emit(ExportProgress("done", f"exported {result.gguf_path or result.adapter_path}"))
    return result


def verify_merged(run: RunInfo, ref: Any, path: Path, out_type: str, label: str,
                  emit: Callable[[ExportProgress], None], *, sample: bool = True) -> Verification:
    """Verify a merged file. Q8_0 is judged in parts (``verify.judge_parts``): the file's own weights in PyTorch,
    llama.cpp's F16 run of those weights, and llama.cpp's Q8_0 arithmetic, so a CPU's kernels cannot fail a
    correct file and a wrong layout or a lost LoRA cannot pass."""
    from llamaforge_tui.core.export.merge import plan_gguf_merge
    from llamaforge_tui.core.export.verify import gate_class

    def say(message: str) -> None:
        emit(ExportProgress("verify", message))

    if gate_class(out_type) != "q8_0":
        return ref.verify(path, out_type, label=label, sample=sample)
    tmpdir = Path(tempfile.mkdtemp(prefix=".lf-f16-copy-", dir=path.parent))
    try:
        float_copy = tmpdir / "dequantized-f16.gguf"
        say(f"writing the weights of {path.name} as F16, for llama.cpp's own float run")
        with GgufFile(path) as src:
            kvd, plans, _ = plan_gguf_merge(src, None, "f16")
            write_gguf(float_copy, kvd, plans)
        return ref.verify(path, out_type, label=label, sample=sample, float_copy=float_copy, say=say)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def verify_adapter(run: RunInfo, ref: Any, adapter_path: Path, emit: Callable[[ExportProgress], None], *,
                   sample: bool = True) -> Verification:
    """Verify an adapter on its unchanged source. On a quantized source it is judged in parts
    (``verify.judge_adapter_parts``): llama.cpp's arithmetic on that source is measured on the source alone and
    cancelled, so a CPU's kernels cannot fail a correct adapter and a broken one cannot pass."""
    from llamaforge_tui.core.export.verify import gate_class

    gate = adapter_gate(run)
    return ref.verify(Path(run.source["gguf_path"]), gate, lora_path=adapter_path, label="adapter", sample=sample,
                      adapter_parts=gate_class(gate) != "float",
                      say=lambda m: emit(ExportProgress("verify", m)))


def adapter_gate(run: RunInfo) -> str:
    """An adapter on the unchanged source is judged by the source's own type."""
    ft = str(run.source.get("gguf_file_type") or "").lower()
    return ft if ft in ("f32", "f16", "bf16", "q8_0") else "adapter"


def _register(result: ExportResult, spec: Any, options: ExportOptions, settings: Any,
              emit: Callable[[ExportProgress], None]) -> None:
    from llamaforge_tui.core.ollama.api import ollama_host
    from llamaforge_tui.core.ollama.register import ServerUnreachable, register_export

    host = options.host or ollama_host(settings)

    def on_status(s: Any) -> None:
        if s.phase in ("create", "check"):
            result.registration_statuses.append(s.message)
        emit(ExportProgress("register", s.message, s.completed, s.total))

    try:
        reg = register_export(host, result.name, spec, model_path=result.gguf_path,
                              adapter_path=result.adapter_path if result.gguf_path is None else None,
                              force=options.force, on_status=on_status)
    except ServerUnreachable as exc:
        raise type(exc)(f"{exc}. The export is written; register it later with: {result.create_command}") from exc
    result.registered_as = reg.name


FILE_TYPE_OF = FILE_TYPES  # re-exported for the CLI's help text
