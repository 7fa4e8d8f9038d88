"""`llamaforge export`: the JSON shape of CLI.md, GGUF-source merges and adapters on a tiny llama (rope
permutation, rsLoRA folding), and one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures.export_runs import make_run, write_chat_jsonl
from fixtures.fake_ollama import FakeOllama
from fixtures.tiny_models import session_factory

from llamaforge_tui.cli import main
from llamaforge_tui.core.export.exporter import ExportOptions, export_run, load_run
from llamaforge_tui.core.export.reference import build_reference
from llamaforge_tui.core.gguf.file import GgufFile
from llamaforge_tui.core.ollama.modelfile import parse_modelfile
from llamaforge_tui.core.export.llama_runner import llama_logits as llama_cpp_logits
from llamaforge_tui.core.export.verify import compare_logits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama_gguf_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GGUF-sourced tiny llama (q/k permuted in the file) with an rsLoRA adapter on every projection."""
    root = tmp_path_factory.mktemp("llama-run")
    source = session_factory().get("llama").gguf("F32")
    return make_run(root / "run", str(source), weights="gguf", data=write_chat_jsonl(root / "qa.jsonl"), rslora=True,
                    r=4, alpha=8.0)


def test_cli_json_shape_and_verification(llama_gguf_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = llama_gguf_run.parent / "cli-out"
    code = main(["export", str(llama_gguf_run), "--type", "f32", "--verify", "--json", "--out", str(out),
                 "--name", "tiny-tune"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {"gguf_path", "type", "size_bytes", "modelfile_path", "adapter_path", "registered_as",
            "verification"} <= set(doc)
    assert doc["type"] == "f32" and Path(doc["gguf_path"]).stat().st_size == doc["size_bytes"]
    v = doc["verification"]
    assert {"top1_agreement", "mean_kl", "positions", "passed", "sample"} <= set(v)
    assert v["passed"] and v["top1_agreement"] >= 0.99 and v["mean_kl"] < 1e-5 and v["positions"] >= 64
    assert {"prompt", "expected", "generated"} == set(v["sample"]) and v["sample"]["prompt"].endswith("model\n")
    assert GgufFile(doc["gguf_path"]).get("general.name") == "tiny-tune"


def test_adapter_gguf_matches_the_merged_export(llama_gguf_run: Path, tmp_path: Path) -> None:
    merged = export_run(llama_gguf_run, ExportOptions(out_type="f32", out_dir=tmp_path / "m", name="m"))
    adapter = export_run(llama_gguf_run, ExportOptions(adapter=True, out_dir=tmp_path / "a", name="a", verify=True))
    assert adapter.adapter_path is not None and adapter.gguf_path is None
    ad = GgufFile(adapter.adapter_path)
    assert ad.get("general.type") == "adapter" and ad.get("adapter.type") == "lora"
    assert ad.get("adapter.lora.alpha") == 8.0
    a = ad.tensor("blk.0.attn_q.weight.lora_a")
    b = ad.tensor("blk.0.attn_q.weight.lora_b")
    assert a.ne == (256, 4) and b.ne == (4, 256)
    assert adapter.verification is not None and adapter.verification.passed
    assert adapter.verification.mean_kl < 1e-5  # rsLoRA scale folded into lora_b; q/k rows permuted
    run = load_run(llama_gguf_run)
    ref = build_reference(run.source, run.config, run.adapter_dir, None)
    with_adapter = llama_cpp_logits(run.source["gguf_path"], ref.sequences, lora_path=adapter.adapter_path)
    cmp = compare_logits(llama_cpp_logits(merged.gguf_path, ref.sequences), with_adapter)
    assert cmp.top1_agreement >= 0.99 and cmp.mean_kl < 1e-5
    modelfile = parse_modelfile(adapter.modelfile_path.read_text(encoding="utf-8"))
    assert modelfile["adapter"] == "./adapter.gguf" and modelfile["from"] == str(Path(run.source["gguf_path"]).resolve())


def test_register_against_local_server(llama_gguf_run: Path, tmp_path: Path) -> None:
    with FakeOllama() as fake:
        result = export_run(llama_gguf_run, ExportOptions(out_type="q8_0", out_dir=tmp_path, name="tiny:v1",
                                                          register=True, host=fake.host))
        body = fake.state.create_bodies[-1]
        assert fake.state.blobs  # the GGUF went up as a blob
    assert result.registered_as == "tiny:v1"
    assert body["model"] == "tiny:v1" and list(body["files"]) == [result.gguf_path.name]
    assert body["parameters"]["stop"] and body["template"]
    assert result.registration_statuses[-1] == "registered as tiny:v1"


def test_errors_are_one_line(llama_gguf_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["export", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    # --register with no server (conftest points OLLAMA_HOST at a dead port): the exact command to run later
    assert main(["export", str(llama_gguf_run), "--type", "q8_0", "--out", str(tmp_path / "o"), "--register"]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert "not reachable" in err and "ollama create" in err and (tmp_path / "o" / "Modelfile").exists()
    # K-quants without llama-cpp-python: say what to install
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    assert main(["export", str(llama_gguf_run), "--type", "q4_k_m", "--out", str(tmp_path / "k")]) == 1
    assert 'pip install "llamaforge-tui[verify]"' in capsys.readouterr().err


def test_k_quant_through_llama_cpp(llama_gguf_run: Path, tmp_path: Path) -> None:
    result = export_run(llama_gguf_run, ExportOptions(out_type="q4_k_m", out_dir=tmp_path, name="k"))
    g = GgufFile(result.gguf_path)
    assert g.get("general.file_type") == 15
    assert {t.ggml_type.name for t in g.tensors} & {"Q4_K", "Q6_K", "Q5_K"}
    assert not list(tmp_path.glob(".lf-f16-*"))  # the F16 intermediate is gone
    assert np.isfinite(llama_cpp_logits(result.gguf_path, [[1, 2, 3, 4]])[0]).all()


def test_measure_choices_gives_one_row_per_option(llama_gguf_run: Path) -> None:
    from llamaforge_tui.core.export.compare import measure_choices

    rows = measure_choices(llama_gguf_run, ["f32", "q8_0", "adapter", "hybrid"])
    assert [r.label.split(" ")[0] for r in rows] == ["f32", "q8_0", "adapter", "hybrid"]
    by = {r.label.split(" ")[0]: r for r in rows}
    assert by["f32"].passed and by["f32"].mean_kl < 1e-5 and by["adapter"].mean_kl < 1e-5
    assert by["q8_0"].mean_kl > by["f32"].mean_kl and all(r.positions >= 64 for r in rows)
    assert not list(llama_gguf_run.glob(".lf-compare-*"))  # scratch exports are cleaned up


def _permute_rows(path: Path, suffix: str) -> None:
    """Shuffle the rows of every tensor named ``*suffix`` in place: a wrong layout, same bytes otherwise."""
    g = GgufFile(path)
    infos = [t for t in g.tensors if t.name.endswith(suffix)]
    rows = {t.name: g.tensor_bytes(t).tobytes() for t in infos}
    g.close()
    with open(path, "r+b") as fh:
        for t in infos:
            raw = rows[t.name]
            n = t.ne[1]
            arr = np.frombuffer(raw, np.uint8).reshape(n, len(raw) // n)
            fh.seek(t.offset)
            fh.write(arr[np.random.default_rng(0).permutation(n)].tobytes())


def test_q8_0_verification_tells_a_faulty_file_from_noise(llama_gguf_run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Judged in parts: a correct Q8_0 passes, permuted q rows and a dropped LoRA fail in the file part."""
    import shutil

    from llamaforge_tui.core.export.exporter import verify_merged
    from llamaforge_tui.core.export.merge import plan_gguf_merge
    from llamaforge_tui.core.gguf.writer import write_gguf

    assert main(["export", str(llama_gguf_run), "--type", "q8_0", "--verify", "--json", "--out", str(tmp_path / "ok"),
                 "--name", "good"]) == 0
    v = json.loads(capsys.readouterr().out)["verification"]
    assert v["passed"] and v["method"] == "parts" and set(v["parts"]) == {"file", "reading", "kernel"}
    assert all(p["passed"] for p in v["parts"].values()) and v["effect_kl"] > 0
    assert v["parts"]["reading"]["mean_kl"] < 1e-4 and v["buffer_types"] == ["CPU_Mapped"]
    good = Path(tmp_path / "ok" / "good-q8_0.gguf")
    run = load_run(llama_gguf_run)
    ref = build_reference(run.source, run.config, run.adapter_dir, None)
    permuted = tmp_path / "permuted.gguf"
    shutil.copy(good, permuted)
    _permute_rows(permuted, "attn_q.weight")
    bad = verify_merged(run, ref, permuted, "q8_0", "q8_0", lambda p: None, sample=False)
    assert not bad.passed and not bad.parts["file"].passed, bad.parts
    assert any(w.startswith("q8_0 file:") for w in bad.warnings)
    dropped = tmp_path / "no-lora.gguf"
    with GgufFile(run.source["gguf_path"]) as src:
        kvd, plans, _ = plan_gguf_merge(src, None, "q8_0")
        write_gguf(dropped, kvd, plans)
    lost = verify_merged(run, ref, dropped, "q8_0", "q8_0", lambda p: None, sample=False)
    assert not lost.passed and not lost.parts["file"].passed
    assert lost.parts["file"].mean_kl > 0.5 * ref.effect_kl  # the whole fine-tune is missing
    assert not list(tmp_path.rglob(".lf-f16-copy-*"))  # the F16 copies are cleaned up


def test_a_crash_in_verification_is_one_line_and_the_export_stays(llama_gguf_run: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from llamaforge_tui.core.export.llama_child import CRASH_ENV

    assert main(["export", str(llama_gguf_run), "--type", "q8_0", "--out", str(tmp_path / "plain"),
                 "--name", "same"]) == 0
    capsys.readouterr()
    monkeypatch.setenv(CRASH_ENV, "logits")  # the child kills itself with SIGSEGV, as a crashing kernel would
    assert main(["export", str(llama_gguf_run), "--type", "q8_0", "--verify", "--out", str(tmp_path / "crash"),
                 "--name", "same"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    path = tmp_path / "crash" / "same-q8_0.gguf"
    assert err.startswith("error: llama.cpp crashed with SIGSEGV during verification of same-q8_0.gguf")
    assert f"The export {path} was written completely before verification and is untouched" in err
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --force-reinstall --no-cache-dir llama-cpp-python' in err
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (path, tmp_path / "plain" / "same-q8_0.gguf")]
    assert digest[0] == digest[1] and (tmp_path / "crash" / "Modelfile").is_file()
    monkeypatch.setenv(CRASH_ENV, "quantize")
    assert main(["export", str(llama_gguf_run), "--type", "q4_k_m", "--out", str(tmp_path / "k")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "crashed with SIGSEGV during Q4_K_M quantization" in err and "Nothing was written" in err
    assert not list((tmp_path / "k").glob("*.gguf")) and not list((tmp_path / "k").glob(".*partial"))


def test_a_modelfile_that_cannot_be_written_fails_before_the_gguf_is_written(
        llama_gguf_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No lost work: the Modelfile is rendered (and refused) before the long tensor write, so nothing is left
    half done and no multi-GB file is written for an export that then fails."""
    from llamaforge_tui.core.export import exporter
    from llamaforge_tui.core.gguf.writer import ExportError

    class Unwritable:
        notes: list[str] = []

        def render(self) -> str:
            raise ExportError('TEMPLATE holds """, which a Modelfile cannot quote')

    writes: list[Path] = []
    monkeypatch.setattr(exporter, "_modelfile_spec", lambda *a, **k: Unwritable())
    monkeypatch.setattr(exporter, "_write_merged", lambda run, adapter, t, path, *a: writes.append(path) or 0)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="cannot quote"):
        exporter.export_run(llama_gguf_run, exporter.ExportOptions(out_type="f16", out_dir=str(out)))
    assert writes == []
    assert not any(out.glob("*.gguf")) and not (out / "Modelfile").exists()
