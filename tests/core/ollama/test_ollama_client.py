"""The adapter over the official ``ollama`` client, against the fake server: every endpoint, its errors, and no server."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from fixtures.fake_ollama import FakeOllama
from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.ollama.client import OllamaServer, OllamaServerError, OllamaUnavailable

LAYER_A = "sha256:" + "a" * 64
LAYER_B = "sha256:" + "b" * 64


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        server.add_model("gemma3:270m", template="{{ .Prompt }}", system="Be brief.", license="MIT",
                         parameters={"stop": ["<end_of_turn>"], "temperature": 0.7})
        yield server


def test_show_returns_every_fact_and_reads_system_from_the_modelfile(fake: FakeOllama) -> None:
    info = OllamaServer(fake.host).show("gemma3:270m")
    assert info["template"] == "{{ .Prompt }}"
    assert info["system"] == "Be brief."  # the client's response type drops `system`; it comes from the Modelfile
    assert info["license"] == "MIT"
    assert 'stop "<end_of_turn>"' in info["parameters"] and "temperature 0.7" in info["parameters"]
    assert info["modelfile"].startswith("FROM ")
    assert info["details"]["quantization_level"] == "Q8_0"
    assert ("POST", "/api/show") in fake.state.requests


def test_show_unknown_model_carries_the_servers_message(fake: FakeOllama) -> None:
    with pytest.raises(OllamaServerError, match="model 'nope' not found"):
        OllamaServer(fake.host).show("nope")


def test_copy_then_delete(fake: FakeOllama) -> None:
    server = OllamaServer(fake.host)
    server.copy("gemma3:270m", "mine:v1")
    assert "mine:v1" in server.tags()
    assert server.show("mine:v1")["system"] == "Be brief."
    server.delete("mine:v1")
    assert server.tags() == ["gemma3:270m"]
    assert ("DELETE", "/api/delete") in fake.state.requests


def test_copy_missing_source_and_delete_missing_model_fail_clearly(fake: FakeOllama) -> None:
    server = OllamaServer(fake.host)
    with pytest.raises(OllamaServerError, match=r"copy ghost -> x: model 'ghost' not found"):
        server.copy("ghost", "x")
    with pytest.raises(OllamaServerError, match="delete ghost: model 'ghost' not found"):
        server.delete("ghost")


def test_pull_streams_per_layer_progress_and_ends_in_success(fake: FakeOllama) -> None:
    fake.state.registry["qwen2.5:0.5b"] = [(LAYER_A, 2500), (LAYER_B, 10)]
    fake.state.pull_step = 1000
    lines = list(OllamaServer(fake.host).pull("qwen2.5:0.5b"))
    assert lines[0].status == "pulling manifest"
    a = [p for p in lines if p.digest == LAYER_A]
    assert [p.completed for p in a] == [0, 1000, 2000, 2500] and all(p.total == 2500 for p in a)
    assert [p.completed for p in lines if p.digest == LAYER_B] == [0, 10]
    assert lines[-1].to_dict() == {"status": "success", "digest": None, "total": None, "completed": None}
    assert "qwen2.5:0.5b" in OllamaServer(fake.host).tags()


def test_pull_error_line_becomes_one_error(fake: FakeOllama) -> None:
    seen = []
    with pytest.raises(OllamaServerError) as info:
        for line in OllamaServer(fake.host).pull("no-such-model"):
            seen.append(line.status)
    assert str(info.value) == "Ollama pull no-such-model: pull model manifest: file does not exist"
    assert seen == ["pulling manifest"]


def test_pull_stops_when_the_stop_event_is_set(fake: FakeOllama) -> None:
    fake.state.registry["big:latest"] = [(LAYER_A, 10_000)]
    fake.state.pull_step = 10
    stop = threading.Event()
    seen = 0
    for _ in OllamaServer(fake.host).pull("big", stop):
        seen += 1
        if seen == 3:
            stop.set()
    assert seen == 3
    assert "big:latest" not in fake.state.models  # the pull never finished


def test_ps_and_unload(fake: FakeOllama) -> None:
    fake.add_model("llama3.2:1b", size=1_000_000, running=True)
    server = OllamaServer(fake.host)
    running = server.ps()
    assert [m.to_dict() for m in running] == [{"name": "llama3.2:1b", "size_bytes": 1_000_000,
                                               "vram_bytes": 500_000, "expires_at": "2026-12-01T10:05:00+00:00"}]
    server.unload("llama3.2:1b")
    assert server.ps() == []
    assert fake.state.chat_bodies[-1]["keep_alive"] == 0 and fake.state.chat_bodies[-1]["messages"] == []


def test_chat_stream_yields_pieces_then_the_stats(fake: FakeOllama) -> None:
    fake.state.chat_reply = lambda body: "echo: " + body["messages"][-1]["content"]
    chunks = list(OllamaServer(fake.host).chat_stream("gemma3:270m", [{"role": "user", "content": "hi there"}],
                                                      {"temperature": 0, "seed": 1}))
    assert "".join(c.content for c in chunks) == "echo: hi there"
    last = chunks[-1]
    assert last.done and last.done_reason == "stop"
    assert last.eval_count == 3 and last.eval_duration == 30_000_000
    assert last.tokens_per_second == pytest.approx(100.0)
    assert not any(c.done for c in chunks[:-1])
    assert fake.state.chat_bodies[-1]["options"] == {"temperature": 0, "seed": 1}
    assert [m.name for m in OllamaServer(fake.host).ps()] == ["gemma3:270m"]  # chatting loaded it


def test_chat_stream_stop_event_ends_early(fake: FakeOllama) -> None:
    fake.state.chat_reply = " ".join(f"w{i}" for i in range(200))
    stop = threading.Event()
    got = []
    for chunk in OllamaServer(fake.host).chat_stream("gemma3:270m", [{"role": "user", "content": "go"}], None, stop):
        got.append(chunk)
        if len(got) == 5:
            stop.set()
    assert len(got) == 5 and not got[-1].done


def test_chat_unknown_model(fake: FakeOllama) -> None:
    with pytest.raises(OllamaServerError, match='model "ghost" not found, try pulling it first'):
        list(OllamaServer(fake.host).chat_stream("ghost", [{"role": "user", "content": "x"}]))


@pytest.mark.parametrize("call", [
    lambda s: s.show("x"), lambda s: s.copy("a", "b"), lambda s: s.delete("x"), lambda s: s.ps(),
    lambda s: s.unload("x"), lambda s: list(s.pull("x")),
    lambda s: list(s.chat_stream("x", [{"role": "user", "content": "hi"}])),
])
def test_no_server_is_one_specific_error_saying_how_to_start_one(call) -> None:
    server = OllamaServer("http://127.0.0.1:9", timeout=2)
    with pytest.raises(OllamaUnavailable) as info:
        call(server)
    assert isinstance(info.value, LlamaForgeError)
    assert str(info.value) == ("no Ollama server at http://127.0.0.1:9: start it with `ollama serve` "
                               "(or point OLLAMA_HOST at a running server)")


def test_host_comes_from_ollama_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:12345")
    assert OllamaServer().host == "http://127.0.0.1:12345"
