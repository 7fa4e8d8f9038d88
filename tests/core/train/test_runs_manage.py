"""Run details, delete (refused while the lock is held), checkpoint pruning and compare: core and `llamaforge runs`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamaforge_tui import cli
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.core.train import runs
from llamaforge_tui.core.train.checkpoint import STATE_FILE, complete_checkpoints
from llamaforge_tui.core.train.config import TrainConfig
from llamaforge_tui.core.train.events import EvalLogged, EventLog, RunFinished, RunStarted, StepLogged
from llamaforge_tui.core.train.run_cleanup import RunBusy, delete_run, plan_prune, plan_run_delete, prune_checkpoints
from llamaforge_tui.core.train.run_details import compare_runs, run_details
from tests.fixtures.train_models import make_tiny_llama, one_thread, write_qa_jsonl  # noqa: F401


def fake_run(base: Path, name: str, *, steps: int = 4, lr: float = 2e-4, checkpoints: tuple[int, ...] = (2, 4),
             adapter: bool = True, model: str = "ollama:gemma3:270m") -> Path:
    """A finished-looking run folder written the way the trainer writes one (events, checkpoints, adapter)."""
    run_dir = base / name
    TrainConfig(model=model, data="d.jsonl", learning_rate=lr, max_steps=steps).to_file(run_dir / runs.CONFIG_FILE)
    with EventLog(run_dir) as log:
        log.append(RunStarted(run_id=name, run_dir=str(run_dir), config={}, source={}, total_steps=steps,
                              trainable_params=1, total_params=2))
        for step in range(1, steps + 1):
            log.append(StepLogged(step=step, total_steps=steps, epoch=1.0, loss=2.0 / step, lr=lr, grad_norm=1.0,
                                  tokens_per_second=100.0 * step, elapsed_seconds=float(step), eta_seconds=0.0))
        log.append(EvalLogged(step=steps, eval_loss=0.9))
        log.append(RunFinished(step=steps, total_steps=steps, stopped=False, final_loss=2.0 / steps,
                               adapter_path=str(run_dir / "adapter"), elapsed_seconds=float(steps) + 0.5))
    for step in checkpoints:
        ck = run_dir / "checkpoints" / f"step-{step}"
        ck.mkdir(parents=True)
        (ck / "adapter_model.safetensors").write_bytes(b"w" * 1000)
        (ck / STATE_FILE).write_text("{}")
    if adapter:
        (run_dir / "adapter").mkdir()
        (run_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"a" * 500)
    return run_dir


def test_details_read_everything_the_folder_holds(tmp_path: Path) -> None:
    run_dir = fake_run(tmp_path, "r1")
    export = run_dir / "export" / "r1-q8_0.gguf"
    export.parent.mkdir()
    export.write_bytes(b"g" * 300)
    runs.record_export(run_dir, {"gguf_path": str(export), "type": "q8_0", "size_bytes": 300,
                                 "registered_as": "r1:latest", "verification": {"passed": True, "top1_agreement": 1.0,
                                                                                "mean_kl": 1e-4}})
    (run_dir / "export" / "old-f16.gguf").write_bytes(b"o" * 10)  # an export from before records
    d = run_details(run_dir).to_dict()
    assert (d["id"], d["status"], d["step"], d["total_steps"]) == ("r1", "finished", 4, 4)
    assert d["final_loss"] == 0.5 and d["eval_loss"] == 0.9
    assert d["tokens_per_second"] == pytest.approx(250.0) and d["duration_seconds"] == 4.5
    assert [c["step"] for c in d["checkpoints"]] == [2, 4] and d["checkpoints"][0]["size_bytes"] == 1002
    assert d["config"]["learning_rate"] == 2e-4 and d["source_spec"] == "ollama:gemma3:270m"
    assert d["exports"][0]["registered_as"] == "r1:latest" and d["exports"][0]["verification"]["passed"]
    assert d["exports"][1]["gguf_path"].endswith("old-f16.gguf") and d["exports"][1]["recorded"] is False
    assert d["eval"] is None
    (run_dir / "eval.json").write_text(json.dumps({"examples": 3, "base": {"loss": 2.0}, "tuned": {"loss": 1.0}}))
    after = run_details(run_dir)
    assert after.eval["tuned"]["loss"] == 1.0
    assert after.size_bytes == sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
    assert runs.runs_by_ollama_model(Settings(runs_dir=str(tmp_path))) == {
        "gemma3:270m": ["run r1 was trained from it"], "r1:latest": ["exported from run r1"]}


def test_delete_is_refused_while_the_lock_is_held_then_frees_the_folder(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = fake_run(tmp_path, "busy")
    with runs.RunLock(run_dir):
        with pytest.raises(RunBusy, match="still training"):
            delete_run(run_dir)
        assert cli.main(["runs", "delete", str(run_dir), "--yes"]) == 1
        assert "cannot delete busy: it is still training" in capsys.readouterr().err
        assert run_dir.is_dir()
    plan = plan_run_delete(run_dir)
    assert plan.checkpoints == 2 and plan.size_bytes > 2500
    assert cli.main(["runs", "delete", str(run_dir), "--yes", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["freed_bytes"] == plan.size_bytes and not run_dir.exists()
    assert list(tmp_path.iterdir()) == []  # nothing left aside


def test_delete_without_yes_and_without_a_terminal_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = fake_run(tmp_path, "keepme")
    assert cli.main(["runs", "delete", str(run_dir)]) == 1
    assert "pass --yes" in capsys.readouterr().err and run_dir.is_dir()


def test_prune_keeps_the_last_n_or_only_the_adapter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = fake_run(tmp_path, "p", steps=6, checkpoints=(2, 4, 6))
    plan = plan_prune(run_dir, 1)
    assert [s for s, _, _ in plan.remove] == [2, 4] and plan.keep == [6] and plan.freed_bytes == 2004
    assert prune_checkpoints(plan) == 2004
    assert [s for s, _ in complete_checkpoints(run_dir)] == [6]
    assert cli.main(["runs", "prune", str(run_dir), "--adapter-only", "--yes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["freed_bytes"] == 1002
    assert complete_checkpoints(run_dir) == [] and (run_dir / "adapter").is_dir()
    no_adapter = fake_run(tmp_path, "noad", adapter=False)
    with pytest.raises(Exception, match="no final adapter"):
        plan_prune(no_adapter, None)
    with runs.RunLock(no_adapter), pytest.raises(RunBusy):
        plan_prune(no_adapter, 1)


def test_show_by_run_id_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    fake_run(tmp_path / "runs", "byid")
    Settings(runs_dir=str(tmp_path / "runs")).save()
    assert cli.main(["runs", "show", "byid"]) == 0
    text = capsys.readouterr().out
    assert "Status" in text and "finished" in text and "step 2" in text and "Eval loss    0.9000" in text
    assert cli.main(["runs", "show", "nope"]) == 1
    assert capsys.readouterr().err.startswith("error: no run at nope")
    assert cli.main(["runs", "--json"]) == 0  # the plain listing still works
    assert json.loads(capsys.readouterr().out)[0]["run_id"] == "byid"


def test_compare_marks_differing_config_values(tmp_path: Path) -> None:
    a = fake_run(tmp_path, "a", lr=1e-4)
    b = fake_run(tmp_path, "b", lr=3e-4, steps=3)
    c = compare_runs([a, b])
    assert "learning_rate" in c.differing and "max_steps" in c.differing and "lora_r" not in c.differing
    assert c.values["learning_rate"] == [1e-4, 3e-4]
    assert [len(r.train_points) for r in c.runs] == [4, 3]


@pytest.mark.usefixtures("one_thread")
def test_runs_compare_on_two_real_tiny_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_tiny_llama(tmp_path / "model")
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    outs = []
    for name, lr in (("lo", "1e-4"), ("hi", "3e-3")):
        out = tmp_path / "runs" / name
        assert cli.main(["train", "--model", str(model), "--data", str(data), "--out", str(out), "--steps", "3",
                         "--lr", lr, "--batch-size", "2", "--dtype", "float32", "--no-packing", "--json"]) == 0
        outs.append(out)
    capsys.readouterr()
    assert cli.main(["runs", "compare", *map(str, outs), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in doc["runs"]] == ["lo", "hi"]
    assert all([p[0] for p in r["loss_curve"]] == [1, 2, 3] for r in doc["runs"])
    assert doc["runs"][0]["loss_curve"] != doc["runs"][1]["loss_curve"]
    assert "learning_rate" in doc["differing"] and "output_dir" in doc["differing"]
    assert "lora_r" not in doc["differing"] and doc["config"]["learning_rate"] == [1e-4, 3e-3]
    assert cli.main(["runs", "compare", *map(str, outs)]) == 0
    text = capsys.readouterr().out
    assert "* learning_rate" in text and "lo" in text and "hi" in text
    assert cli.main(["runs", "compare", str(outs[0])]) == 1


@pytest.mark.slow
def test_an_export_is_recorded_with_its_registered_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fixtures.export_runs import make_run, write_chat_jsonl
    from fixtures.fake_ollama import FakeOllama
    from fixtures.tiny_models import session_factory

    from llamaforge_tui.core.export.exporter import ExportOptions, export_run

    source = session_factory().get("llama").gguf("F32")
    run_dir = make_run(tmp_path / "run", str(source), weights="gguf", data=write_chat_jsonl(tmp_path / "qa.jsonl"))
    with FakeOllama() as fake:
        result = export_run(run_dir, ExportOptions(out_type="q8_0", name="tiny:v1", register=True, host=fake.host))
    exports = run_details(run_dir).exports
    assert len(exports) == 1 and exports[0]["registered_as"] == "tiny:v1" and exports[0]["exists"]
    assert exports[0]["gguf_path"] == str(result.gguf_path) and exports[0]["type"] == "q8_0"
    plan = plan_run_delete(run_dir)
    assert plan.registered == ["tiny:v1"] and plan.exports == [str(result.gguf_path)]
    assert cli.main(["runs", "show", str(run_dir)]) == 0
    assert "registered as tiny:v1" in capsys.readouterr().out
