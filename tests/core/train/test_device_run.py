"""Device-specific paths of a run: the CPU path for real (RunStarted and the log say where and why), and with
fakes what this machine cannot do: an MPS out-of-memory, an op with no MPS kernel, the MPS RNG in checkpoints."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from llamaforge_tui.core.settings import Settings  # noqa: E402
from llamaforge_tui.core.train import checkpoint as ckpt  # noqa: E402
from llamaforge_tui.core.train import failures, trainer  # noqa: E402
from llamaforge_tui.core.train.config import TrainConfig  # noqa: E402
from llamaforge_tui.core.train.device import plan_device  # noqa: E402
from llamaforge_tui.core.train.events import Event, LogLine, RunFailed, RunStarted, read_events  # noqa: E402
from tests.fixtures.train_models import make_tiny_llama, one_thread, write_qa_jsonl  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("one_thread")

MPS_OOM = ("MPS backend out of memory (MPS allocated: 17.50 GB, other allocations: 1.20 GB, max allowed: 18.13 GB). "
           "Tried to allocate 256.00 MB on private pool. Use PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 to disable upper "
           "limit for memory allocations (may cause system failure).")
MPS_MISSING = ("The operator 'aten::_fused_thing' is not currently implemented for the MPS device. If you want this "
               "op to be added in priority during the prototype phase of this feature, please comment on "
               "https://github.com/pytorch/pytorch/issues/77764. As a temporary fix, you can set the environment "
               "variable `PYTORCH_ENABLE_MPS_FALLBACK=1` to use the CPU as a fallback for this op.")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("device-run")
    return make_tiny_llama(base / "model"), write_qa_jsonl(base / "qa.jsonl")


def _run(tiny: tuple[Path, Path], out: Path, **kw: object) -> tuple[trainer.RunResult, list[Event]]:
    cfg = TrainConfig(model=str(tiny[0]), data=str(tiny[1]), batch_size=2, max_steps=3, save_every=1, log_every=1,
                      output_dir=str(out), **kw)
    events: list[Event] = []
    result = trainer.run(cfg, events.append, threading.Event(), settings=Settings(runs_dir=str(out) + "-runs"))
    return result, events


def _raise_on_call(monkeypatch: pytest.MonkeyPatch, call: int, exc: BaseException) -> None:
    """Raise ``exc`` from the first layer's forward on its ``call``-th run: in eager mode only, so the runs
    that use it train on the CPU (CUDA compiles the layers, and dynamo traces a raising hook differently)."""
    real = trainer.TrainingRecipe._build_model

    def build(self, base_model):  # noqa: ANN001, ANN202
        real(self, base_model)
        calls = {"n": 0}

        def hook(_module, _inputs, _output):  # noqa: ANN001, ANN202
            calls["n"] += 1
            if calls["n"] == call:
                raise exc

        self.model.get_base_model().model.layers[0].register_forward_hook(hook)

    monkeypatch.setattr(trainer.TrainingRecipe, "_build_model", build)


def test_cpu_run_records_device_precision_and_why(tiny, tmp_path: Path) -> None:  # noqa: ANN001
    result, events = _run(tiny, tmp_path / "run", dtype="auto")
    assert result.status == "finished"
    [started] = [e for e in events if isinstance(e, RunStarted)]
    planned = plan_device("auto", "auto")  # what the plan and the form say: the run must do just that
    assert {k: getattr(started, k) for k in planned} == planned
    assert started.device_reason.startswith("auto:") and started.precision_reason.startswith("auto:")
    if not (torch.cuda.is_available() or torch.backends.mps.is_available()):  # this machine: the CPU
        assert (started.device, started.backend) == ("cpu", "cpu") and "no CUDA or ROCm GPU" in started.device_reason
    assert started.precision in ("float32", f"{planned['precision']}")
    assert any(isinstance(e, LogLine) and e.message.startswith(f"device {started.device} (auto:") for e in events)
    # The same fields come back from events.jsonl (a monitor in another window reads them there).
    [again] = [e for e in read_events(tmp_path / "run") if isinstance(e, RunStarted)]
    assert again.device_reason == started.device_reason and again.precision == started.precision


def test_old_run_started_lines_still_load() -> None:
    from llamaforge_tui.core.train.events import event_from_dict

    old = {"type": "RunStarted", "time": 1.0, "run_id": "r", "run_dir": "/x", "config": {}, "source": {},
           "total_steps": 3, "trainable_params": 1, "total_params": 2}
    event = event_from_dict(old)
    assert isinstance(event, RunStarted) and event.device == "" and event.precision_reason == ""


def test_mps_out_of_memory_ends_in_an_oom_failure(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    _raise_on_call(monkeypatch, call=2, exc=RuntimeError(MPS_OOM))
    result, events = _run(tiny, tmp_path / "run", dtype="float32", device="cpu")
    [failed] = [e for e in events if isinstance(e, RunFailed)]
    assert (result.kind, failed.kind, failed.step) == ("oom", "oom", 1)
    assert "batch_size" in failed.reason and "step-1" in failed.reason
    reason = failures.oom_reason(RuntimeError(MPS_OOM), 2, TrainConfig(), "mps", None)
    assert reason.startswith("out of unified (MPS) memory at step 2") and "close other apps" in reason


def test_an_op_without_an_mps_kernel_fails_with_its_name(tiny, tmp_path: Path,  # noqa: ANN001
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTORCH_ENABLE_MPS_FALLBACK", raising=False)
    _raise_on_call(monkeypatch, call=1, exc=NotImplementedError(MPS_MISSING))
    result, events = _run(tiny, tmp_path / "run", dtype="float32", device="cpu")
    [failed] = [e for e in events if isinstance(e, RunFailed)]
    assert failed.kind == "error" and "internal error" not in failed.reason
    assert "aten::_fused_thing" in failed.reason and "PYTORCH_ENABLE_MPS_FALLBACK=1" in failed.reason
    assert result.status == "failed"


def test_checkpoint_rng_saves_and_restores_the_mps_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"mps": torch.arange(8, dtype=torch.uint8)}
    restored: list[torch.Tensor] = []
    monkeypatch.setattr(torch.backends, "mps", SimpleNamespace(is_built=lambda: True, is_available=lambda: True))
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: state["mps"].clone())
    monkeypatch.setattr(torch.mps, "set_rng_state", restored.append)
    json_part, tensors = ckpt.rng_state()
    assert torch.equal(tensors["mps"], state["mps"])
    ckpt.restore_rng(json_part, tensors)
    assert len(restored) == 1 and torch.equal(restored[0], state["mps"])


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="a Mac: its checkpoints hold the MPS state")
def test_checkpoint_rng_without_mps_has_no_mps_state() -> None:
    _, tensors = ckpt.rng_state()
    assert "mps" not in tensors
    ckpt.restore_rng({}, {"mps": torch.zeros(4, dtype=torch.uint8)})  # a Mac's checkpoint resumed here: ignored


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="a Mac: mps is there")
def test_cli_refuses_mps_here_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llamaforge_tui import cli

    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    code = cli.main(["train", "--model", "hf:tiny/none", "--data", str(data), "--device", "mps",
                     "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: device mps requested but this torch build has no MPS support")
    assert not (tmp_path / "run").exists()  # refused before anything was written or loaded
