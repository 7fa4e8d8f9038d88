"""The reference side of verification: the merged PyTorch model on prompts from the training data.

Built once per run and reused for every candidate file (merged F16, Q8_0, hybrid, adapter...), so the
verification table can show the KL of each choice against the same reference. The model is loaded the
way training loaded it (``core.loading``, fp32 on CPU), the adapter merged with PEFT in fp32, and the
prompts encoded exactly as training encoded them (``train_setup.prepare_data``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llamaforge_tui.core.gguf.writer import ExportError
from llamaforge_tui.core.export.verify import (
    MIN_POSITIONS,
    LlamaCppRunner,
    Verification,
    VerificationSample,
    GATES,
    compare_logits,
    judge,
    llama_cpp_logits,
    torch_logits,
)

if TYPE_CHECKING:
    from llamaforge_tui.core.settings import Settings
    from llamaforge_tui.core.train.config import TrainConfig

log = logging.getLogger(__name__)
MAX_POSITIONS = 256
MAX_SEQ = 192
FLOOR_FACTOR = 5.0


@dataclass
class ReferenceModel:
    """Reference logits on training sequences, plus one trained example to generate."""

    sequences: list[list[int]]
    logits: list[np.ndarray]
    base_logits: list[np.ndarray]  # the base model without the adapter: for the quantization floor
    tokenizer: Any
    sample_prompt: str
    sample_prompt_ids: list[int]
    sample_expected: str
    stop_ids: set[int]

    @property
    def positions(self) -> int:
        return sum(len(s) for s in self.sequences)

    def verify(self, gguf_path: Path, out_type: str, *, lora_path: Path | None = None, label: str = "",
               sample: bool = True) -> Verification:
        """Compare llama.cpp on ``gguf_path`` (+ ``lora_path``) with the reference and greedy-generate the sample."""
        cand = llama_cpp_logits(gguf_path, self.sequences, lora_path=lora_path)
        result = judge(compare_logits(self.logits, cand), out_type, label=label or out_type)
        if sample and self.sample_prompt_ids:
            n_new = min(256, len(self.tokenizer(self.sample_expected, add_special_tokens=False)["input_ids"]) + 16)
            runner = LlamaCppRunner(gguf_path, lora_path=lora_path, n_ctx=len(self.sample_prompt_ids) + n_new + 8)
            try:
                ids = runner.greedy(self.sample_prompt_ids, n_new, self.stop_ids)
            finally:
                runner.close()
            generated = self.tokenizer.decode(ids, skip_special_tokens=True)
            result.sample = VerificationSample(self.sample_prompt, self.sample_expected, generated.strip())
        return result

    def apply_floor(self, result: Verification, base_gguf: Path, out_type: str) -> Verification:
        """Re-judge a failed quantized result against the quantization floor: the base model (no adapter) written
        in the same type, compared with the base reference. Quantization noise the base model shows too is the
        type's, not the export's; a layout or merge bug lands far above it."""
        floor = compare_logits(self.base_logits, llama_cpp_logits(base_gguf, self.sequences))
        result.floor_kl = floor.mean_kl
        limit = FLOOR_FACTOR * floor.mean_kl + GATES[result.gate][1]
        min_top1 = min(GATES[result.gate][0], floor.top1_agreement - 0.02)
        if result.mean_kl <= limit and result.top1_agreement >= min_top1:
            result.passed = True
            result.warnings = [w for w in result.warnings if not w.startswith(out_type + ":")]
            result.warnings.append(
                f"{out_type}: mean KL {result.mean_kl:.2e} is above the {GATES[result.gate][1]:.0e} gate, but the base "
                f"model written as {out_type} already shows {floor.mean_kl:.2e} on these prompts (the type's own "
                f"noise on this model); within {FLOOR_FACTOR:g}x of that floor, so the export is faithful")
        return result


def _pick_sequences(examples: list[Any]) -> list[list[int]]:
    seqs: list[list[int]] = []
    total = 0
    for ex in examples:
        ids = list(ex.input_ids)[:MAX_SEQ]
        if len(ids) < 2 or ids in seqs:  # repeated records add no evidence
            continue
        seqs.append(ids)
        total += len(ids)
        if total >= MAX_POSITIONS:
            break
    return seqs


def _stop_ids(tokenizer: Any) -> set[int]:
    stops: set[int] = set()
    if tokenizer.eos_token_id is not None:
        stops.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for tok in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>", "<eos>"):
        if tok in vocab:
            stops.add(int(vocab[tok]))
    return stops


def _sample(tokenizer: Any, config: TrainConfig, template: Any) -> tuple[str, list[int], str]:
    """(rendered prompt, its ids, expected answer) from the first record of the training data."""
    from llamaforge_tui.core.data.chat_templates import render_chat
    from llamaforge_tui.core.data.dataset import load_dataset
    from llamaforge_tui.core.data.records import Conversation

    loaded = load_dataset(config.data, format=config.data_format, limit=50)
    for record in loaded.records:
        if isinstance(record, Conversation):
            msgs = record.as_dicts()
            prompt = render_chat(tokenizer, template, msgs[:-1], add_generation_prompt=True)
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            return prompt, list(ids), msgs[-1]["content"]
        text = getattr(record, "text", "")
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(ids) >= 4:
            cut = max(1, min(32, len(ids) // 2))
            return tokenizer.decode(ids[:cut]), list(ids[:cut]), tokenizer.decode(ids[cut:], skip_special_tokens=True)
    return "", [], ""


def build_reference(source: dict[str, Any], config: TrainConfig, adapter_dir: Path, settings: Settings | None,
                    progress: Callable[[str], None] | None = None) -> ReferenceModel:
    """Load base + adapter in fp32, merge, and compute reference logits on training sequences."""
    import torch
    from peft import PeftModel

    from llamaforge_tui.core.model import loading
    from llamaforge_tui.core.data.chat_templates import resolve_chat_template
    from llamaforge_tui.core.train.setup import ModelBundle, prepare_data

    say = progress or (lambda m: None)
    if config.data and not Path(config.data).expanduser().is_file():
        raise ExportError(f"verification needs the training data, and {config.data} is gone")
    weights = source.get("weights") or "gguf"
    weights = "gguf" if weights == "gguf-quantized" else weights
    say(f"loading {source.get('source')} in fp32 for the reference logits")
    loaded = loading.load_model(source["source"], settings, weights=weights, dtype="float32", device="cpu",
                                check_memory=False)
    arch = (loaded.description.architecture if loaded.description else None) or source.get("architecture")
    bundle = ModelBundle(loaded.model, loaded.tokenizer, loaded.chat_template, arch, source)
    data = prepare_data(config.replace(eval_split=0.0), bundle)
    seqs = _pick_sequences(data.train)
    loaded.model.eval()
    base_logits = torch_logits(loaded.model, seqs)
    model = PeftModel.from_pretrained(loaded.model, str(adapter_dir)).merge_and_unload()
    model.eval()
    if sum(len(s) for s in seqs) < MIN_POSITIONS:
        log.info("training data gives only %d positions", sum(len(s) for s in seqs))
    say(f"reference logits on {sum(len(s) for s in seqs)} positions")
    with torch.no_grad():
        logits = torch_logits(model, seqs)
    tok = loaded.tokenizer
    template = resolve_chat_template(tok, arch, override=config.chat_template)
    prompt, prompt_ids, expected = _sample(tok, config, template)
    del model, loaded
    return ReferenceModel(seqs, logits, base_logits, tok, prompt, prompt_ids, expected, _stop_ids(tok))
