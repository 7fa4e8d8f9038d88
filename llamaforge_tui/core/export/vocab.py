"""``tokenizer.ggml.*`` metadata from a Hugging Face tokenizer folder, as llama.cpp's converter writes it.

Two families: SentencePiece (``tokenizer.model``; Llama 2, Mistral, Gemma, Phi-3) -> ``llama`` with the
pieces' own scores and types, and byte-level BPE (``tokenizer.json``; Llama 3, Qwen) -> ``gpt2`` with merges
and a pre-tokenizer name. The vocabulary is padded to the embedding's row count (``[PAD<i>]``, unused), as
llama.cpp requires one token per embedding row.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from gguf import GGUFValueType

from llamaforge_tui.core.gguf.writer import ExportError, KVEntry, kv

log = logging.getLogger(__name__)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# llama.cpp pre-tokenizer names for byte-level BPE vocabularies, by GGUF architecture.
BPE_PRE = {"llama": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2"}
_STR, _I32, _F32 = GGUFValueType.STRING, GGUFValueType.INT32, GGUFValueType.FLOAT32


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from exc


def _spm_vocab(model_path: Path) -> tuple[list[str], list[float], list[int], bool]:
    """Pieces, scores and types through SentencePieceProcessor (as llama.cpp's converter reads them)."""
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_file=str(model_path))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        types.append(UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else UNUSED if sp.is_unused(i)
                     else BYTE if sp.is_byte(i) else NORMAL)
    pieces = sp.encode("a", out_type=str)
    space_prefix = bool(pieces) and pieces[0].startswith("\u2581")
    return tokens, scores, types, space_prefix


def tokenizer_kv(model_dir: Path, gguf_arch: str, *, embedding_rows: int) -> dict[str, KVEntry]:
    """Every ``tokenizer.*`` key for ``model_dir``'s tokenizer."""
    tj = _read_json(model_dir / "tokenizer.json")
    tcfg = _read_json(model_dir / "tokenizer_config.json")
    mcfg = _read_json(model_dir / "config.json")
    added = {int(t["id"]): t for t in tj.get("added_tokens", [])}
    model = tj.get("model") or {}
    out: dict[str, KVEntry] = {}
    spm_path = model_dir / "tokenizer.model"
    merges: list[str] = []
    if spm_path.is_file():
        tokens, scores, types, space_prefix = _spm_vocab(spm_path)
        tok_model = "llama"
        out["tokenizer.ggml.add_space_prefix"] = kv(space_prefix)
    elif model.get("type") == "BPE" and tj:
        vocab: dict[str, int] = model.get("vocab") or {}
        size = max([*vocab.values(), *added.keys()]) + 1 if vocab or added else 0
        tokens = [f"[PAD{i}]" for i in range(size)]
        for text, i in vocab.items():
            tokens[i] = text
        for i, t in added.items():
            tokens[i] = t["content"]
        types = [NORMAL] * size
        for i, t in added.items():
            types[i] = CONTROL if t.get("special") else USER_DEFINED
        if model.get("byte_fallback"):  # SentencePiece-style BPE without the .model file
            tok_model = "llama"
            scores = [-float(i) for i in range(size)]
            for i, text in enumerate(tokens):
                if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
                    types[i] = BYTE
        else:
            tok_model = "gpt2"
            scores = []
            merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    else:
        raise ExportError(f"{model_dir}: unsupported tokenizer (need tokenizer.model or a BPE tokenizer.json)")
    for i, t in added.items():  # added tokens past a SentencePiece vocabulary
        if i >= len(tokens):
            tokens += [f"[PAD{j}]" for j in range(len(tokens), i + 1)]
            types += [UNUSED] * (i + 1 - len(types))
            if scores:
                scores += [-1000.0] * (i + 1 - len(scores))
        tokens[i] = t["content"]
        if types[i] != UNKNOWN:
            types[i] = CONTROL if t.get("special") else USER_DEFINED
    if len(tokens) > embedding_rows:
        raise ExportError(f"the tokenizer has {len(tokens)} tokens but the embedding only {embedding_rows} rows")
    for i in range(len(tokens), embedding_rows):
        tokens.append(f"[PAD{i}]")
        types.append(UNUSED)
        if scores:
            scores.append(-1000.0)
    out["tokenizer.ggml.model"] = kv(tok_model)
    out["tokenizer.ggml.pre"] = kv(BPE_PRE.get(gguf_arch, "default") if tok_model == "gpt2" else "default")
    out["tokenizer.ggml.tokens"] = KVEntry(GGUFValueType.ARRAY, tokens, _STR)
    if scores:
        out["tokenizer.ggml.scores"] = KVEntry(GGUFValueType.ARRAY, scores, _F32)
    out["tokenizer.ggml.token_type"] = KVEntry(GGUFValueType.ARRAY, types, _I32)
    if merges:
        out["tokenizer.ggml.merges"] = KVEntry(GGUFValueType.ARRAY, merges, _STR)
    index = {t: i for i, t in enumerate(tokens)}
    for key, cfg_key in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"),
                         ("padding", "pad_token"), ("seperator", "sep_token")):
        text = _token_text(tcfg.get(cfg_key))
        tid = index.get(text) if text is not None else None
        if tid is None and isinstance(mcfg.get(f"{cfg_key}_id"), int):
            tid = mcfg[f"{cfg_key}_id"]
        if tid is not None:
            out[f"tokenizer.ggml.{key}_token_id"] = kv(int(tid))
    # What llama.cpp (and so Ollama) adds around a prompt must be what training added: a BOS exactly when the
    # tokenizer training used adds one, and never an EOS (training encodes prompts without the tokenizer's own
    # special tokens, then inserts only that BOS). Both are always written: llama.cpp's defaults when a key is
    # missing (a BOS for SentencePiece and llama-bpe vocabularies) are not the model's.
    out["tokenizer.ggml.add_bos_token"] = kv(_adds_bos(model_dir, out, tcfg))
    out["tokenizer.ggml.add_eos_token"] = kv(False)
    template = tcfg.get("chat_template")
    jinja = model_dir / "chat_template.jinja"
    if not template and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    if isinstance(template, str) and template:
        out["tokenizer.chat_template"] = kv(template)
    return out


def _adds_bos(model_dir: Path, meta: dict[str, KVEntry], tcfg: dict[str, Any]) -> bool:
    """Whether training put a BOS before each prompt: as ``core.data.encode`` decides it, with the tokenizer
    transformers loads from ``model_dir`` (its ``add_bos_token`` may differ from the config file's: transformers 5
    follows tokenizer.json's post-processor). Without transformers: the tokenizers library, then the config."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
        bos = getattr(tok, "bos_token_id", None)
        if bos is None:
            return False
        ids = tok("a", add_special_tokens=True)["input_ids"]
        return bool(ids) and ids[0] == bos
    except (ImportError, OSError, ValueError, KeyError, TypeError) as exc:
        log.info("transformers cannot load the tokenizer of %s (%s): asking the tokenizers library", model_dir, exc)
    if "tokenizer.ggml.bos_token_id" not in meta:
        return False
    adds = _adds_special(model_dir, meta)
    flag = adds.get("bos", tcfg.get("add_bos_token"))
    return bool(flag) if flag is not None else True  # a SentencePiece folder: Llama's tokenizer adds BOS


def _adds_special(model_dir: Path, meta: dict[str, KVEntry]) -> dict[str, bool]:
    """Whether encoding adds BOS/EOS, by encoding a word with the tokenizer itself (post-processor and all)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return {}
    from tokenizers import Tokenizer

    try:
        ids = Tokenizer.from_file(str(path)).encode("a").ids
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exception on bad files
        raise ExportError(f"cannot load {path}: {exc}") from exc
    out: dict[str, bool] = {}
    for which, pos in (("bos", 0), ("eos", -1)):
        entry = meta.get(f"tokenizer.ggml.{which}_token_id")
        if entry is not None:
            out[which] = bool(ids) and ids[pos] == entry.value
    return out
