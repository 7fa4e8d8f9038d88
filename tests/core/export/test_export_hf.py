"""Export from Hugging Face checkpoints (tiny models of every supported architecture), checked against
llama.cpp's own converter (same tensors, same metadata) and against the PEFT-merged PyTorch model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures.export_runs import make_run, write_chat_jsonl
from fixtures.tiny_models import ARCHES, session_factory

from llamaforge_tui.core.export.exporter import ExportOptions, export_run
from llamaforge_tui.core.export.hf import plan_hf_export
from llamaforge_tui.core.gguf.file import GgufFile
from llamaforge_tui.core.gguf.writer import decode_tensor, write_gguf

COSMETIC = {"general.name", "general.basename", "general.size_label", "general.type", "general.finetune",
            "general.version", "tokenizer.ggml.add_sep_token"}

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("arch", ARCHES)
def test_metadata_and_tensors_match_llama_cpp_converter(arch: str, tmp_path: Path) -> None:
    tm = session_factory().get(arch)
    oracle = GgufFile(tm.gguf("F32"))
    kvd, plans, close = plan_hf_export(tm.hf_dir, None, None, "f32")
    try:
        write_gguf(tmp_path / "ours.gguf", kvd, plans)
    finally:
        close()
    ours = GgufFile(tmp_path / "ours.gguf")
    for key in oracle.kv:
        if key in COSMETIC:
            continue
        assert key in ours.kv, f"{arch}: missing {key}"
        assert ours.get(key) == oracle.get(key), f"{arch}: {key} differs"
    assert sorted(t.name for t in ours.tensors) == sorted(t.name for t in oracle.tensors)
    for t in oracle.tensors:
        assert ours.tensor(t.name).ggml_type == t.ggml_type
        np.testing.assert_array_equal(decode_tensor(ours, t.name), decode_tensor(oracle, t.name), err_msg=t.name)


@pytest.mark.parametrize("arch", ARCHES)
def test_merged_export_runs_in_llama_cpp_like_pytorch(arch: str, tmp_path: Path) -> None:
    tm = session_factory().get(arch)
    data = write_chat_jsonl(tmp_path / "qa.jsonl")
    run = make_run(tmp_path / "run", str(tm.hf_dir), weights="hf", data=data, rslora=arch == "qwen2")
    result = export_run(run, ExportOptions(out_type="f32", verify=True))
    v = result.verification
    assert v is not None and v.passed, v
    assert v.positions >= 64 and v.top1_agreement >= 0.99 and v.mean_kl < 1e-5
    assert result.gguf_path is not None and result.gguf_path.exists()
    assert GgufFile(result.gguf_path).get("general.base_model.0.name")
    modelfile = result.modelfile_path.read_text(encoding="utf-8")
    assert f"FROM ./{result.gguf_path.name}" in modelfile and "PARAMETER stop" in modelfile


def test_row_block_conversion_gives_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Big tensors are converted in row blocks (bounded memory); force tiny blocks and compare bytes."""
    from llamaforge_tui.core.export import hf as export_hf
    from llamaforge_tui.core.gguf import writer as gguf_writer
    from llamaforge_tui.core.export.merge import plan_gguf_merge

    tm = session_factory().get("llama")
    for label, chunk in (("whole", 1 << 30), ("blocks", 1000)):
        monkeypatch.setattr(export_hf, "CHUNK_ELEMENTS", chunk)
        monkeypatch.setattr(gguf_writer, "CHUNK_ELEMENTS", chunk)
        kvd, plans, close = plan_hf_export(tm.hf_dir, None, None, "q8_0")
        write_gguf(tmp_path / f"hf-{label}.gguf", kvd, plans)
        close()
        with GgufFile(tm.gguf("Q4_K_M")) as src:
            kvd, plans, _ = plan_gguf_merge(src, None, "f16")
            write_gguf(tmp_path / f"gguf-{label}.gguf", kvd, plans)
    for kind in ("hf", "gguf"):
        assert (tmp_path / f"{kind}-whole.gguf").read_bytes() == (tmp_path / f"{kind}-blocks.gguf").read_bytes()
