"""`llamaforge models show|copy|rename|delete|pull|running|unload`, delete planning and show-from-store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.fake_ollama import FakeOllama
from fixtures.ollama_store import StoreInfo, small_store  # noqa: F401

from llamaforge_tui.cli import main
from llamaforge_tui.core.fsutil import human_bytes
from llamaforge_tui.core.ollama.delete_plan import plan_delete
from llamaforge_tui.core.ollama.pull_progress import PullTracker
from llamaforge_tui.core.ollama.client import PullProgress
from llamaforge_tui.core.ollama.store import find_model, scan_store
from llamaforge_tui.core.settings import Settings

NO_SERVER = "error: no Ollama server at http://127.0.0.1:9: start it with `ollama serve` (or point OLLAMA_HOST at a running server)"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        monkeypatch.setenv("OLLAMA_HOST", server.host)
        yield server


def _settings(store: StoreInfo) -> Settings:
    return Settings(models_dirs=[str(store.root)])


def test_delete_plan_frees_only_unshared_blobs(small_store: StoreInfo) -> None:
    settings = _settings(small_store)
    model = find_model(settings, "alice/tiny-chat:v1", summarize=False)
    plan = plan_delete(model, scan_store(settings, summarize=False).roots)
    assert [b.digest for b in plan.freed] == [next(l.digest for l in model.all_layers if l.kind == "model")]
    assert plan.freed_bytes == model.gguf_path.stat().st_size
    kept = {b.digest: b for b in plan.kept}
    template = next(l for l in model.all_layers if l.kind == "template")
    assert template.digest in kept  # llama3.2 (v2), qwen3's child and gpt-oss use the same template blob
    assert any("llama3.2" in user for user in kept[template.digest].used_by)
    # The tiny GGUF blob is shared by several models: deleting one of them frees none of it.
    shared = plan_delete(find_model(settings, "bigmodel:split", summarize=False), [small_store.root])
    assert small_store.tiny_path.stat().st_size not in [b.size_bytes for b in shared.freed]


def test_show_from_the_store_when_no_server(small_store: StoreInfo, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "show", "llama3.2:1b", "--models-dir", str(small_store.root), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["source"] == "store" and "no Ollama server" in doc["note"]
    assert doc["template"] == "{{ .Prompt }} [bold]not markup[/bold]"
    assert doc["system"] == "You are terse."
    assert doc["parameters"].splitlines() == ['stop "<end>"', "temperature 0.2"]
    assert 'SYSTEM """You are terse."""' in doc["modelfile"] and doc["details"]["family"] == "llama"
    assert main(["models", "show", "llama3.2:1b", "--models-dir", str(small_store.root)]) == 0
    assert "from the store's layers (the server is not running)" in capsys.readouterr().out


def test_show_from_the_server(fake: FakeOllama, capsys: pytest.CaptureFixture[str]) -> None:
    fake.add_model("gemma3:270m", template="{{ .Prompt }}", system="Be brief.", license="MIT",
                   parameters={"temperature": 0.7})
    assert main(["models", "show", "gemma3:270m", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) >= {"name", "source", "modelfile", "template", "system", "parameters", "license", "details"}
    assert (doc["source"], doc["system"], doc["license"], doc["parameters"]) == ("server", "Be brief.", "MIT",
                                                                              "temperature 0.7")
    assert main(["models", "show", "ghost"]) == 1
    assert capsys.readouterr().err.strip() == "error: Ollama show ghost: model 'ghost' not found"


def test_copy_rename_delete_through_the_server(fake: FakeOllama, small_store: StoreInfo,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    fake.add_model("alice/tiny-chat:v1")
    assert main(["models", "copy", "alice/tiny-chat:v1", "mine"]) == 0
    assert "mine:latest" in fake.state.models
    assert main(["models", "rename", "mine", "yours:v2", "--yes"]) == 0
    assert "yours:v2" in fake.state.models and "mine:latest" not in fake.state.models
    capsys.readouterr()
    assert main(["models", "delete", "alice/tiny-chat:v1", "--models-dir", str(small_store.root), "--yes"]) == 0
    out = capsys.readouterr().out
    size = find_model(_settings(small_store), "alice/tiny-chat:v1", summarize=False).gguf_path.stat().st_size
    assert f"frees {human_bytes(size)} (1 blob(s) no other model uses)" in out
    assert "keeps sha256:" in out and "shared with" in out
    assert "deleted alice/tiny-chat:v1" in out and "alice/tiny-chat:v1" not in fake.state.models
    assert main(["models", "delete", "yours:v2"]) == 1  # no terminal, no --yes: refuses
    assert "pass --yes" in capsys.readouterr().err and "yours:v2" in fake.state.models


def test_delete_flags_a_model_a_run_came_from(fake: FakeOllama, small_store: StoreInfo, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from llamaforge_tui.core.train.config import TrainConfig

    Settings(runs_dir=str(tmp_path / "runs")).save()
    TrainConfig(model="ollama:alice/tiny-chat:v1", data="d.jsonl").to_file(tmp_path / "runs" / "r7" / "config.toml")
    fake.add_model("alice/tiny-chat:v1")
    assert main(["models", "delete", "alice/tiny-chat:v1", "--models-dir", str(small_store.root), "--yes",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["deleted"] == "alice/tiny-chat:v1" and doc["flagged"] == ["run r7 was trained from it"]
    assert doc["freed_bytes"] > 0 and doc["kept"]


def test_pull_progress_and_error(fake: FakeOllama, capsys: pytest.CaptureFixture[str]) -> None:
    fake.state.registry["qwen2.5:0.5b"] = [("sha256:" + "c" * 64, 3000)]
    fake.state.pull_step = 1000
    assert main(["models", "pull", "qwen2.5:0.5b", "--json"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert lines[-1] == {"status": "success", "digest": None, "total": None, "completed": None}
    assert [l["completed"] for l in lines if l["digest"]] == [0, 1000, 2000, 3000]
    assert main(["models", "pull", "qwen2.5:0.5b"]) == 0
    captured = capsys.readouterr()
    assert "100.0%" in captured.err and "pulled qwen2.5:0.5b" in captured.out
    assert main(["models", "pull", "nope:1b"]) == 1
    assert capsys.readouterr().err.strip().endswith(
        "error: Ollama pull nope:1b: pull model manifest: file does not exist")


def test_running_and_unload(fake: FakeOllama, capsys: pytest.CaptureFixture[str]) -> None:
    fake.add_model("llama3.2:1b", size=2_000_000_000, running=True)
    assert main(["models", "running", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"name": "llama3.2:1b", "size_bytes": 2_000_000_000,
                                                    "vram_bytes": 1_000_000_000,
                                                    "expires_at": "2026-12-01T10:05:00+00:00"}]
    assert main(["models", "running"]) == 0
    assert "llama3.2:1b" in capsys.readouterr().out
    assert main(["models", "unload", "llama3.2:1b"]) == 0
    assert fake.state.running == {}


@pytest.mark.parametrize("args", [["running"], ["pull", "x"], ["copy", "a", "b"], ["delete", "x", "--yes"],
                                  ["rename", "a", "b", "--yes"], ["unload", "x"]])
def test_no_server_exits_1_with_one_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", *args]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [NO_SERVER]


def test_pull_tracker_speed_and_eta() -> None:
    tracker = PullTracker("m")
    digest = "sha256:" + "d" * 64
    tracker.update(PullProgress("pulling", digest, 1000, 0), now=0.0)
    layer = tracker.update(PullProgress("pulling", digest, 1000, 200), now=1.0)
    assert layer.speed == 200.0 and layer.eta_seconds == 4.0 and layer.fraction == 0.2
    tracker.update(PullProgress("success"), now=2.0)
    assert tracker.finished and tracker.total_bytes == 1000


def test_pull_tracker_never_raises_and_stays_in_bounds() -> None:
    """Whatever lines a server sends (sizes growing, shrinking, missing; several layers interleaved; time not
    moving), the tracker never raises and its figures stay sane."""
    from hypothesis import given, settings as hsettings, strategies as st

    digests = st.sampled_from(["sha256:" + c * 64 for c in "abc"])
    line = st.builds(PullProgress, st.sampled_from(["pulling", "verifying sha256 digest", "success"]),
                     st.one_of(st.none(), digests), st.one_of(st.none(), st.integers(0, 10**12)),
                     st.one_of(st.none(), st.integers(0, 10**12)))

    @hsettings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(line, st.floats(0, 1e6, allow_nan=False)), max_size=40))
    def check(lines: list[tuple[PullProgress, float]]) -> None:
        tracker = PullTracker("m")
        for progress, now in sorted(lines, key=lambda x: x[1]):
            tracker.update(progress, now=now)
        for layer in tracker.layers.values():
            assert 0.0 <= layer.fraction <= 1.0
            eta = layer.eta_seconds
            assert eta is None or eta >= 0.0
        assert tracker.completed_bytes >= 0 and tracker.total_bytes >= 0
        assert tracker.finished == any(p.status == "success" for p, _ in lines)

    check()
