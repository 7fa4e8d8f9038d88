"""LoRA training on a tiny model of every supported architecture: the default targets are each block's
linear projections (fused ones too, as in Phi-3), never the embedding or the head, and the loss falls."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from llamaforge_tui.core.train import trainer
from llamaforge_tui.core.train.events import StepLogged
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.core.train.config import TrainConfig
from tests.fixtures.data_tokenizers import make_tokenizer
from tests.fixtures.tiny_models import ARCHES, _randomize, tiny_config
from tests.fixtures.train_models import one_thread, write_qa_jsonl  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
EXPECTED = {"phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}}
DEFAULT = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _hf_dir(arch: str, out: Path) -> Path:
    """The architecture's tiny config (tiny_models.py) with a byte-level BPE chatml tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    from llamaforge_tui.core.data.chat_templates import FAMILY_TEMPLATES

    tok = make_tokenizer("chatml", chat_template=FAMILY_TEMPLATES["chatml"])
    tok.pad_token = "<|endoftext|>"
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    config = tiny_config(arch, len(tok), None, eos, None if arch == "phi3" else tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _randomize(model, 0)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


@pytest.mark.parametrize("arch", ARCHES)
def test_every_architecture_trains_with_default_targets(arch: str, tmp_path: Path) -> None:
    model_dir = _hf_dir(arch, tmp_path / "model")
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    cfg = TrainConfig(model=str(model_dir), data=str(data), max_steps=6, learning_rate=2e-2, batch_size=2,
                      lora_r=8, lora_alpha=16.0, scheduler="constant", warmup_steps=0, save_every=0, log_every=1,
                      dtype="float32", output_dir=str(tmp_path / "run"))
    events: list = []
    result = trainer.run(cfg, events.append, threading.Event(), settings=Settings(runs_dir=str(tmp_path)))
    assert result.status == "finished", result.reason
    losses = [e.loss for e in events if isinstance(e, StepLogged)]
    assert losses[-1] < losses[0], losses
    adapter = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == EXPECTED.get(arch, DEFAULT)
