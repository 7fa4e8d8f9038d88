"""`llamaforge chat` and the chat backends: a tiny run trained on made-up facts answers them with the adapter on and
not with it off (--compare, temperature 0, one model), the REPL is multi-turn over plain stdin, the Ollama backend
streams the fake server's /api/chat, targets resolve (run id, export folder, .gguf, ollama:NAME) with clear errors,
and transcripts append as chat JSONL the dataset reader accepts."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from fixtures.fake_ollama import FakeOllama  # noqa: E402

from llamaforge_tui import cli  # noqa: E402
from llamaforge_tui.core.infer.chat import (  # noqa: E402
    ChatHistory,
    ChatOptions,
    ChatTurn,
    OllamaBackend,
    ask,
    save_transcript,
)
from llamaforge_tui.core.infer.generation import ChatError, Generation  # noqa: E402
from llamaforge_tui.core.infer.targets import ChatTarget, list_targets, parse_target  # noqa: E402
from llamaforge_tui.core.settings import Settings  # noqa: E402
from tests.fixtures.chat_runs import FACTS, train_fact_run  # noqa: E402
from tests.fixtures.train_models import one_thread  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fact_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_fact_run(tmp_path_factory.mktemp("chat-facts"))


def test_compare_json_tuned_holds_the_fact_and_base_does_not(fact_run: Path, capsys: pytest.CaptureFixture) -> None:
    question, answer = FACTS[1]
    rc = cli.main(["chat", str(fact_run), "--compare", "--prompt", question, "--temperature", "0", "--json",
                   "--max-tokens", "48"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert (out["target"], out["backend"], out["prompt"]) == (str(fact_run), "transformers", question)
    assert set(out["results"]) == {"tuned", "base"}
    assert out["results"]["tuned"]["text"].strip() == answer
    assert "teal" not in out["results"]["base"]["text"]
    for side in ("tuned", "base"):
        assert out["results"][side]["tokens"] > 0 and out["results"][side]["tokens_per_second"] > 0


def test_plain_output_streams_under_labelled_headers(fact_run: Path, capsys: pytest.CaptureFixture) -> None:
    rc = cli.main(["chat", str(fact_run), "--prompt", FACTS[2][0], "--max-tokens", "48"])
    out = capsys.readouterr().out
    assert rc == 0 and "--- tuned: tiny-facts (adapter on) ---" in out and FACTS[2][1] in out
    assert "tokens/s" in out and "base" not in out


def test_repl_is_multi_turn_and_clears(fact_run: Path, capsys: pytest.CaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [FACTS[0][0], "/system Answer briefly.", FACTS[2][0], "/clear", "/system", "/help", FACTS[1][0], "/quit",
             "never"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    seen: list[list[dict[str, str]]] = []
    from llamaforge_tui.core.infer import chat as chat_mod

    real = chat_mod.RunBackend.answer

    def spy(self, messages, options, **kw):  # noqa: ANN001, ANN202
        seen.append(list(messages))
        return real(self, messages, options, **kw)

    monkeypatch.setattr(chat_mod.RunBackend, "answer", spy)
    assert cli.main(["chat", str(fact_run), "--max-tokens", "48"]) == 0
    out = capsys.readouterr().out
    assert FACTS[0][1] in out and FACTS[1][1] in out and "(new conversation)" in out and "never" not in out
    assert len(seen) == 3
    assert seen[1][0] == {"role": "system", "content": "Answer briefly."}
    assert [m["role"] for m in seen[1]] == ["system", "user", "assistant", "user"]  # turn 2 sees turn 1
    assert seen[2] == [{"role": "user", "content": FACTS[1][0]}]  # after /clear and /system (cleared)


def test_errors_are_one_line_and_exit_1(fact_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["chat", str(tmp_path / "nope"), "--prompt", "hi"]) == 1
    assert "no run at" in capsys.readouterr().err
    assert cli.main(["chat", "ollama:gemma3:270m", "--compare", "--prompt", "hi"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --compare needs a run") and err.count("\n") == 1
    assert cli.main(["chat", "ollama:gemma3:270m", "--prompt", "hi"]) == 1  # nothing listens at OLLAMA_HOST
    assert "no Ollama server" in capsys.readouterr().err
    assert cli.main(["chat", str(fact_run), "--prompt", "hi", "--top-p", "1.5"]) == 1
    assert "top-p" in capsys.readouterr().err


def test_ollama_backend_streams_api_chat_with_parameters_as_defaults() -> None:
    with FakeOllama() as fake:
        fake.add_model("gemma3:270m", system="You are terse.", parameters={"temperature": 0.2, "stop": ["<end_of_turn>"]})
        fake.state.chat_reply = lambda body: f"You said {body['messages'][-1]['content']} and I agree"
        from llamaforge_tui.core.ollama.client import OllamaServer

        backend = OllamaBackend(parse_target("ollama:gemma3:270m"), server=OllamaServer(fake.host))
        assert (backend.defaults.temperature, backend.defaults.system) == (0.2, "You are terse.")
        assert backend.defaults.stop == ("<end_of_turn>",)
        pieces: list[tuple[str, str]] = []
        history = ChatHistory()
        options = ChatOptions.from_defaults(backend.defaults)
        first = ask(backend, history, "hello", options, on_token=lambda side, t: pieces.append((side, t)))
        assert first["tuned"].text == "You said hello and I agree"
        assert len(pieces) > 3 and all(side == "tuned" for side, _ in pieces)
        assert first["tuned"].tokens == len(pieces) and first["tuned"].tokens_per_second == pytest.approx(100, rel=0.01)
        ask(backend, history, "more", options)
        body = fake.state.chat_bodies[-1]
        assert body["messages"][0] == {"role": "system", "content": "You are terse."}
        assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
        assert body["options"]["temperature"] == 0.2 and body["options"]["num_predict"] == 256
        with pytest.raises(ChatError, match="needs a run"):
            ask(backend, history, "x", options, compare=True)


def test_ollama_stop_event_closes_the_stream() -> None:
    with FakeOllama() as fake:
        fake.add_model("m:latest")
        fake.state.chat_reply = " ".join(f"w{i}" for i in range(200))
        fake.state.line_delay = 0.01
        from llamaforge_tui.core.ollama.client import OllamaServer

        backend = OllamaBackend(parse_target("ollama:m"), server=OllamaServer(fake.host))
        stop = threading.Event()
        got: list[str] = []

        def on_token(side: str, text: str) -> None:
            got.append(text)
            if len(got) == 3:
                stop.set()

        result = ask(backend, ChatHistory(), "go", ChatOptions(), on_token=on_token, stop_event=stop)["tuned"]
        assert result.finish == "cancelled" and len(got) < 10


def test_targets_resolve_and_list(fact_run: Path, tmp_path: Path) -> None:
    settings = Settings(runs_dir=str(fact_run.parent))
    run = parse_target("tiny-facts", settings)
    assert (run.kind, run.path, run.can_compare) == ("run", fact_run.resolve(), True)
    assert parse_target("ollama:qwen2.5:3b").name == "qwen2.5:3b"
    with pytest.raises(ChatError, match="model name"):
        parse_target("ollama:")
    fake = tmp_path / "x.gguf"
    fake.write_bytes(b"not a gguf")
    with pytest.raises(ChatError, match="not a readable GGUF"):
        parse_target(str(fake))
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "Modelfile").write_text("FROM ./missing.gguf\n")
    with pytest.raises(ChatError, match="does not exist"):
        parse_target(str(folder))
    listed = list_targets(settings)
    assert [t.label for t in listed if t.kind == "run"] == ["tiny-facts"]


def test_transcript_appends_chat_records_the_dataset_reader_accepts(tmp_path: Path) -> None:
    from llamaforge_tui.core.data.dataset import load_dataset

    history = ChatHistory()
    with pytest.raises(ChatError, match="nothing to save"):
        save_transcript(tmp_path / "t.jsonl", history)
    g = Generation("Paris.", 2, 0.1)
    history.turns.append(ChatTurn("Capital of France?", {"tuned": g, "base": Generation("Uh", 1, 0.1)}))
    path = tmp_path / "t.jsonl"
    save_transcript(path, history, system="Be brief.")
    save_transcript(path, history, side="base")
    loaded = load_dataset(path)
    assert loaded.format == "chat" and loaded.valid == 2
    first, second = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
    assert first["messages"] == [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Capital of France?"},
                                 {"role": "assistant", "content": "Paris."}]
    assert second["messages"][-1] == {"role": "assistant", "content": "Uh"}


def test_gguf_target_without_llama_cpp_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from llamaforge_tui.core.export import llama_runner
    from llamaforge_tui.core.infer.chat import GgufBackend

    monkeypatch.setattr(llama_runner, "llama_cpp_installed", lambda: False)
    target = ChatTarget("gguf", "x.gguf", "x.gguf", path=Path("x.gguf"), modelfile={"template": "{{ .Prompt }}"})
    with pytest.raises(llama_runner.ExportError, match="llama"):
        GgufBackend(target)
