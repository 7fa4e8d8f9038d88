"""TrainConfig: typed, validated, TOML/YAML round trips, unknown keys rejected."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamaforge_tui.core.errors import ConfigError
from llamaforge_tui.core.train.config import TrainConfig


def test_toml_and_yaml_round_trip(tmp_path: Path) -> None:
    cfg = TrainConfig(model="ollama:gemma3:270m", data="chat.jsonl", lora_r=8, target_modules=["q_proj", "v_proj"],
                      max_steps=50, use_rslora=True, scheduler="linear", packing=True, dtype="bfloat16")
    for name in ("train.toml", "train.yaml"):
        path = cfg.to_file(tmp_path / name)
        again = TrainConfig.from_file(path)
        assert again == cfg
    # unset optional fields are left out of TOML (it has no null) and come back as None
    assert "warmup_steps" not in (tmp_path / "train.toml").read_text()
    assert TrainConfig.from_file(tmp_path / "train.toml").warmup_steps is None


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('model = "x"\nlearning_rte = 0.1\n')
    with pytest.raises(ConfigError, match="unknown key.*learning_rte"):
        TrainConfig.from_file(path)


@pytest.mark.parametrize(("changes", "message"), [
    ({"lora_r": 0}, "lora_r"),
    ({"learning_rate": "fast"}, "learning_rate must be float"),
    ({"batch_size": 2.5}, "batch_size must be int"),
    ({"packing": "yes"}, "packing must be bool"),
    ({"scheduler": "step"}, "scheduler must be one of"),
    ({"dtype": "int8"}, "dtype must be one of"),
    ({"target_modules": ["q_proj", "lm_head"]}, "lm_head"),
    ({"target_modules": ["embed_tokens"]}, "embed_tokens"),
    ({"eval_split": 1.0}, "eval_split"),
    ({"device": "tpu"}, "device"),
])
def test_invalid_values_name_the_key(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(model="m", data="d", **changes)


def test_ints_are_accepted_for_floats_and_yaml_parse_errors_are_clear(tmp_path: Path) -> None:
    assert TrainConfig(learning_rate=1, epochs=2).learning_rate == 1.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        TrainConfig.from_file(bad)
    with pytest.raises(ConfigError, match="no model"):
        TrainConfig(data="x").require_inputs()
