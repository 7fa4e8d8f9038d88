"""End to end through the Ollama store: `ollama:NAME:TAG` resolves to the blob, and chat_template="ollama"
trains with the model's own TEMPLATE layer (what Ollama will send at inference)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

pytest.importorskip("torch")

from llamaforge_tui.core.train import trainer  # noqa: E402
from llamaforge_tui.core.train.events import Event, RunFinished, RunStarted, StepLogged  # noqa: E402
from llamaforge_tui.core.settings import Settings  # noqa: E402
from llamaforge_tui.core.train.config import TrainConfig  # noqa: E402
from tests.fixtures.ollama_store import StoreBuilder  # noqa: E402
from tests.fixtures.tiny_models import session_factory  # noqa: E402

CHATML_GO = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}"
    "{{ if ne .Role \"assistant\" }}<|im_end|>\n{{ end }}"
    "{{- if eq .Role \"assistant\" }}<|im_end|>\n{{ end }}{{ end }}<|im_start|>assistant\n"
)


def test_ollama_source_trains_with_its_own_template_layer(tmp_path: Path) -> None:
    gguf = session_factory().gguf("qwen2", "Q8_0")
    store = StoreBuilder(tmp_path / "models")
    layers = [store.gguf_layer(gguf), store.text_layer("template", CHATML_GO),
              store.text_layer("params", json.dumps({"stop": ["<|im_end|>"]}))]
    store.write("tinyqwen", "latest", store.manifest(layers))
    data = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is code {i}?"},
                          {"role": "assistant", "content": f"Code {i} is {i * 7}."}]} for i in range(8)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    settings = Settings(models_dirs=[str(store.root)], runs_dir=str(tmp_path / "runs"))
    cfg = TrainConfig(model="ollama:tinyqwen", data=str(data), chat_template="ollama", max_steps=3, batch_size=4,
                      dtype="float32", save_every=0, learning_rate=5e-3, output_dir=str(tmp_path / "run"))
    events: list[Event] = []
    result = trainer.run(cfg, events.append, threading.Event(), settings=settings)
    assert result.status == "finished", result.reason
    started = next(e for e in events if isinstance(e, RunStarted))
    assert started.dataset["template"] == "ollama"
    assert started.source["gguf_path"] == str(store.root / "blobs" / f"sha256-{_digest(gguf)}")
    assert started.total_params > started.trainable_params > 0
    assert [e.step for e in events if isinstance(e, StepLogged)] == [1, 2, 3]
    assert isinstance(events[-1], RunFinished)


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
