"""A merged export of a run trained from a Hugging Face folder tells llama.cpp to add exactly the BOS training added.

transformers 5 follows tokenizer.json's post-processor, not ``add_bos_token`` in tokenizer_config.json, so the two
can disagree; the export must follow what training did, and llama.cpp must then tokenize a rendered prompt to the
ids training used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fixtures.export_runs import make_run, write_chat_jsonl
from fixtures.tiny_models import session_factory
from llamaforge_tui.core.export.exporter import ExportOptions, export_run
from llamaforge_tui.core.export.llama_runner import LlamaSession
from llamaforge_tui.core.gguf.file import GgufFile

pytestmark = pytest.mark.slow

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def _hf_folder(arch: str, dst: Path, config_says: bool) -> Path:
    """The tiny ``arch`` HF folder with tokenizer_config.json's ``add_bos_token`` set to ``config_says``."""
    shutil.copytree(session_factory().get(arch).hf_dir, dst)
    path = dst / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["add_bos_token"] = config_says
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return dst


def _training_prompt(model_dir: Path) -> tuple[str, list[int], bool]:
    """(rendered prompt, its ids, whether a BOS was added) exactly as training encodes a prompt."""
    from llamaforge_tui.core.data.chat_templates import render_chat, resolve_chat_template
    from llamaforge_tui.core.data.encode import RecordEncoder
    from llamaforge_tui.core.model.loading import load_tokenizer

    bundle = load_tokenizer(str(model_dir), None, "hf")
    template = resolve_chat_template(bundle, bundle.architecture)
    text = render_chat(bundle.tokenizer, template, PROMPT, add_generation_prompt=True)
    encoder = RecordEncoder(bundle.tokenizer, template, None)
    ids = list(bundle.tokenizer(text, add_special_tokens=False)["input_ids"])
    if encoder.adds_bos and (not ids or ids[0] != encoder.bos_id):
        ids.insert(0, encoder.bos_id)
    return text, ids, encoder.adds_bos


@pytest.mark.parametrize(("arch", "config_says", "trained_with_bos"), [
    ("qwen3", True, False),   # the config asks for a BOS the tokenizer never adds: llama.cpp must not add one
    ("llama", False, True),   # the post-processor adds BOS although the config says no: llama.cpp must add it
    ("gemma3", True, True),   # both agree
])
def test_export_adds_the_bos_training_added(arch: str, config_says: bool, trained_with_bos: bool,
                                            tmp_path: Path) -> None:
    model_dir = _hf_folder(arch, tmp_path / "hf", config_says)
    text, train_ids, adds_bos = _training_prompt(model_dir)
    assert adds_bos is trained_with_bos  # the premise: transformers follows tokenizer.json
    run = make_run(tmp_path / "run", str(model_dir), weights="hf", data=write_chat_jsonl(tmp_path / "qa.jsonl"))
    result = export_run(run, ExportOptions(out_type="f32"))
    assert result.gguf_path is not None
    with GgufFile(result.gguf_path) as gguf:
        assert gguf.get("tokenizer.ggml.add_bos_token") is trained_with_bos
        assert gguf.get("tokenizer.ggml.add_eos_token") is False
    with LlamaSession(result.gguf_path, n_ctx=256) as llama:
        assert llama.tokenize(text, add_special=True, parse_special=True) == train_ids
