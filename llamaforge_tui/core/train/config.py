"""``TrainConfig``: every knob of a LoRA run, typed and validated, saved beside the run as ``config.toml``.

One flat table keeps the file easy to hand-edit and to diff between runs. Unknown keys are errors so a
typo (``learning_rte``) never silently trains with the default. TOML has no null, so optional fields
that are unset are simply left out of the file.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from llamaforge_tui.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCHEDULERS = ("cosine", "linear", "constant")
DTYPES = ("auto", "float32", "bfloat16", "float16")
WEIGHTS = ("gguf", "hf", "gguf-quantized")
# What each weight source means for the user, shown beside the choice in the Train pane.
WEIGHT_TRADEOFFS = {
    "gguf": "Dequantizes your local GGUF: nothing is downloaded and your own model is trained. A Q4 file is lossy, "
            "so the adapter learns on those (dequantized Q4) weights.",
    "hf": "The mapped Hugging Face base in full precision (the original weights): downloaded once into the HF "
          "cache. Best fidelity; the adapter may differ slightly from your quantized Ollama model.",
    "gguf-quantized": "LoRA on the GGUF's quantized blocks, dequantized on the fly: about a quarter of the memory "
                      "of 'gguf', somewhat slower. Export as an adapter for the unchanged model (most faithful), "
                      "or merge and requantize (a second round of quantization noise).",
}
POLICIES = ("skip", "strict")
COMPILE_MODES = ("auto", "on", "off")  # kept equal to core.train.compile.COMPILE_MODES (a test checks)
HEAD_KERNELS = ("auto", "compiled", "eager")  # and to core.train.loss.HEAD_KERNELS
FUSED_MODES = ("auto", "on", "off")  # and to core.train.fused.FUSED_MODES
RECOMPUTE_MODES = ("auto", "on", "off")  # and to core.train.fused.RECOMPUTE_MODES
ATTENTION_MODES = ("auto", "matmul", "sdpa")  # and to core.train.attention.ATTENTION_MODES
# Measured on Gemma 3 270M (2-core EPYC, bf16, batches of 4 up to 4 x 331 tokens, three runs each): no split
# 2,005-2,011 MiB peak RSS, 1,024 tokens a pass 1,658-1,690 MiB at the same or better speed, 512 tokens
# 1,564-1,568 MiB but slower in one run of three.
DEFAULT_PASS_TOKENS_CPU = 1024


def pass_tokens_for(value: int | None, device_type: str) -> int:
    """The tokens-per-pass budget a run uses: ``value`` when set (0: no split), else the device's default."""
    if value is not None:
        return value
    return DEFAULT_PASS_TOKENS_CPU if device_type == "cpu" else 0


# Modules LoRA must never wrap: the vocabulary-sized matrices would cost more than the whole adapter.
FORBIDDEN_TARGETS = frozenset({"embed_tokens", "lm_head", "wte", "wpe", "embed_out", "output"})


@dataclass
class TrainConfig:
    """A training run's settings. Field names match the ``llamaforge train`` options and the TOML keys."""

    # What to train on.
    model: str = ""  # a SOURCE: ollama:NAME[:TAG], hf:ORG/NAME[@REV], a .gguf path or an HF folder
    data: str = ""  # dataset file (JSONL/JSON/CSV/TXT)
    weights: str = "gguf"  # where an Ollama/GGUF source's weights come from
    data_format: str | None = None  # None: detect
    data_policy: str = "skip"  # bad records: skip them or fail
    chat_template: str | None = None  # override the model's template by name
    eval_split: float = 0.0
    seed: int = 0
    # LoRA.
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)  # empty: every linear projection of the blocks
    use_rslora: bool = False
    # Optimisation.
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    scheduler: str = "cosine"
    warmup_steps: int | None = None  # None: 3% of the steps
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 4  # micro-batch, per process
    grad_accum: int = 1
    max_seq_len: int = 1024
    # off (default): length-grouped batches padded to their longest (measured faster: short rows keep
    # attention cheap); on: examples packed into max_seq_len rows (no padding at all, but long rows).
    packing: bool = False
    gradient_checkpointing: bool = False
    # Speed levers (core/train/compile.py, loss.py); "auto" takes the default measured for the device.
    compile: str = "auto"  # torch.compile the decoder layers, regionally: auto | on | off
    head_kernel: str = "auto"  # the head loss's per-chunk softmax: auto | compiled | eager
    fused: str = "auto"  # RMSNorm and gated-MLP activations that keep less for backward: auto | on | off
    # Norm outputs and act(gate) * up rebuilt in backward instead of kept (eager: fused.py's recipes; compiled
    # layers: recompute regions for the partitioner): auto | on | off
    recompute: str = "auto"
    # Attention on a CPU: query heads folded into batched matmuls (core/train/attention.py) or SDPA's flash
    # kernel: auto (matmul where the layers are compiled on a CPU) | matmul | sdpa
    attention: str = "auto"
    # Tokens per forward pass: a micro-batch whose padded size (rows x width) is bigger runs as groups of rows,
    # their gradients summed (the same step, a fraction of the activation memory). None: auto (the CPU:
    # DEFAULT_PASS_TOKENS_CPU; elsewhere no split); 0: never split.
    pass_tokens: int | None = None
    dtype: str = "auto"  # auto: bf16 autocast where the hardware is fast at it
    device: str = "auto"  # auto: a CUDA/ROCm GPU, else the Apple GPU (mps), else the CPU
    # Bookkeeping.
    log_every: int = 1
    eval_every: int = 0  # 0: evaluate at the end only (when there is an eval split)
    # After the last step, base vs tuned loss (adapter off/on) as an EvalSummary event. None: when the run
    # has an eval split; True: always (on the training data when there is no split); False: never.
    eval_at_end: bool | None = None
    save_every: int = 50  # checkpoint every N optimizer steps (0: only at the end / on stop)
    keep_checkpoints: int = 3
    output_dir: str = ""  # the run folder; empty: <runs dir>/<run id>
    nproc: int = 1  # processes (torchrun) for DDP

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check types and ranges; raise ConfigError naming the key and what is allowed."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        checks: list[tuple[bool, str]] = [
            (0.0 <= self.eval_split < 1.0, "eval_split must be in [0, 1)"),
            (self.lora_r >= 1, "lora_r must be >= 1"),
            (self.lora_alpha > 0, "lora_alpha must be > 0"),
            (0.0 <= self.lora_dropout < 1.0, "lora_dropout must be in [0, 1)"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.max_grad_norm >= 0, "max_grad_norm must be >= 0 (0 turns clipping off)"),
            (self.scheduler in SCHEDULERS, f"scheduler must be one of {', '.join(SCHEDULERS)}"),
            (self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.epochs > 0, "epochs must be > 0"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.max_seq_len >= 8, "max_seq_len must be >= 8"),
            (self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}"),
            (self.compile in COMPILE_MODES, f"compile must be one of {', '.join(COMPILE_MODES)}"),
            (self.head_kernel in HEAD_KERNELS, f"head_kernel must be one of {', '.join(HEAD_KERNELS)}"),
            (self.fused in FUSED_MODES, f"fused must be one of {', '.join(FUSED_MODES)}"),
            (self.recompute in RECOMPUTE_MODES, f"recompute must be one of {', '.join(RECOMPUTE_MODES)}"),
            (self.attention in ATTENTION_MODES, f"attention must be one of {', '.join(ATTENTION_MODES)}"),
            (self.pass_tokens is None or self.pass_tokens >= 0, "pass_tokens must be >= 0 (0: never split)"),
            (self.weights in WEIGHTS, f"weights must be one of {', '.join(WEIGHTS)}"),
            (self.data_policy in POLICIES, f"data_policy must be one of {', '.join(POLICIES)}"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.eval_every >= 0, "eval_every must be >= 0"),
            (self.save_every >= 0, "save_every must be >= 0"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (self.nproc >= 1, "nproc must be >= 1"),
            (_valid_device(self.device), "device must be auto, cpu, cuda, cuda:N or mps"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"invalid training config: {message}")
        bad = sorted(set(self.target_modules) & FORBIDDEN_TARGETS)
        if bad:
            raise ConfigError(f"invalid training config: target_modules may not include {', '.join(bad)} "
                              "(LoRA on the embedding or output head is not supported)")

    def require_inputs(self) -> None:
        """A config saved from the TUI may lack model/data until the user picks them; a run may not."""
        if not self.model:
            raise ConfigError("no model: give --model SOURCE (or 'model' in the config file)")
        if not self.data:
            raise ConfigError("no dataset: give --data FILE (or 'data' in the config file)")

    # -- (de)serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], origin: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{origin}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        try:
            return cls(**raw)
        except ConfigError as exc:
            raise ConfigError(f"{origin}: {exc}") from None

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_file(cls, path: Path | str) -> TrainConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                raw = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
            raw = {} if raw is None else raw
        else:
            try:
                raw = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a table of settings, got {type(raw).__name__}")
        return cls.from_dict(raw, origin=str(path))

    def to_file(self, path: Path | str) -> Path:
        from llamaforge_tui.core.fsutil import atomic_write_text

        path = Path(path)
        data = {k: v for k, v in self.to_dict().items() if v is not None}
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(data, sort_keys=False)
        else:
            import tomli_w

            text = tomli_w.dumps(data)
        atomic_write_text(path, text)
        return path


def _valid_device(device: str) -> bool:
    if device in ("auto", "cpu", "cuda", "mps"):
        return True
    head, _, index = device.partition(":")
    return head == "cuda" and index.isdigit()


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Accept the value if it has the annotated type (ints for floats too); raise a ConfigError otherwise."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise ConfigError(f"invalid training config: {name} may not be empty")
    base = next((a for a in args if a is not type(None)), hint) if args and optional else hint
    origin = typing.get_origin(base)
    if origin is list:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"invalid training config: {name} must be a list of names")
        return list(value)
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this function does not know
        return value
    raise ConfigError(f"invalid training config: {name} must be {base.__name__}, got {value!r}")
