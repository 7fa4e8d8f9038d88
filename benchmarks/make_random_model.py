"""A model folder with a real model's shape and tokenizer but random weights, for timing where the real
weights cannot travel (the GPU machine has no copy of the GGUF).

1. here:   ``python benchmarks/make_random_model.py shape SOURCE OUT_DIR``  (config.json + tokenizer, ~33 MB for Gemma)
2. there:  ``python benchmarks/make_random_model.py weights SHAPE_DIR MODEL_DIR``  (random bf16 safetensors)
3. there:  ``python benchmarks/bench_train.py --model MODEL_DIR --device cuda``

Speed and memory depend on the shape only; the losses of such a model mean nothing.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def save_shape(source: str, out: Path) -> None:
    from llamaforge_tui.core.model.loading import load_model

    loaded = load_model(source, None, dtype="bfloat16", device="cpu")
    loaded.model.config.save_pretrained(out)
    if loaded.chat_template and not loaded.tokenizer.chat_template:
        loaded.tokenizer.chat_template = loaded.chat_template
    loaded.tokenizer.save_pretrained(out)


def make_weights(shape: Path, out: Path, seed: int = 0) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(shape)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    for f in shape.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, out / f.name)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("shape", "weights"):
        raise SystemExit(__doc__)
    if sys.argv[1] == "shape":
        save_shape(sys.argv[2], Path(sys.argv[3]))
    else:
        make_weights(Path(sys.argv[2]), Path(sys.argv[3]))
