"""Chat on GGUFs (slow: llama.cpp child processes and tiny llama.cpp-converted models).

- A tiny fact run exported as a merged F32 GGUF answers the fact through the shared llama.cpp runner, given as the
  .gguf or as the export folder (the Modelfile's TEMPLATE and stop), with the same greedy text as the run in torch.
- Runs from an Ollama model trained with ``chat_template = "ollama"`` on ``gguf`` and ``gguf-quantized`` weights
  load with their adapter, render with the TEMPLATE layer, stop at the model's end-of-turn token and take the
  store's PARAMETERs as defaults; the adapter switches off on the same model. The run's adapter GGUF export chats in
  llama.cpp on its base (FROM the Ollama model + ADAPTER).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("llama_cpp")

from llamaforge_tui.core.export.exporter import ExportOptions, export_run
from llamaforge_tui.core.infer.chat import (
    ChatHistory,
    ChatOptions,
    GgufBackend,
    ask,
    open_backend,
)
from llamaforge_tui.core.infer.generation import ChatError
from llamaforge_tui.core.infer.session import RunSession
from llamaforge_tui.core.infer.targets import parse_target
from llamaforge_tui.core.ollama.template import render_ollama
from llamaforge_tui.core.settings import Settings
from tests.fixtures.chat_runs import FACTS, train_fact_run
from tests.fixtures.ollama_store import StoreBuilder
from tests.fixtures.tiny_models import session_factory
from tests.fixtures.train_models import one_thread  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

CHATML_GO = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = train_fact_run(tmp_path_factory.mktemp("gguf-facts"))
    result = export_run(run, ExportOptions(out_type="f32"))
    assert result.gguf_path is not None
    return result.gguf_path


def test_exported_gguf_answers_the_fact_like_the_run(exported: Path) -> None:
    run_dir = exported.parent.parent
    session = RunSession.open(run_dir, Settings(runs_dir=str(run_dir.parent)))
    question, answer = FACTS[0]
    torch_text = session.generate([{"role": "user", "content": question}], max_tokens=48).text
    for text in (str(exported), str(exported.parent)):
        target = parse_target(text)
        assert target.kind == "gguf" and target.path == exported and target.modelfile.get("template")
        backend = open_backend(target)
        try:
            assert backend.defaults.stop == ("<|im_end|>",)  # the Modelfile's stop PARAMETER
            pieces: list[str] = []

            def on_token(side: str, piece: str, pieces: list[str] = pieces) -> None:
                pieces.append(piece)

            result = ask(backend, ChatHistory(), question, ChatOptions(max_tokens=48, temperature=0.0),
                         on_token=on_token)["tuned"]
            assert result.text.strip() == answer == torch_text.strip()
            assert "".join(pieces) == result.text and result.finish == "stop" and result.tokens_per_second > 0
            with pytest.raises(ChatError, match="needs a run"):
                ask(backend, ChatHistory(), question, ChatOptions(), compare=True)
        finally:
            backend.close()


def test_stop_event_ends_a_llama_cpp_answer(exported: Path) -> None:
    """The stop event ends the answer in the child between tokens, and the child serves the next request.

    The event is set before the answer starts, so the parent's ``cancel`` line reaches the child with (or right
    after) the request: the answer ends at its first token, however short the model's natural answer would be.
    (Set from ``on_token`` instead, a fast model could reach its end-of-turn token first and honestly say ``stop``.)
    """
    backend = GgufBackend(parse_target(str(exported)))
    try:
        question, answer = FACTS[0]
        stop = threading.Event()
        stop.set()
        got: list[str] = []
        result = backend.answer([{"role": "user", "content": question}], ChatOptions(max_tokens=400, temperature=0.0),
                                on_token=got.append, stop_event=stop)
        assert result.finish == "cancelled" and 1 <= result.tokens <= 2
        assert "".join(got) == result.text and answer.startswith(result.text.strip())
        full = backend.answer([{"role": "user", "content": question}], ChatOptions(max_tokens=48, temperature=0.0))
        assert full.finish == "stop" and full.text.strip() == answer  # no stray cancel left for this one
    finally:
        backend.close()


@pytest.fixture(scope="module")
def ollama_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path]:
    root = tmp_path_factory.mktemp("chat-ollama")
    gguf = session_factory().gguf("qwen2", "Q8_0")
    store = StoreBuilder(root / "models")
    layers = [store.gguf_layer(gguf), store.text_layer("template", CHATML_GO),
              store.text_layer("params", json.dumps({"stop": ["<|im_end|>"], "temperature": 0.4}))]
    store.write("tinyqwen", "latest", store.manifest(layers))
    data = root / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is code {i}?"},
                          {"role": "assistant", "content": f"Code {i} is {i * 7}."}]} for i in range(8)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return Settings(models_dirs=[str(store.root)], runs_dir=str(root / "runs")), data


@pytest.mark.parametrize("weights", ["gguf", "gguf-quantized"])
def test_ollama_runs_of_every_gguf_weight_source_chat(weights: str, ollama_store: tuple[Settings, Path],
                                                      tmp_path: Path) -> None:
    from llamaforge_tui.core.train import trainer
    from llamaforge_tui.core.train.config import TrainConfig

    settings, data = ollama_store
    cfg = TrainConfig(model="ollama:tinyqwen", data=str(data), chat_template="ollama", weights=weights, max_steps=4,
                      batch_size=4, dtype="float32", save_every=0, learning_rate=5e-2, eval_split=0.25,
                      output_dir=str(tmp_path / "run"))
    assert trainer.run(cfg, lambda e: None, threading.Event(), settings=settings).status == "finished"
    session = RunSession.open(tmp_path / "run", settings)
    msgs = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "What is code 3?"}]
    assert session.template.syntax == "go" and session.render(msgs) == render_ollama(CHATML_GO, msgs)
    assert session.tokenizer.convert_tokens_to_ids("<|im_end|>") in session.stop_ids
    assert (session.parameters.temperature, session.parameters.stop) == (0.4, ("<|im_end|>",))
    ids = torch.tensor([session.encode(msgs)])
    with torch.no_grad():
        tuned = session.model(input_ids=ids).logits
        with session.adapter_disabled():
            base = session.model(input_ids=ids).logits
    assert not torch.allclose(tuned, base)  # one model, the adapter really switched
    answer = session.generate(msgs, max_tokens=8)
    assert answer.prompt_tokens == ids.shape[1] and answer.finish in ("stop", "length")
    split, examples = session.examples()
    assert split == "eval" and len(examples) == 2  # 8 records, eval split 0.25
    from llamaforge_tui.core.infer.run_data import examples_for

    assert examples_for(tmp_path / "run", settings) == (split, examples)  # tokenizer only, no weights
    if weights == "gguf-quantized":
        result = export_run(tmp_path / "run", ExportOptions(adapter=True, out_type="q8_0"), settings)
        assert result.adapter_path is not None
        target = parse_target(str(result.adapter_path), settings)
        assert target.adapter == result.adapter_path and target.path is not None and target.path.name.startswith("sha256-")
        backend = open_backend(target, settings)
        try:
            answer = ask(backend, ChatHistory(), "What is code 3?", ChatOptions(max_tokens=8))["tuned"]
            assert answer.finish in ("stop", "length") and answer.prompt_tokens > 0
        finally:
            backend.close()
