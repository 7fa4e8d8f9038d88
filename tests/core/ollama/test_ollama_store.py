"""The Ollama store scan: both layouts, every status, hostile input, unreadable roots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fixtures.ollama_store import EXPECTED_BASE, StoreBuilder, StoreInfo, small_store  # noqa: F401

from llamaforge_tui.core.ollama import store as ollama
from llamaforge_tui.core.errors import StoreError
from llamaforge_tui.core.model.basemodel import find_ollama_model as find_model
from llamaforge_tui.core.model.basemodel import scan_models as scan_store
from llamaforge_tui.core.ollama.store import parse_model_name
from llamaforge_tui.core.ollama.manifest import ManifestError, blob_name, layer_kind
from llamaforge_tui.core.settings import Settings


def _settings(root: Path) -> Settings:
    return Settings(models_dirs=[str(root)])


def _by_name(scan: ollama.StoreScan) -> dict[str, ollama.OllamaModel]:
    return {m.full_name: m for m in scan.models}


def test_every_fixture_model_is_listed_with_its_status(small_store: StoreInfo) -> None:
    scan = scan_store(_settings(small_store.root))
    assert scan.problems == []
    assert scan.roots == [small_store.root]
    assert {m.full_name: m.status for m in scan.models} == EXPECTED_BASE
    for model in scan.models:
        assert (model.reason == "") == (model.status == "ok"), model.full_name


def test_v2_entry_wins_and_layers_are_classified(small_store: StoreInfo) -> None:
    models = _by_name(scan_store(_settings(small_store.root)))
    llama = models["llama3.2:1b"]
    assert llama.layout == "manifests-v2"
    assert llama.registry == "ollama.com"
    assert set(llama.layers) == {"model", "template", "params", "system"}  # not the legacy one's "license"
    assert llama.gguf_path is not None and llama.gguf_path.parent == small_store.root / "blobs"
    assert llama.size_bytes == small_store.tiny_path.stat().st_size
    assert llama.summary is not None and llama.summary.architecture == "llama"
    assert llama.summary.quantization == "Q8_0"
    assert llama.read_layer_text("system") == "You are terse."
    assert llama.read_layer_text("template") == "{{ .Prompt }} [bold]not markup[/bold]"
    assert llama.params() == {"stop": ["<end>"], "temperature": 0.2}
    assert llama.read_layer_text("license") is None


def test_manifest_list_picks_the_gguf_child(small_store: StoreInfo) -> None:
    qwen = _by_name(scan_store(_settings(small_store.root)))["qwen3:0.6b"]
    assert qwen.status == "ok"
    assert qwen.summary is not None and qwen.summary.architecture == "qwen3"
    assert "template" in qwen.layers


def test_names_namespaces_and_hosts(small_store: StoreInfo) -> None:
    models = _by_name(scan_store(_settings(small_store.root)))
    alice = models["alice/tiny-chat:v1"]
    assert (alice.registry, alice.namespace, alice.name, alice.tag) == ("registry.ollama.ai", "alice", "tiny-chat", "v1")
    hf = models["hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q8_0"]
    assert hf.registry == "hf.co" and hf.status == "ok"
    assert models["localhost:5000/team/coder:1.0"].registry == "localhost:5000"


def test_unusable_models_say_why(small_store: StoreInfo) -> None:
    models = _by_name(scan_store(_settings(small_store.root)))
    assert "remotely" in models["gpt-oss:120b-cloud"].reason
    assert models["gpt-oss:120b-cloud"].gguf_path is None
    assert "3 tensor layers" in models["mlx-model:latest"].reason
    assert "split into 2 parts" in models["bigmodel:split"].reason
    assert "missing" in models["ghost:latest"].reason and "sha256-abab" in models["ghost:latest"].reason
    assert "not valid JSON" in models["corrupt:latest"].reason
    assert str(models["corrupt:latest"].manifest_path) in models["corrupt:latest"].reason
    assert "schemaVersion" in models["wrongschema:latest"].reason
    assert models["truncated:latest"].reason.startswith("GGUF:")
    assert "no model (GGUF) layer" in models["draftonly:latest"].reason


def test_hostile_digest_never_becomes_a_path(small_store: StoreInfo) -> None:
    evil = _by_name(scan_store(_settings(small_store.root)))["evil:latest"]
    assert evil.status == "broken" and "invalid blob digest" in evil.reason
    assert evil.gguf_path is None and evil.layers == {}
    for bad in ("sha256:../../etc/passwd", "sha256-" + "a" * 63, "sha256:" + "g" * 64, "md5:" + "a" * 64,
                "sha256:" + "a" * 64 + "/x", "sha256:" + "a" * 64 + "\n", None, 7):
        with pytest.raises(ManifestError):
            blob_name(bad)  # type: ignore[arg-type]
    assert blob_name("sha256:" + "AB" * 32) == "sha256-" + "ab" * 32


def test_split_gguf_by_metadata(tmp_path: Path) -> None:
    from fixtures.gguf_factory import TinySpec, write_gguf
    from gguf import GGMLQuantizationType as Q

    part = write_gguf(tmp_path / "part1.gguf", "llama", spec=TinySpec(n_layers=1, n_embd=64, n_ff=128, vocab_size=16),
                      weight_type=Q.F16, kv={"split.no": 0, "split.count": 3, "split.tensors.count": 10})
    b = StoreBuilder(tmp_path / "root")
    b.write("parts", "latest", b.manifest([b.gguf_layer(part)]))
    model = scan_store(_settings(b.root)).models[0]
    assert model.status == "split" and "3 files" in model.reason


def test_unsupported_gguf_version(tmp_path: Path) -> None:
    import struct

    b = StoreBuilder(tmp_path / "root")
    data = b"GGUF" + struct.pack("<IQQ", 4, 0, 0) + b"\0" * 16
    b.write("future", "latest", b.manifest([b.layer("model", b.blob(data), len(data))]))
    model = scan_store(_settings(b.root)).models[0]
    assert model.status == "unsupported" and "unsupported GGUF version 4" in model.reason


def test_layer_kinds() -> None:
    assert layer_kind("application/vnd.ollama.image.model") == "model"
    assert layer_kind("application/vnd.ollama.image.prompt") == "template"  # older name
    assert layer_kind("application/vnd.ollama.image.projector") == "projector"
    assert layer_kind("application/vnd.ollama.image.adapter") == "adapter"
    assert layer_kind("application/vnd.ollama.image.messages") == "messages"
    assert layer_kind("application/vnd.ollama.image.tensor") == "tensor"
    assert layer_kind("application/x-something") == "other"


def test_default_roots_order_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "env-models"))
    roots = ollama.default_roots(Settings())
    assert roots == [tmp_path / "env-models", Path.home() / ".ollama" / "models",
                     Path("/usr/share/ollama/.ollama/models")]
    assert ollama.default_roots(Settings(models_dirs=[str(tmp_path / "x")])) == [tmp_path / "x"]


def test_all_existing_roots_are_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, small_store: StoreInfo) -> None:
    other = StoreBuilder(Path.home() / ".ollama" / "models")
    other.write("mine", "latest", other.manifest([other.text_layer("template", "t")]))
    monkeypatch.setenv("OLLAMA_MODELS", str(small_store.root))
    scan = scan_store(Settings(), summarize=False)
    names = {m.full_name for m in scan.models}
    assert "mine:latest" in names and "gemma3:270m" not in names and "llama3.2:1b" in names
    assert scan.roots[:2] == [small_store.root, other.root]


def test_no_store_at_all_is_reported(tmp_path: Path) -> None:
    scan = scan_store(Settings(), summarize=False)  # HOME is a fresh temp dir; no OLLAMA_MODELS
    if Path("/usr/share/ollama/.ollama/models").exists():
        pytest.skip("this machine has a system Ollama store")
    assert scan.models == [] and "no Ollama models folder found" in scan.problems[0]
    missing = scan_store(_settings(tmp_path / "nope"))
    assert missing.problems == [f"models folder {tmp_path / 'nope'} does not exist"]


def test_unreadable_root_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch, small_store: StoreInfo,
                                               tmp_path: Path) -> None:
    locked = tmp_path / "locked-root"
    (locked / "manifests").mkdir(parents=True)
    real_stat = os.stat

    def fake_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if Path(str(path)) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ollama.os, "stat", fake_stat)
    scan = scan_store(Settings(models_dirs=[str(locked), str(small_store.root)]), summarize=False)
    assert scan.problems == [f"cannot read {locked}: permission denied: add yourself to the ollama group, "
                             "or set OLLAMA_MODELS"]
    assert len(scan.models) == len(EXPECTED_BASE)


def test_unreadable_subfolder_is_reported(monkeypatch: pytest.MonkeyPatch, small_store: StoreInfo) -> None:
    real_scandir = os.scandir
    target = small_store.root / "manifests" / "registry.ollama.ai" / "alice"

    def fake_scandir(path: object) -> object:
        if Path(str(path)) == target:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(ollama.os, "scandir", fake_scandir)
    scan = scan_store(_settings(small_store.root), summarize=False)
    assert any(str(target) in p and "permission denied" in p for p in scan.problems)
    assert "alice/tiny-chat:v1" not in {m.full_name for m in scan.models}
    assert "llama3.2:1b" in {m.full_name for m in scan.models}


def test_oversized_manifest_is_broken_without_reading_it_all(tmp_path: Path) -> None:
    b = StoreBuilder(tmp_path / "root")
    path = b.manifest_path("huge", "latest")
    path.parent.mkdir(parents=True)
    with path.open("wb") as fh:
        fh.truncate(64 * 1024 * 1024)  # sparse: no disk used
    model = scan_store(_settings(b.root)).models[0]
    assert model.status == "broken" and "larger than" in model.reason


def test_dangling_v2_symlink_is_broken(tmp_path: Path) -> None:
    b = StoreBuilder(tmp_path / "root")
    path = b.manifest_path("dangling", "latest", layout="manifests-v2")
    path.parent.mkdir(parents=True)
    os.symlink(b.root / "blobs" / ("sha256-" + "cd" * 32), path)
    model = scan_store(_settings(b.root)).models[0]
    assert model.status == "broken" and "missing file" in model.reason


def test_parse_model_name() -> None:
    assert parse_model_name("gemma3") == ("registry.ollama.ai", "library", "gemma3", "latest")
    assert parse_model_name("ollama:gemma3:270m") == ("registry.ollama.ai", "library", "gemma3", "270m")
    assert parse_model_name("user/m:t") == ("registry.ollama.ai", "user", "m", "t")
    assert parse_model_name("localhost:5000/ns/m") == ("localhost:5000", "ns", "m", "latest")
    for bad in ("", "a/b/c/d", "/x"):
        with pytest.raises(StoreError):
            parse_model_name(bad)


def test_find_model(small_store: StoreInfo) -> None:
    settings = _settings(small_store.root)
    model = find_model(settings, "ollama:llama3.2:1b")
    assert model.status == "ok" and model.summary is not None and model.summary.context_length == 512
    assert find_model(settings, "ollama.com/library/llama3.2:1b").full_name == "llama3.2:1b"
    assert find_model(settings, "alice/tiny-chat:v1").namespace == "alice"
    with pytest.raises(StoreError, match="not found"):
        find_model(settings, "llama3.2")  # tag defaults to latest, which is absent


def test_to_dict_has_the_cli_contract_keys(small_store: StoreInfo) -> None:
    model = find_model(_settings(small_store.root), "llama3.2:1b")
    d = model.to_dict()
    for key in ("name", "tag", "namespace", "registry", "manifest_path", "status", "reason", "gguf_path", "size_bytes",
                "architecture", "quantization", "parameter_count", "context_length", "has_chat_template", "layers",
                "base_model"):
        assert key in d
    assert set(d["base_model"]) >= {"repo", "source", "cache_status", "cache_size_bytes"}
    assert d["has_chat_template"] is True
    json.dumps(d)  # serialisable as is
