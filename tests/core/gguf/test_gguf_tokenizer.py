"""The GGUF tokenizer tokenizes exactly like llama.cpp (SPM and byte-level BPE vocabularies), fast."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q

from fixtures.gguf_factory import write_gguf
from fixtures.ollama_store import gemma_gguf_path
from fixtures.tiny_models import CHAT_TEMPLATE, SAMPLE_TEXTS, session_factory
from llamaforge_tui.core.errors import GgufError
from llamaforge_tui.core.gguf.file import GgufFile
from llamaforge_tui.core.gguf.tokenizer import load_gguf_tokenizer

from llamaforge_tui.core.export.llama_runner import LlamaSession, llama_cpp_installed

if not llama_cpp_installed():
    pytest.skip("llama-cpp-python is not installed", allow_module_level=True)

EXTRA_TEXTS = (
    "Hello\n\nworld\n",
    "tabs\tand\tnewlines\r\nwindows",
    "    four leading spaces",
    "trailing spaces    ",
    "emoji 👩‍💻 and ZWJ",
    "'s 't 're 've 'm 'll 'd contractions DON'T",
    "x = [i ** 2 for i in range(10)]  # 0123456789",
)


def _llama_cpp_vocab(path: Path) -> LlamaSession:
    return LlamaSession(path, n_ctx=64)  # llama.cpp in a child process, like every use of it in the app


def _special_texts(tok: object) -> list[str]:
    """Strings that embed the vocabulary's special tokens between ordinary text."""
    specials = [t for t in tok.all_special_tokens if t] + [str(t) for t in tok.added_tokens_decoder.values()][:6]
    texts = []
    for s in dict.fromkeys(specials):
        texts.append(f"{s}user\nhi there{s}\n")
        texts.append(f"a{s}b {s} c")
    return texts


def _assert_parity(path: Path, texts: list[str] | tuple[str, ...]) -> object:
    ours = load_gguf_tokenizer(path)
    mismatches = []
    with _llama_cpp_vocab(path) as ref:
        for text in list(texts) + _special_texts(ours):
            a = ours(text).input_ids
            b = ref.tokenize(text, add_special=True, parse_special=True)
            if a != b:
                mismatches.append((text, a, b))
    assert not mismatches, mismatches[:3]
    return ours


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "phi3", "gemma3"])
def test_tiny_tokenizers_match_llama_cpp(arch: str) -> None:
    """BPE (llama-bpe, qwen2 pre-tokenizers) and SPM (with and without the space prefix) vocabularies."""
    path = session_factory().gguf(arch, "F32")
    tok = _assert_parity(path, SAMPLE_TEXTS + EXTRA_TEXTS)
    with GgufFile(path) as gguf:
        bos = gguf.get("tokenizer.ggml.bos_token_id")
        eos = gguf.get("tokenizer.ggml.eos_token_id")
        add_bos = gguf.get("tokenizer.ggml.add_bos_token", True)
    assert tok.bos_token_id == bos and tok.eos_token_id == eos
    assert (tok("hi").input_ids[0] == bos) == bool(add_bos)
    # plain text decodes back to itself (SPM drops only the prefix space llama.cpp adds)
    for text in ("The quick brown fox", "naïve café 日本語", "def f(x):\n\treturn x"):
        assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text


def test_chat_template_bos_eos_pad_from_gguf(tmp_path: Path) -> None:
    path = session_factory().gguf("gemma3", "F32")
    tok = load_gguf_tokenizer(path)
    assert tok.chat_template == CHAT_TEMPLATE  # the converter copied it from tokenizer_config.json
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (2, 1, 0)
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    ids = tok(rendered).input_ids
    assert tok.convert_tokens_to_ids("<start_of_turn>") in ids  # control tokens are single ids, never split
    saved = tmp_path / "tok"
    tok.save_pretrained(str(saved))  # a plain tokenizer.json: reloadable with AutoTokenizer
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(str(saved))
    assert again(rendered).input_ids == ids


def test_unsupported_tokenizer_models_are_named(tmp_path: Path) -> None:
    bert = write_gguf(tmp_path / "bert.gguf", kv={"tokenizer.ggml.model": "bert"}, weight_type=Q.F32)
    with pytest.raises(GgufError, match="tokenizer model 'bert' is not supported"):
        load_gguf_tokenizer(bert)
    odd = write_gguf(tmp_path / "odd.gguf", kv={"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "mystery",
                                                "tokenizer.ggml.merges": ["a b"]})
    with pytest.raises(GgufError, match="pre-tokenizer 'mystery' is not supported"):
        load_gguf_tokenizer(odd)


@pytest.mark.slow
def test_gemma3_tokenizer_matches_llama_cpp_and_is_fast() -> None:
    path = gemma_gguf_path()
    start = time.perf_counter()
    tok = load_gguf_tokenizer(path)
    elapsed = time.perf_counter() - start
    # transformers' own GGUF conversion takes 14-44 s here; ours builds the 262k vocabulary in a couple of seconds
    # (a loose bound: the CI machine is shared)
    assert elapsed < 12, elapsed
    assert len(tok) == 262144 and tok.chat_template is None
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (2, 1, 0, 3)
    gemma_texts = ("<start_of_turn>user\nWrite a haiku<end_of_turn>\n<start_of_turn>model\n", "x<bos>y<eos>")
    _assert_parity(path, SAMPLE_TEXTS + EXTRA_TEXTS + gemma_texts)


def test_spm_merges_cache_is_exact() -> None:
    """The second build reads the merges back from the data-dir cache and tokenizes identically."""
    from llamaforge_tui.core.settings import data_dir

    path = session_factory().gguf("mistral", "F32")
    cold = load_gguf_tokenizer(path)
    cached = list((data_dir() / "cache" / "spm-merges").glob("*.npy"))
    assert len(cached) == 1
    warm = load_gguf_tokenizer(path)
    assert warm.backend_tokenizer.to_str() == cold.backend_tokenizer.to_str()
    cached[0].write_bytes(b"garbage")  # a damaged cache entry is rebuilt, never trusted
    again = load_gguf_tokenizer(path)
    assert again.backend_tokenizer.to_str() == cold.backend_tokenizer.to_str()
