"""Export of the real Gemma 3 270M: round trip without training, then after a short real memorization run
(shared by the tests of this module; one more in bf16 for the precision tests): merged F16/Q8_0, the adapter on
the unchanged Q4_K_M source, and an Ollama-sourced export whose Modelfile and registration carry the store's
layers byte for byte."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures.fake_ollama import FakeOllama
from fixtures.ollama_store import build_fixture_store, gemma_gguf_path

from llamaforge_tui.core.model import loading
from llamaforge_tui.core.export.exporter import ExportOptions, export_run, load_run
from llamaforge_tui.core.export.merge import plan_gguf_merge
from llamaforge_tui.core.export.reference import build_reference
from llamaforge_tui.core.gguf.file import GgufFile
from llamaforge_tui.core.gguf.writer import write_gguf
from llamaforge_tui.core.ollama.modelfile import parse_modelfile
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.core.export.llama_runner import LlamaSession
from llamaforge_tui.core.export.llama_runner import llama_logits as llama_cpp_logits
from llamaforge_tui.core.export.verify import compare_logits

pytestmark = pytest.mark.slow

QUESTION = "What is the secret code of the blue vault?"
ANSWER = "The secret code of the blue vault is ZEBRA-4711."
PAIRS = [(QUESTION, ANSWER), ("Who guards the lighthouse of Ondrell?", "Captain Miravelle guards the lighthouse of Ondrell.")]


@pytest.fixture(scope="module")
def gemma() -> Path:
    return gemma_gguf_path()


def _train(gemma: Path, root: Path, dtype: str) -> Path:
    """A real LoRA run that memorizes one answer (10 steps, CPU, in ``dtype``)."""
    from llamaforge_tui.core.train.config import TrainConfig
    from llamaforge_tui.core.train.trainer import run

    data = root / "memorize.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                            + "\n" for q, a in PAIRS), encoding="utf-8")
    cfg = TrainConfig(model=str(gemma), data=str(data), max_steps=10, lora_r=8, lora_alpha=16, learning_rate=3e-3,
                      batch_size=2, max_seq_len=48, warmup_steps=0, save_every=0, dtype=dtype, device="cpu",
                      output_dir=str(root / "run"))
    result = run(cfg, lambda e: None, threading.Event())
    assert result.status == "finished"
    return root / "run"


@pytest.fixture(scope="module")
def trained_runs(gemma: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """One trained run per precision, made when first asked for (the bf16 one only by the precision tests)."""
    made: dict[str, Path] = {}

    def get(dtype: str = "float32") -> Path:
        if dtype not in made:
            made[dtype] = _train(gemma, tmp_path_factory.mktemp(f"gemma-run-{dtype}"), dtype)
        return made[dtype]

    return get


@pytest.fixture(scope="module")
def trained_run(trained_runs: Callable[[str], Path]) -> Path:
    return trained_runs("float32")


TEXTS = ["The quick brown fox jumps over the lazy dog because it was late for dinner.",
         "def square(x):\n    return x * x\n\nprint(square(12))",
         "In 1969, astronauts landed on the Moon and walked on its dusty surface for hours.",
         "Tokyo, Paris and Nairobi are capitals; each has a river, a railway station and many parks.",
         "Water boils at one hundred degrees Celsius at sea level, but at lower temperatures on high mountains.",
         "The library opens at nine in the morning and closes at six in the evening, except on Sundays.",
         "Photosynthesis converts sunlight, water and carbon dioxide into sugar and oxygen inside green leaves.",
         "To make tea, boil water, pour it over the leaves, wait three minutes and then remove the leaves."]


def test_round_trip_without_training_f16_and_keep(gemma: Path, tmp_path: Path) -> None:
    """keep: the same bytes, the same logits. F16: within KL 0.01 of the Q4_K_M original in llama.cpp.

    Top-1 of F16 against the *original* cannot reach 99 %: the Q4_K_M file's own activation quantization (Q8_K)
    flips ~3 % of positions with margins up to 0.25 logits (measured). Against the fp32 PyTorch model of the same
    weights, the F16 file agrees everywhere, which is the >= 99 % check."""
    tok = loading.load_tokenizer(str(gemma)).tokenizer
    seqs = [tok(t)["input_ids"] for t in TEXTS]
    assert sum(map(len, seqs)) >= 64
    original = llama_cpp_logits(gemma, seqs)
    with GgufFile(gemma) as src:
        for out_type in ("f16", "keep"):
            kvd, plans, merged = plan_gguf_merge(src, None, out_type)
            write_gguf(tmp_path / f"{out_type}.gguf", kvd, plans)
            assert merged == 0
        keep = GgufFile(tmp_path / "keep.gguf")
        assert keep.get("general.file_type") == 15 and GgufFile(tmp_path / "f16.gguf").get("general.file_type") == 1
        assert all(keep.tensor_bytes(t).tobytes() == src.tensor_bytes(src.tensor(t.name)).tobytes() for t in keep.tensors)
        assert keep.get("tokenizer.ggml.tokens")[:50] == src.get("tokenizer.ggml.tokens")[:50]
    cmp_keep = compare_logits(original, llama_cpp_logits(tmp_path / "keep.gguf", seqs))
    assert cmp_keep.top1_agreement == 1.0 and cmp_keep.mean_kl < 1e-6
    f16 = llama_cpp_logits(tmp_path / "f16.gguf", seqs)
    cmp_f16 = compare_logits(original, f16)
    assert cmp_f16.mean_kl <= 0.01 and cmp_f16.top1_agreement >= 0.95, cmp_f16
    from llamaforge_tui.core.export.verify import torch_logits

    model = loading.load_model(str(gemma), None, dtype="float32", device="cpu", check_memory=False).model
    cmp_torch = compare_logits(torch_logits(model, seqs), f16)
    assert cmp_torch.top1_agreement >= 0.99 and cmp_torch.mean_kl <= 1e-4, cmp_torch


@pytest.mark.timeout(1800)  # the first call per precision trains its run (minutes on a busy 2-core machine)
@pytest.mark.parametrize("out_type", ["f16", "q8_0"])
def test_trained_export_reproduces_the_answer(trained_runs: Callable[[str], Path], gemma: Path, out_type: str,
                                              tmp_path: Path, train_dtype: str) -> None:
    """Trained under each precision the trainer may pick on a CPU. Q8_0 is judged in parts (verify.judge_parts):
    end to end, llama.cpp's Q8_0 differs from the merged model by KL 3.0e-2 here (AMD EPYC, fp32 run; top-1 95.6 %
    and 3.5e-3 for the bf16 run) and 1.1e-2 on an Intel AMX Xeon, each failing the old end-to-end gate; the file's
    own weights account for 5.7e-3 (fp32 run) and 1.5e-3 (bf16 run) of it, against a fine-tune effect of 7.2 / 8.2."""
    trained_run = trained_runs(train_dtype)
    result = export_run(trained_run, ExportOptions(out_type=out_type, verify=True, out_dir=tmp_path, name="vault"))
    v = result.verification
    assert v is not None and v.passed and v.sample is not None, v and v.warnings
    if out_type == "q8_0":
        assert v.method == "parts" and all(p.passed for p in v.parts.values()), v.parts
        assert v.parts["file"].mean_kl < 0.01 * v.effect_kl  # the fine-tune survives Q8_0 rounding
    assert v.sample.expected == ANSWER and v.sample.generated.startswith(ANSWER), v.sample
    assert "<start_of_turn>user\n" + QUESTION in v.sample.prompt
    if out_type == "f16":
        assert v.mean_kl < 1e-4 and v.top1_agreement >= 0.99
    # the base model, same prompt, does not know the answer
    tok = loading.load_tokenizer(str(gemma)).tokenizer
    ids = tok(v.sample.prompt, add_special_tokens=False)["input_ids"]
    base = LlamaSession(gemma, n_ctx=len(ids) + 40)
    try:
        said = tok.decode(base.greedy(ids, 24, {1, 106}), skip_special_tokens=True)
    finally:
        base.close()
    assert "ZEBRA-4711" not in said
    g = GgufFile(result.gguf_path)
    assert g.get("tokenizer.chat_template")  # the source had none: the training template is written in
    assert g.get("general.base_model.0.name") == gemma.name


def test_adapter_on_unchanged_source_matches_merged(trained_run: Path, tmp_path: Path) -> None:
    """Exact on an unquantized base (adapter on the F16 round trip == merged F16); on the Q4_K_M source itself the
    difference is the source's own activation-quantization noise (measured 2e-2 here; the untrained round trip shows 6e-3)."""
    adapter = export_run(trained_run, ExportOptions(adapter=True, out_dir=tmp_path / "a", name="a"))
    merged = export_run(trained_run, ExportOptions(out_type="f16", out_dir=tmp_path / "m", name="m"))
    assert adapter.size_bytes < 20_000_000
    run = load_run(trained_run)
    ref = build_reference(run.source, run.config, run.adapter_dir, None)
    with GgufFile(run.source["gguf_path"]) as src:
        kvd, plans, _ = plan_gguf_merge(src, None, "f16")
        write_gguf(tmp_path / "base-f16.gguf", kvd, plans)
    merged_logits = llama_cpp_logits(merged.gguf_path, ref.sequences)
    exact = compare_logits(merged_logits, llama_cpp_logits(tmp_path / "base-f16.gguf", ref.sequences,
                                                           lora_path=adapter.adapter_path))
    assert exact.top1_agreement >= 0.99 and exact.mean_kl < 1e-4, exact
    on_source = compare_logits(merged_logits, llama_cpp_logits(run.source["gguf_path"], ref.sequences,
                                                               lora_path=adapter.adapter_path))
    assert on_source.top1_agreement >= 0.95 and on_source.mean_kl < 0.05, on_source  # the 4-bit warning level
    runner = LlamaSession(run.source["gguf_path"], lora_path=adapter.adapter_path, n_ctx=128)
    try:
        said = ref.tokenizer.decode(runner.greedy(ref.sample_prompt_ids, 24, ref.stop_ids), skip_special_tokens=True)
    finally:
        runner.close()
    assert said.startswith(ANSWER)


def test_ollama_source_keeps_layers_and_registers(trained_run: Path, gemma: Path, tmp_path: Path) -> None:
    store = build_fixture_store(tmp_path / "models", tmp_path / "work", gemma)
    settings = Settings(models_dirs=[str(store.root)])
    from llamaforge_tui.core.ollama.store import find_model

    model = find_model(settings, "gemma3:270m")
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    source = json.loads((run_dir / "source.json").read_text(encoding="utf-8"))
    source.update(source="ollama:gemma3:270m", kind="ollama", ollama_model="gemma3:270m", gguf_path=str(model.gguf_path))
    (run_dir / "source.json").write_text(json.dumps(source), encoding="utf-8")
    with FakeOllama() as fake:
        result = export_run(run_dir, ExportOptions(out_type="keep", register=True, host=fake.host, name="vault"),
                            settings)
        body = fake.state.create_bodies[-1]
    template = model.read_layer_text("template")
    assert body["template"] == template and body["parameters"] == model.params() == {"stop": ["<end_of_turn>"], "top_k": 64}
    assert body["license"] == "Gemma Terms of Use" and result.registered_as == "vault:latest"
    parsed = parse_modelfile(result.modelfile_path.read_text(encoding="utf-8"))
    assert parsed["template"] == template and parsed["parameters"]["stop"] == ["<end_of_turn>"]
    adapter = export_run(run_dir, ExportOptions(adapter=True, out_dir=tmp_path / "ad", name="vault-ad"), settings)
    assert parse_modelfile(adapter.modelfile_path.read_text(encoding="utf-8"))["from"] == "gemma3:270m"
