"""The real Gemma 3 270M, loaded from its Q4_K_M GGUF, trains a few LoRA steps on CPU and the loss falls."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from llamaforge_tui.core.train import trainer
from llamaforge_tui.core.train.events import RunStarted, StepLogged
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.core.train.config import TrainConfig
from tests.fixtures.ollama_store import gemma_gguf_path

pytestmark = pytest.mark.slow


def test_gemma_from_gguf_trains_and_the_loss_falls(tmp_path: Path) -> None:
    data = tmp_path / "facts.jsonl"
    with data.open("w") as fh:
        for q, a in [("Which colour is the Lumen kettle's ring when paired?", "It glows teal when paired."),
                     ("What does Lumi do?", "Lumi answers questions about Lumen Home products.")]:
            fh.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
    cfg = TrainConfig(model=str(gemma_gguf_path()), data=str(data), max_steps=3, batch_size=2, max_seq_len=64,
                      learning_rate=2e-3, lora_r=8, lora_alpha=16.0, scheduler="constant", warmup_steps=0,
                      save_every=0, log_every=1, output_dir=str(tmp_path / "run"))
    events: list = []
    result = trainer.run(cfg, events.append, threading.Event(), settings=Settings(runs_dir=str(tmp_path)))
    assert result.status == "finished", result.reason
    losses = [e.loss for e in events if isinstance(e, StepLogged)]
    assert len(losses) == 3 and losses[-1] < losses[0] * 0.8, losses
    started = next(e for e in events if isinstance(e, RunStarted))
    assert 200_000_000 < started.total_params < 300_000_000 and started.trainable_params < 5_000_000
    source = json.loads((result.run_dir / "source.json").read_text())
    assert source["architecture"] == "gemma3" and source["gguf_path"].endswith(".gguf")
    assert (result.run_dir / "adapter" / "adapter_config.json").is_file()
    adapter_cfg = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert set(adapter_cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                  "down_proj"}
