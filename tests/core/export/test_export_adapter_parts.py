"""An adapter exported for a quantized (Q8_0) source is judged in parts (verify.judge_adapter_parts): llama.cpp's
arithmetic on the source is measured on the source alone and cancelled, so compute noise cannot fail a correct
adapter, while permuted rows, a zeroed adapter or a wrong scale fail the ``adapter`` part."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fixtures.export_runs import make_run, write_chat_jsonl
from fixtures.tiny_models import session_factory
from llamaforge_tui.cli import main
from llamaforge_tui.core.export.exporter import ExportProgress, load_run, verify_adapter
from llamaforge_tui.core.export.reference import build_reference
from llamaforge_tui.core.gguf.file import GgufFile

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def q8_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run on the tiny llama's Q8_0 GGUF, LoRA on every projection, with an effect well above Q8_0 noise."""
    root = tmp_path_factory.mktemp("q8-run")
    source = session_factory().get("llama").gguf("Q8_0")
    return make_run(root / "run", str(source), weights="gguf", data=write_chat_jsonl(root / "qa.jsonl"), r=4,
                    alpha=8.0, scale=0.2)


def _rewrite(path: Path, suffix: str, change) -> None:  # noqa: ANN001 - numpy array -> numpy array
    """Apply ``change`` to every F32/F16 tensor named ``*suffix`` of ``path``, in place (rows = ne[1])."""
    g = GgufFile(path)
    infos = [t for t in g.tensors if t.name.endswith(suffix)]
    arrays = {}
    for t in infos:
        dtype = {"F32": np.float32, "F16": np.float16}[t.ggml_type.name]
        arrays[t.name] = (t, np.frombuffer(g.tensor_bytes(t).tobytes(), dtype).reshape(t.ne[1], -1))
    g.close()
    assert arrays, f"no {suffix} tensors"
    with open(path, "r+b") as fh:
        for t, arr in arrays.values():
            fh.seek(t.offset)
            fh.write(np.ascontiguousarray(change(arr).astype(arr.dtype)).tobytes())


def test_a_correct_adapter_passes_and_broken_ones_fail(q8_run: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(q8_run), "--adapter", "--verify", "--json", "--out", str(tmp_path / "ok"),
                 "--name", "good"]) == 0
    doc = json.loads(capsys.readouterr().out)
    v = doc["verification"]
    assert v["passed"] and v["method"] == "parts" and set(v["parts"]) == {"kernel", "adapter"}, v
    assert v["effect_kl"] > 0.05  # the fine-tune changes these prompts clearly
    assert v["parts"]["adapter"]["mean_kl"] < 0.05 * v["effect_kl"], v["parts"]
    assert any("adapter on q8_0" in n for n in v["notes"])
    good = Path(doc["adapter_path"])
    run = load_run(q8_run)
    ref = build_reference(run.source, run.config, run.adapter_dir, None)
    print("good:", json.dumps({k: v["parts"][k] for k in v["parts"]}), "end-to-end KL", v["mean_kl"],
          "effect KL", v["effect_kl"])
    faults = {
        "permuted lora_b rows": ("lora_b", lambda a: a[np.random.default_rng(0).permutation(a.shape[0])]),
        "zeroed adapter": ("lora_b", np.zeros_like),
        "scale x3": ("lora_b", lambda a: a * 3),
    }
    for fault, (suffix, change) in faults.items():
        broken = tmp_path / f"{fault.replace(' ', '-')}.gguf"
        shutil.copy(good, broken)
        _rewrite(broken, suffix, change)
        bad = verify_adapter(run, ref, broken, lambda p: None if isinstance(p, ExportProgress) else None)
        print(f"{fault}: adapter KL {bad.parts['adapter'].mean_kl:.3e} top-1 {bad.parts['adapter'].top1_agreement:.3f}"
              f", kernel KL {bad.parts['kernel'].mean_kl:.3e}, end-to-end KL {bad.mean_kl:.3e}")
        assert not bad.passed and not bad.parts["adapter"].passed, (fault, bad.parts)
        assert bad.parts["kernel"].passed  # the source and llama.cpp are the same: only the adapter is wrong
        assert any(w.startswith("adapter on q8_0 adapter:") for w in bad.warnings), bad.warnings
