"""Build a Hugging Face fast tokenizer straight from a GGUF's ``tokenizer.ggml.*`` metadata.

Why not transformers' own GGUF tokenizer path: it opens the file with ``gguf.GGUFReader`` (~9 s on Gemma's
262k-token vocabulary) and then converts through a slow Python tokenizer (14-44 s). Here the vocabulary arrays are
read lazily from :class:`GgufFile` and handed to ``tokenizers`` in one go, which takes about a second.

The goal is to tokenize exactly as llama.cpp does (``llama-vocab.cpp``), since that is what runs the model in
Ollama:

- ``llama`` (SentencePiece-style, e.g. Gemma, Llama 2, Mistral): llama.cpp repeatedly merges the adjacent pair whose
  concatenation is a vocabulary entry with the highest score, falling back to ``<0xXX>`` byte tokens. That is a BPE
  whose merge ranks follow the score of the merged token, so we generate those merges from the vocabulary.
- ``gpt2`` (byte-level BPE, e.g. Llama 3, Qwen, SmolLM): merges come with the file; the pre-tokenizer regexes depend
  on ``tokenizer.ggml.pre`` and are copied from llama.cpp's table.

Control, user-defined and unknown tokens are partitioned out of the text before anything else, as llama.cpp does.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llamaforge_tui.core.errors import GgufError
from llamaforge_tui.core.gguf.file import GgufFile

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

log = logging.getLogger(__name__)

# llama.cpp token types (tokenizer.ggml.token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_RE = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_RE = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35_RE = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_RE = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEFAULT_BPE_RES = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2_RE, r"\p{N}+", r"[0-9][0-9][0-9]")

# tokenizer.ggml.pre -> (regexes applied one after the other, ignore_merges, default add_bos); from llama-vocab.cpp
_BPE_PRE: dict[str, tuple[tuple[str, ...], bool, bool]] = {}
for _names, _spec in (
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"), ((_LLAMA3_RE,), True, True)),
    (("dbrx", "smaug-bpe"), ((_LLAMA3_RE,), False, False)),
    (("qwen2", "deepseek-r1-qwen", "kormo", "stablelm2", "hunyuan"), ((_QWEN2_RE,), False, False)),
    (("qwen35",), ((_QWEN35_RE,), False, False)),
    (("tekken",), ((_TEKKEN_RE,), True, True)),
    (("gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4", "mellum", "modern-bert"), ((_GPT2_RE,), False, False)),
    (("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"), ((r"\p{N}", _GPT2_RE), False, False)),
    (("default",), (_DEFAULT_BPE_RES, False, False)),
):
    for _n in _names:
        _BPE_PRE[_n] = _spec

SUPPORTED_TOKENIZER_MODELS = ("llama", "gpt2")


def _special_ids(gguf: GgufFile) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for role in ("bos", "eos", "unknown", "padding", "eot", "sep"):
        value = gguf.get(f"tokenizer.ggml.{role}_token_id")
        out[role] = int(value) if isinstance(value, int) else None
    return out


def _token_types(gguf: GgufFile, n: int) -> np.ndarray:
    types = gguf.kv.get("tokenizer.ggml.token_type")
    if types is None:
        return np.full(n, NORMAL, dtype=np.int32)
    arr = np.asarray(types.load() if hasattr(types, "load") else types, dtype=np.int32)
    if len(arr) != n:
        raise GgufError(f"{gguf.path}: tokenizer.ggml.token_type has {len(arr)} entries for {n} tokens")
    return arr


def _unique_vocab(tokens: Sequence[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)  # llama.cpp refuses duplicates; keep the first if a file has them anyway
    if len(vocab) != len(tokens):
        log.warning("GGUF vocabulary has %d duplicate token strings", len(tokens) - len(vocab))
    return vocab


def spm_merges(tokens: Sequence[str], scores: np.ndarray, types: np.ndarray, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Merges that make a BPE behave like llama.cpp's SPM tokenizer.

    llama.cpp merges the adjacent pair whose concatenation has the highest score, so every split ``(l, r)`` of a
    normal token whose halves are both tokens becomes a merge ranked by that token's score (higher first), ties by
    token id, then split position, which keeps the order deterministic.
    """
    lefts: list[str] = []
    rights: list[str] = []
    owners: list[int] = []
    cuts: list[int] = []
    mergeable = (types == NORMAL) | (types == USER_DEFINED)
    for tid in np.nonzero(mergeable)[0].tolist():
        tok = tokens[tid]
        for i in range(1, len(tok)):
            left = tok[:i]
            if left in vocab:
                right = tok[i:]
                if right in vocab:
                    lefts.append(left)
                    rights.append(right)
                    owners.append(tid)
                    cuts.append(i)
    if not owners:
        return []
    owner_arr = np.asarray(owners, dtype=np.int64)
    order = np.lexsort((np.asarray(cuts), owner_arr, -scores.astype(np.float64)[owner_arr]))
    return [(lefts[k], rights[k]) for k in order.tolist()]


def _merges_cache_path(tokens: Sequence[str], scores: np.ndarray, types: np.ndarray) -> Path:
    from llamaforge_tui.core.settings import data_dir

    h = hashlib.sha256()
    h.update(b"spm-merges-v1\0")
    h.update("\0".join(tokens).encode("utf-8", "surrogatepass"))
    h.update(np.ascontiguousarray(scores, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(types, dtype=np.int32).tobytes())
    return data_dir() / "cache" / "spm-merges" / f"{h.hexdigest()[:32]}.npy"


def cached_spm_merges(tokens: Sequence[str], scores: np.ndarray, types: np.ndarray,
                      vocab: dict[str, int]) -> list[tuple[str, str]]:
    """:func:`spm_merges`, remembered on disk as token-id pairs (keyed by a hash of the vocabulary): generating
    them walks every split of every token in Python (1-3 s for a 262k vocabulary), reading them back is ~0.1 s."""
    from llamaforge_tui.core.fsutil import atomic_open

    path = _merges_cache_path(tokens, scores, types)
    try:
        pairs = np.load(path, allow_pickle=False)
        if pairs.ndim == 2 and pairs.shape[1] == 2 and (pairs.size == 0 or int(pairs.max()) < len(tokens)):
            table = np.array(tokens, dtype=object)
            return list(zip(table[pairs[:, 0]].tolist(), table[pairs[:, 1]].tolist()))
    except (OSError, ValueError):
        pass
    merges = spm_merges(tokens, scores, types, vocab)
    try:
        pairs = np.array([(vocab[a], vocab[b]) for a, b in merges], dtype=np.int32).reshape(-1, 2)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as fh:
            np.save(fh, pairs, allow_pickle=False)
    except OSError as exc:
        log.debug("cannot cache SPM merges at %s: %s", path, exc)
    return merges


def _added_tokens(tokens: Sequence[str], types: np.ndarray, model_name: str) -> list[Any]:
    from tokenizers import AddedToken

    phi3 = any(key in model_name for key in ("phi-3", "phi3"))
    added = []
    for tid in np.nonzero((types == CONTROL) | (types == USER_DEFINED) | (types == UNKNOWN))[0].tolist():
        content = tokens[tid]
        if not content:
            continue
        special = int(types[tid]) != USER_DEFINED
        rstrip = phi3 and special and content not in ("<unk>", "<s>", "<|endoftext|>")
        added.append(AddedToken(content, special=special, normalized=False, rstrip=rstrip, lstrip=False, single_word=False))
    return added


def _spm_tokenizer(tokens: list[str], gguf: GgufFile, types: np.ndarray) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores_raw = gguf.kv.get("tokenizer.ggml.scores")
    if scores_raw is None:
        raise GgufError(f"{gguf.path}: SPM vocabulary without tokenizer.ggml.scores")
    scores = np.asarray(scores_raw.load() if hasattr(scores_raw, "load") else scores_raw, dtype=np.float32)
    vocab = _unique_vocab(tokens)
    merges = cached_spm_merges(tokens, scores, types, vocab)
    unk_id = gguf.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if isinstance(unk_id, int) and 0 <= unk_id < len(tokens) else None
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True))
    add_space_prefix = bool(gguf.get("tokenizer.ggml.add_space_prefix", True))
    norm = [normalizers.Replace(" ", "\u2581")]
    if add_space_prefix:  # llama.cpp prefixes the text and every fragment after a special token
        norm.insert(0, normalizers.Prepend(" "))
    tok.normalizer = normalizers.Sequence(norm)
    dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)
    return tok


def _bpe_tokenizer(tokens: list[str], gguf: GgufFile) -> tuple[Any, bool]:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre = gguf.get("tokenizer.ggml.pre", "default") or "default"
    if pre not in _BPE_PRE:
        raise GgufError(
            f"{gguf.path}: BPE pre-tokenizer {pre!r} is not supported yet (supported: {', '.join(sorted(_BPE_PRE))})"
        )
    regexes, ignore_merges, default_bos = _BPE_PRE[pre]
    raw_merges = gguf.get("tokenizer.ggml.merges")
    if raw_merges is None:
        raise GgufError(f"{gguf.path}: BPE vocabulary without tokenizer.ggml.merges")
    merges = []
    for m in raw_merges:
        left, sep, right = m.partition(" ")
        if sep:
            merges.append((left, right))
    vocab = _unique_vocab(tokens)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in regexes]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    return tok, default_bos


def build_tokenizer(gguf: GgufFile) -> tuple[Any, dict[str, Any]]:
    """The ``tokenizers.Tokenizer`` and a dict of facts (special token strings, add_bos/add_eos, chat template)."""
    from tokenizers import processors

    model = gguf.get("tokenizer.ggml.model")
    if model is None:
        raise GgufError(f"{gguf.path}: no tokenizer in this GGUF (tokenizer.ggml.model is missing)")
    if model not in SUPPORTED_TOKENIZER_MODELS:
        raise GgufError(
            f"{gguf.path}: tokenizer model {model!r} is not supported yet (supported: {', '.join(SUPPORTED_TOKENIZER_MODELS)})"
        )
    raw_tokens = gguf.kv.get("tokenizer.ggml.tokens")
    if raw_tokens is None:
        raise GgufError(f"{gguf.path}: tokenizer.ggml.tokens is missing")
    tokens = list(raw_tokens.load() if hasattr(raw_tokens, "load") else raw_tokens)
    types = _token_types(gguf, len(tokens))
    if model == "llama":
        tok = _spm_tokenizer(tokens, gguf, types)
        default_bos = True
    else:
        tok, default_bos = _bpe_tokenizer(tokens, gguf)
    name = str(gguf.get("general.name", "") or "").lower()
    tok.add_tokens(_added_tokens(tokens, types, name))

    ids = _special_ids(gguf)

    def text(i: int | None) -> str | None:
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    add_bos = bool(gguf.get("tokenizer.ggml.add_bos_token", default_bos)) and ids["bos"] is not None
    add_eos = bool(gguf.get("tokenizer.ggml.add_eos_token", False)) and ids["eos"] is not None
    bos, eos = text(ids["bos"]), text(ids["eos"])
    if add_bos or add_eos:
        single = ([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else [])
        pair = single + ([f"{bos}:1"] if add_bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos else [])
        special = ([(bos, ids["bos"])] if add_bos else []) + ([(eos, ids["eos"])] if add_eos and eos != bos else [])
        tok.post_processor = processors.TemplateProcessing(single=" ".join(single), pair=" ".join(pair), special_tokens=special)
    facts = {
        "model": model,
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": text(ids["unknown"]),
        "pad_token": text(ids["padding"]),
        "eot_token": text(ids["eot"]),
        "add_bos": add_bos,
        "add_eos": add_eos,
        "chat_template": gguf.get("tokenizer.chat_template"),
        "vocab_size": len(tokens),
    }
    return tok, facts


def load_gguf_tokenizer(path: str | Path | GgufFile) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` equivalent to llama.cpp's tokenizer for this GGUF, with its chat template,
    BOS/EOS/PAD and ``add_bos``. Accepts Ollama blobs (no extension needed)."""
    from transformers import PreTrainedTokenizerFast

    if isinstance(path, GgufFile):
        tok, facts = build_tokenizer(path)
    else:
        with GgufFile(path) as gguf:
            tok, facts = build_tokenizer(gguf)
    kwargs: dict[str, Any] = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        if facts[key] is not None:
            kwargs[key] = facts[key]
    if facts["chat_template"]:
        kwargs["chat_template"] = facts["chat_template"]
    # ``tokenizer_object=`` would deep-copy the backend (over a second for a 262k vocabulary); handing over the
    # one we just built is equivalent, since nothing else holds it.
    fast = PreTrainedTokenizerFast.__new__(PreTrainedTokenizerFast)
    fast._tokenizer = tok
    fast.__init__(clean_up_tokenization_spaces=False, **kwargs)
    # pin the BOS/EOS post-processor to what llama.cpp does, whatever transformers inferred
    fast._tokenizer.post_processor = tok.post_processor
    return fast
