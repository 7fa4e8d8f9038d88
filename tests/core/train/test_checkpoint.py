"""Checkpoints: exact round trip of adapter/optimizer/scheduler/RNG, atomic rename, pruning, and
half-written folders that are never picked up."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from llamaforge_tui.core.train import checkpoint as ckpt  # noqa: E402
from llamaforge_tui.core.train import setup as train_setup  # noqa: E402
from llamaforge_tui.core.train.config import TrainConfig  # noqa: E402
from tests.fixtures.train_models import make_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


def _setup(model_dir: Path):  # noqa: ANN202
    from transformers import AutoModelForCausalLM

    cfg = TrainConfig(model=str(model_dir), data="x", lora_r=4)
    model = train_setup.apply_lora(AutoModelForCausalLM.from_pretrained(str(model_dir)), cfg)
    opt = train_setup.make_optimizer(model, cfg)
    sched = train_setup.make_scheduler(opt, cfg, total_steps=20)
    return model, opt, sched


def _train_a_bit(model, opt, sched, steps: int = 2) -> None:  # noqa: ANN001
    for _ in range(steps):
        ids = torch.randint(0, 300, (1, 12))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def test_round_trip_is_exact_and_old_checkpoints_are_pruned(model_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, opt, sched = _setup(model_dir)
    for step in (1, 2, 3):
        _train_a_bit(model, opt, sched, 1)
        ckpt.save_checkpoint(tmp_path, step, model=model, optimizer=opt, scheduler=sched,
                             state={"data_position": step * 4}, keep=2)
    assert [s for s, _ in ckpt.complete_checkpoints(tmp_path)] == [2, 3]
    path = ckpt.latest_checkpoint(tmp_path)
    assert path.name == "step-3" and (path / "adapter" / "adapter_model.safetensors").is_file()
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    # the RNG state in the checkpoint is the one at save time: re-save to capture "now"
    ckpt.save_checkpoint(tmp_path, 3, model=model, optimizer=opt, scheduler=sched, state={"data_position": 12})
    expected_rand = (torch.rand(3), random.random())
    fresh, opt2, sched2 = _setup(model_dir)
    torch.manual_seed(123)
    random.seed(123)
    state = ckpt.load_checkpoint(path, model=fresh, optimizer=opt2, scheduler=sched2, device="cpu")
    assert state["step"] == 3 and state["data_position"] == 12
    for n, p in fresh.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, saved[n]), n
    assert torch.equal(torch.rand(3), expected_rand[0]) and random.random() == expected_rand[1]
    assert sched2.last_epoch == sched.last_epoch
    a, b = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(a[k]["exp_avg_sq"], b[k]["exp_avg_sq"]) for k in a)


def test_half_written_checkpoints_are_ignored_and_swept(model_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    model, opt, sched = _setup(model_dir)
    good = ckpt.save_checkpoint(tmp_path, 2, model=model, optimizer=opt, scheduler=sched, state={})
    real_save = torch.save

    def dies_on_rng(obj, f, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if str(f).endswith("rng.pt"):
            raise OSError("disk full")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", dies_on_rng)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 4, model=model, optimizer=opt, scheduler=sched, state={})
    monkeypatch.undo()
    assert not (tmp_path / "checkpoints" / "step-4").exists()
    # what a SIGKILL mid-save leaves behind, and a folder without its completion marker
    partial = tmp_path / "checkpoints" / ".tmp-step-6-999"
    (partial / "adapter").mkdir(parents=True)
    (partial / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    (tmp_path / "checkpoints" / "step-8").mkdir()
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert ckpt.sweep_partial(tmp_path) == [partial] and not partial.exists()
