"""The reference side of verification: the merged PyTorch model on prompts from the training data.

Built once per run and reused for every candidate file (merged F16, Q8_0, hybrid, adapter...), so the
verification table can show the KL of each choice against the same reference. The model is loaded the
way training loaded it (``core.loading``, fp32 on CPU), the adapter merged with PEFT in fp32, and the
prompts encoded exactly as training encoded them (``train_setup.prepare_data``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llamaforge_tui.core.export.llama_runner import LlamaSession
from llamaforge_tui.core.export.verify import (
    MIN_POSITIONS,
    Verification,
    VerificationSample,
    compare_logits,
    judge,
    judge_adapter_parts,
    judge_parts,
    torch_logits,
)
from llamaforge_tui.core.gguf.writer import ExportError

if TYPE_CHECKING:
    from llamaforge_tui.core.settings import Settings
    from llamaforge_tui.core.train.config import TrainConfig

log = logging.getLogger(__name__)
MAX_POSITIONS = 256
MAX_SEQ = 192


@dataclass
class ReferenceModel:
    """Reference logits on training sequences, plus one trained example to generate."""

    sequences: list[list[int]]
    logits: list[np.ndarray]
    base_logits: list[np.ndarray]  # the base model without the adapter: the fine-tune's effect
    tokenizer: Any
    sample_prompt: str
    sample_prompt_ids: list[int]
    sample_expected: str
    stop_ids: set[int]
    extra_buffers: bool = False  # the llama_cpp_extra_buffers setting

    @property
    def positions(self) -> int:
        return sum(len(s) for s in self.sequences)

    @functools.cached_property
    def effect_kl(self) -> float:
        """KL(reference || base): how much the fine-tune changed the model on these prompts."""
        return compare_logits(self.logits, self.base_logits).mean_kl

    def session(self, gguf_path: Path, *, lora_path: Path | None = None, n_ctx: int, what: str,
                export: Path | None = None) -> LlamaSession:
        note = f"The export {export or lora_path or gguf_path} was written completely before verification and is untouched."
        return LlamaSession(gguf_path, lora_path=lora_path, n_ctx=n_ctx, extra_buffers=self.extra_buffers,
                            what=what, file_note=note)

    def llama_logits(self, gguf_path: Path, *, lora_path: Path | None = None, what: str,
                     export: Path | None = None) -> list[np.ndarray]:
        n_ctx = max(64, max(len(s) for s in self.sequences) + 8)
        with self.session(gguf_path, lora_path=lora_path, n_ctx=n_ctx, what=what, export=export) as llm:
            return llm.logits(self.sequences)

    def verify(self, gguf_path: Path, out_type: str, *, lora_path: Path | None = None, label: str = "",
               sample: bool = True, float_copy: Path | None = None, adapter_parts: bool = False,
               say: Callable[[str], None] | None = None) -> Verification:
        """Compare llama.cpp on ``gguf_path`` (+ ``lora_path``) with the reference and greedy-generate the sample,
        both in one llama.cpp child. With ``float_copy`` (the same file, every tensor dequantized to F16), judge a
        quantized file in parts (``verify.judge_parts``)."""
        n_new = min(256, len(self.tokenizer(self.sample_expected, add_special_tokens=False)["input_ids"]) + 16)
        n_ctx = max(64, max(len(s) for s in self.sequences) + 8, len(self.sample_prompt_ids) + n_new + 8)
        what = f"verification of {(lora_path or gguf_path).name} in llama.cpp"
        with self.session(gguf_path, lora_path=lora_path, n_ctx=n_ctx, what=what) as llm:
            cand = llm.logits(self.sequences)
            ids = llm.greedy(self.sample_prompt_ids, n_new, self.stop_ids) if sample and self.sample_prompt_ids else None
            buffers = list(llm.info.buffer_types)
        result = judge(compare_logits(self.logits, cand), out_type, label=label or out_type)
        result.buffer_types = buffers
        result.effect_kl = self.effect_kl
        if ids is not None:
            generated = self.tokenizer.decode(ids, skip_special_tokens=True)
            result.sample = VerificationSample(self.sample_prompt, self.sample_expected, generated.strip())
        if adapter_parts and lora_path is not None:  # an adapter on a quantized source (verify.ADAPTER_PARTS)
            (say or (lambda m: None))(f"llama.cpp on {gguf_path.name} without the adapter")
            alone = self.llama_logits(gguf_path, what=f"verification of {lora_path.name} (the source alone) in "
                                      "llama.cpp", export=lora_path)
            return judge_adapter_parts(result, self.logits, self.base_logits, alone, cand, self.effect_kl, out_type)
        if float_copy is not None:
            result = self._judge_in_parts(result, cand, gguf_path, float_copy, out_type, say or (lambda m: None))
        return result

    def _judge_in_parts(self, result: Verification, candidate: list[np.ndarray], gguf_path: Path, float_copy: Path,
                        out_type: str, say: Callable[[str], None]) -> Verification:
        from llamaforge_tui.core.model import loading

        say(f"PyTorch on the weights of {gguf_path.name}")
        model = loading.load_model(str(gguf_path), None, weights="gguf", dtype="float32", device="cpu",
                                   check_memory=False).model
        model.eval()
        own = torch_logits(model, self.sequences)
        del model
        say("llama.cpp's own F16 run of the same weights")
        floated = self.llama_logits(float_copy, what=f"verification of {gguf_path.name} (its F16 copy) in llama.cpp",
                                    export=gguf_path)
        return judge_parts(result, compare_logits(self.logits, own), compare_logits(own, floated),
                           compare_logits(floated, candidate), result.effect_kl, out_type)


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
    from llamaforge_tui.core.export.llama_runner import extra_buffers_setting

    return ReferenceModel(seqs, logits, base_logits, tok, prompt, prompt_ids, expected, _stop_ids(tok),
                          extra_buffers_setting(settings))
