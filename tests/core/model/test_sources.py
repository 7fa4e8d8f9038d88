"""Model sources: parsing, resolving (Ollama store, GGUF path, HF folder, HF cache), descriptions."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.ollama_store import StoreBuilder
from fixtures.tiny_models import session_factory
from llamaforge_tui.core.errors import LlamaForgeError, SourceError
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.core.model.sources import (
    SourceDescription,
    SourceSpec,
    blob_digest,
    parse_source,
    resolve_source,
)


@pytest.mark.parametrize(
    ("text", "kind", "name", "repo", "rev"),
    [
        ("ollama:gemma3:270m", "ollama", "gemma3:270m", None, None),
        ("ollama:qwen2.5", "ollama", "qwen2.5:latest", None, None),
        ("ollama:user/model:tag", "ollama", "user/model:tag", None, None),
        ("ollama:hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q8_0", "ollama",
         "hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q8_0", None, None),
        ("hf:Qwen/Qwen2.5-0.5B", "hf", None, "Qwen/Qwen2.5-0.5B", None),
        ("hf:google/gemma-3-270m@abc123", "hf", None, "google/gemma-3-270m", "abc123"),
    ],
)
def test_parse_prefixed_sources(text: str, kind: str, name: str | None, repo: str | None, rev: str | None) -> None:
    spec = parse_source(text)
    assert (spec.kind, spec.name, spec.repo, spec.revision) == (kind, name, repo, rev)
    assert spec.text == text


def test_parse_paths(tmp_path: Path) -> None:
    blob = tmp_path / ("sha256-" + "a" * 64)
    blob.write_bytes(b"GGUF" + b"\0" * 60)  # an Ollama blob: no extension, recognised by its magic
    assert parse_source(str(blob)) == SourceSpec(str(blob), "gguf", path=blob)
    named = tmp_path / "m.gguf"
    named.write_bytes(b"GGUF")
    assert parse_source(str(named)).kind == "gguf"
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert parse_source(str(folder)) == SourceSpec(str(folder), "hf_dir", path=folder)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty model source"),
        ("   ", "empty model source"),
        ("hf:notarepo", "invalid Hugging Face repo"),
        ("hf:a/b@", "empty revision"),
        ("hf:../etc/passwd", "invalid Hugging Face repo"),
        ("ollama:", "invalid Ollama model name"),
        ("ollama:bad name", "invalid Ollama model name"),
        ("Qwen/Qwen2.5-0.5B", "write hf:Qwen/Qwen2.5-0.5B"),
        ("gemma3:270m", "write ollama:gemma3:270m"),
        ("/no/such/file.gguf", "GGUF file not found"),
    ],
)
def test_parse_errors_are_specific(text: str, message: str) -> None:
    with pytest.raises(SourceError, match=message.replace("(", r"\(").replace("?", r"\?")):
        parse_source(text)


def test_parse_rejects_non_model_files(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(SourceError, match="neither a GGUF file"):
        parse_source(str(junk))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="without config.json"):
        parse_source(str(empty))


def test_resolve_gguf_and_hf_dir() -> None:
    factory = session_factory()
    gguf = factory.gguf("llama", "F32")
    resolved = resolve_source(str(gguf), Settings(), "gguf")
    assert resolved.gguf_path == gguf and resolved.uses_gguf and resolved.model_dir is None
    hf_dir = factory.hf_dir("llama")
    resolved = resolve_source(str(hf_dir), Settings(), "gguf")  # HF folders always load HF weights
    assert resolved.weights == "hf" and resolved.model_dir == hf_dir
    with pytest.raises(SourceError, match="needs a GGUF source"):
        resolve_source(str(hf_dir), Settings(), "gguf-quantized")
    with pytest.raises(SourceError, match="does not name its Hugging Face base"):
        resolve_source(str(gguf), Settings(), "hf")
    with pytest.raises(SourceError, match="unknown weights"):
        resolve_source(str(gguf), Settings(), "fp8")


def test_resolve_ollama_model_from_store(tmp_path: Path) -> None:
    gguf = session_factory().gguf("qwen2", "Q8_0")
    root = tmp_path / "models"
    store = StoreBuilder(root)
    layers = [store.gguf_layer(gguf), store.text_layer("template", "{{ .Prompt }}")]
    store.write("tinyqwen", "q8", store.manifest(layers))
    settings = Settings(models_dirs=[str(root)])
    resolved = resolve_source("ollama:tinyqwen:q8", settings, "gguf")
    assert resolved.gguf_path is not None and resolved.gguf_path.read_bytes()[:4] == b"GGUF"
    assert resolved.gguf_path.name.startswith("sha256-") and resolved.ollama_model is not None
    assert resolved.ollama_template == "{{ .Prompt }}"
    assert blob_digest(resolved.gguf_path) == resolved.gguf_path.name.removeprefix("sha256-")
    with pytest.raises(LlamaForgeError, match="not found"):
        resolve_source("ollama:absent:latest", settings, "gguf")


def test_resolve_hf_repo_uses_cache_offline(tmp_path: Path) -> None:
    """An hf: source already in the cache resolves without the network (HF_HUB_OFFLINE is set in tests)."""
    hf_dir = session_factory().hf_dir("qwen3")
    cache = tmp_path / "hub"
    snap = _cache_with(hf_dir, cache, "org/tiny")
    settings = Settings(hf_cache_dir=str(cache))
    resolved = resolve_source("hf:org/tiny", settings, "gguf")
    assert resolved.weights == "hf" and resolved.model_dir == snap and resolved.hf_repo == "org/tiny"
    with pytest.raises(LlamaForgeError, match="HF_HUB_OFFLINE"):
        resolve_source("hf:org/missing", settings, "hf")


def test_description_round_trip() -> None:
    desc = SourceDescription(source="x.gguf", kind="gguf", weights="gguf", architecture="llama", dtype="float32",
                             device="cpu", gguf_path="/x.gguf", parameter_count=7)
    data = desc.to_dict()
    assert data["gguf_path"] == "/x.gguf" and data["parameter_count"] == 7
    assert SourceDescription.from_dict({**data, "future_key": 1}) == desc


def _cache_with(hf_dir: Path, cache: Path, repo: str) -> Path:
    """A hub cache holding ``hf_dir`` as ``repo`` at main (what a finished download leaves)."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / ("c" * 40)
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("c" * 40)
    for f in hf_dir.iterdir():
        (snap / f.name).symlink_to(f)
    return snap


def test_ollama_model_with_hf_weights_uses_the_mapped_base(tmp_path: Path) -> None:
    from llamaforge_tui.core.model.loading import load_model

    factory = session_factory()
    gguf = factory.gguf("qwen3", "Q4_K_M")
    store = StoreBuilder(tmp_path / "models")
    store.write("tinyqwen", "q4", store.manifest([store.gguf_layer(gguf)]))
    snap = _cache_with(factory.hf_dir("qwen3"), tmp_path / "hub", "org/tiny-qwen3")
    settings = Settings(models_dirs=[str(tmp_path / "models")], hf_cache_dir=str(tmp_path / "hub"),
                        base_model_overrides={"tinyqwen:q4": "org/tiny-qwen3"})
    resolved = resolve_source("ollama:tinyqwen:q4", settings, "hf")
    assert resolved.model_dir == snap and resolved.hf_repo == "org/tiny-qwen3" and resolved.gguf_path is not None
    loaded = load_model("ollama:tinyqwen:q4", settings, weights="hf", dtype="float32", device="cpu")
    desc = loaded.description
    assert (desc.weights, desc.kind, desc.hf_repo, desc.ollama_model) == ("hf", "ollama", "org/tiny-qwen3", "tinyqwen:q4")
    assert desc.architecture == "qwen3" and desc.template_origin == "hf"
    # the GGUF stays recorded: export can still copy its metadata
    assert desc.gguf_path == str(resolved.gguf_path)
    with pytest.raises(SourceError, match="no Hugging Face base model is known"):
        resolve_source("ollama:tinyqwen:q4", Settings(models_dirs=[str(tmp_path / "models")],
                                                      base_model_overrides={"tinyqwen:q4": "none"}), "hf")


def test_hf_source_downloads_once_through_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """hf:ORG/NAME not in the cache: fetched through hf_cache.download_repo (config, tokenizer, safetensors only),
    then loaded; the second resolve finds it in the cache without asking the hub."""
    from fixtures.fake_hub import FakeHub, FakeRepo, go_online
    from llamaforge_tui.core.model.loading import load_model

    hf_dir = session_factory().hf_dir("llama")
    files = {f.name: f.read_bytes() for f in hf_dir.iterdir() if f.is_file()}
    files["pytorch_model.bin"] = b"never fetched"
    settings = Settings(hf_cache_dir=str(tmp_path / "hub"))
    with FakeHub() as server:
        server.add(FakeRepo("acme/tiny-llama", files))
        go_online(monkeypatch, server)
        loaded = load_model("hf:acme/tiny-llama", settings, dtype="float32", device="cpu")
        assert loaded.description.hf_repo == "acme/tiny-llama" and loaded.description.weights == "hf"
        snapshot = Path(loaded.description.model_dir or "")
        assert (snapshot / "model.safetensors").exists() and not (snapshot / "pytorch_model.bin").exists()
    again = resolve_source("hf:acme/tiny-llama", settings, "hf", download=False)  # server stopped: cache only
    assert again.model_dir == snapshot
