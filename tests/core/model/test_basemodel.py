"""Base-model mapping: user override, GGUF metadata, the table, refusal to guess, and HF cache status."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fixtures.gguf_factory import TinySpec, write_gguf
from fixtures.hf_cache_factory import CacheBuilder, commit_hash, model_files
from fixtures.ollama_store import StoreInfo, small_store  # noqa: F401
from gguf import GGMLQuantizationType as Q

from llamaforge_tui.core.model import basemodel
from llamaforge_tui.core.model.basemodel import (
    BaseModelInfo,
    CacheStatusLookup,
    map_base_model,
    repo_from_url,
    set_base_model_override,
)
from llamaforge_tui.core.model.basemodel_table import FAMILIES
from llamaforge_tui.core.errors import ConfigError
from llamaforge_tui.core.gguf.info import summarize_gguf
from llamaforge_tui.core.model.basemodel import find_ollama_model as find_model
from llamaforge_tui.core.settings import Settings

SPEC = TinySpec(n_layers=1, n_embd=64, n_head=2, n_head_kv=1, n_ff=128, vocab_size=16)


def _hub() -> Path:
    return Path(os.environ["HF_HOME"]) / "hub"


@pytest.mark.parametrize("name, repo", [
    ("gemma3:270m", "google/gemma-3-270m-it"),
    ("qwen2.5:3b", "Qwen/Qwen2.5-3B-Instruct"),
    ("qwen2.5:7b-instruct-q4_K_M", "Qwen/Qwen2.5-7B-Instruct"),
    ("qwen2.5:1.5b-text-q8_0", "Qwen/Qwen2.5-1.5B"),
    ("qwen2.5", "Qwen/Qwen2.5-7B-Instruct"),  # latest = the family's default size
    ("qwen3:4b", "Qwen/Qwen3-4B"),
    ("qwen3:8b-base", "Qwen/Qwen3-8B-Base"),
    ("llama3.1:8b", "meta-llama/Llama-3.1-8B-Instruct"),
    ("llama3.2:latest", "meta-llama/Llama-3.2-3B-Instruct"),
    ("llama3.3:70b", "meta-llama/Llama-3.3-70B-Instruct"),
    ("mistral:7b", "mistralai/Mistral-7B-Instruct-v0.3"),
    ("gemma2:2b", "google/gemma-2-2b-it"),
    ("phi3:mini", "microsoft/Phi-3-mini-4k-instruct"),
    ("phi3:medium", "microsoft/Phi-3-medium-4k-instruct"),
    ("phi4:14b", "microsoft/phi-4"),
    ("tinyllama:latest", "TinyLlama/TinyLlama-1.1B-Chat-v1.0"),
    ("codellama:7b-python", "codellama/CodeLlama-7b-Python-hf"),
    ("codellama:13b", "codellama/CodeLlama-13b-Instruct-hf"),
    ("smollm2:135m", "HuggingFaceTB/SmolLM2-135M-Instruct"),
])
def test_table_maps_library_names_to_instruct_repos(name: str, repo: str) -> None:
    info = map_base_model(name, Settings())
    assert (info.repo, info.source) == (repo, "table"), info.detail
    assert info.cache_status == "missing" and info.download_size_bytes
    assert info.describe_cache().startswith("needs download (about ")


@pytest.mark.parametrize("name, why", [
    ("my-finetune:latest", "not an Ollama library family"),
    ("alice/llama3.2:3b", "not an Ollama library family"),  # a user namespace is not the library
    ("gemma3:13b", "no gemma3 of size 13b"),
    ("phi4:14b-base", "no base variant"),
])
def test_unknown_models_are_not_guessed(name: str, why: str) -> None:
    info = map_base_model(name, Settings())
    assert info.repo is None and info.source is None and info.cache_status is None
    assert why in info.detail
    assert info.describe_cache() == "no mapping: will train from the GGUF"


def test_table_refuses_an_architecture_mismatch(small_store: StoreInfo) -> None:
    # "bigmodel" is not in the table; build a library "mistral" whose GGUF is actually qwen3.
    from fixtures.ollama_store import StoreBuilder

    b = StoreBuilder(small_store.root)
    b.write("mistral", "7b", b.manifest([b.gguf_layer(small_store.tiny_path.parent / "tiny-qwen3.gguf")]))
    info = find_model(Settings(models_dirs=[str(small_store.root)]), "mistral:7b").base_model
    assert info is not None and info.repo is None
    assert "but this GGUF is qwen3" in info.detail


def test_latest_picks_the_size_from_the_parameter_count(tmp_path: Path) -> None:
    # A 1B-class llama GGUF tagged "latest": the family default (3b) would be wrong.
    from dataclasses import replace

    summary = summarize_gguf(write_gguf(tmp_path / "m", "llama", spec=SPEC, weight_type=Q.F16))
    summary = replace(summary, parameter_count=1_235_814_400)
    info = map_base_model("llama3.2:latest", Settings(), summary=summary)
    assert info.repo == "meta-llama/Llama-3.2-1B-Instruct" and "parameter count 1.2B" in info.detail


def test_gguf_metadata_is_used_and_says_so(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m", spec=SPEC, weight_type=Q.F16,
                      base_models=[{"repo_url": "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct"}])
    info = map_base_model("someone/custom:latest", Settings(), summary=summarize_gguf(path))
    assert (info.repo, info.source) == ("Qwen/Qwen2.5-0.5B-Instruct", "gguf-metadata")
    assert info.detail == "GGUF general.base_model.0.repo_url"
    org_name = write_gguf(tmp_path / "n", spec=SPEC, weight_type=Q.F16,
                          base_models=[{"organization": "HuggingFaceTB", "name": "SmolLM2 135M"}])
    info = map_base_model("x:latest", Settings(), summary=summarize_gguf(org_name))
    assert (info.repo, info.source) == ("HuggingFaceTB/SmolLM2-135M", "gguf-metadata")


def test_user_override_wins_and_is_saved(small_store: StoreInfo) -> None:
    settings = Settings(models_dirs=[str(small_store.root)])
    path = set_base_model_override(settings, "alice/tiny-chat:v1", "HuggingFaceTB/SmolLM2-360M-Instruct")
    reloaded = Settings.load(path)
    assert reloaded.models_dirs == []  # the roots given on the command line are not persisted
    assert reloaded.base_model_overrides == {"alice/tiny-chat:v1": "HuggingFaceTB/SmolLM2-360M-Instruct"}
    info = find_model(settings, "alice/tiny-chat:v1").base_model
    assert info is not None and (info.repo, info.source) == ("HuggingFaceTB/SmolLM2-360M-Instruct", "user")
    assert "user override" in info.detail
    set_base_model_override(settings, "gemma3", "none")  # untagged key: every gemma3 tag
    info = map_base_model("gemma3:270m", settings)
    assert info.repo is None and info.source == "user"
    set_base_model_override(settings, "gemma3", None)
    assert map_base_model("gemma3:270m", settings).source == "table"
    with pytest.raises(ConfigError, match="invalid Hugging Face repo id"):
        set_base_model_override(settings, "gemma3", "../etc")


def test_cache_status_cached_partial_missing() -> None:
    hub = _hub()
    builder = CacheBuilder(hub)
    builder.add_revision("google/gemma-3-270m-it", commit_hash("a"), model_files("gemma", shards=2), refs=("main",))
    partial = model_files("qwen", shards=2)
    partial.pop("model-00002-of-00002.safetensors")
    builder.add_revision("Qwen/Qwen2.5-3B-Instruct", commit_hash("b"), partial, refs=("main",))
    cached = map_base_model("gemma3:270m", Settings())
    assert cached.cache_status == "cached" and cached.revision == commit_hash("a")
    assert cached.cache_size_bytes and cached.describe_cache().startswith("cached (")
    assert not cached.needs_download
    part = map_base_model("qwen2.5:3b", Settings())
    assert part.cache_status == "partial" and part.needs_download
    assert part.describe_cache().startswith("partial (")
    assert map_base_model("llama3.2:1b", Settings()).cache_status == "missing"
    # The fallback (huggingface_hub.scan_cache_dir) agrees with the CACHE module.
    assert basemodel._fallback_status("google/gemma-3-270m-it", str(hub))[0] == "cached"
    assert basemodel._fallback_status("Qwen/Qwen2.5-3B-Instruct", str(hub))[0] == "partial"
    assert basemodel._fallback_status("meta-llama/Llama-3.2-1B-Instruct", str(hub))[0] == "missing"
    assert basemodel._fallback_status("google/gemma-3-270m-it", None)[0] == "cached"  # HF_HOME read at call time


def test_cache_dir_setting_is_respected(tmp_path: Path) -> None:
    CacheBuilder(tmp_path / "elsewhere").add_revision(
        "google/gemma-3-270m-it", commit_hash("c"), model_files("gemma"), refs=("main",))
    assert map_base_model("gemma3:270m", Settings()).cache_status == "missing"
    assert map_base_model("gemma3:270m", Settings(hf_cache_dir=str(tmp_path / "elsewhere"))).cache_status == "cached"


def test_lookup_is_memoized(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake(repo: str, cache_dir: str | None = None) -> tuple[str, int, None]:
        calls.append(repo)
        return "missing", 0, None

    monkeypatch.setattr(basemodel, "repo_status", fake)
    lookup = CacheStatusLookup(Settings())
    for _ in range(3):
        map_base_model("gemma3:270m", Settings(), cache_status=lookup)
    assert calls == ["google/gemma-3-270m-it"]


def test_repo_from_url() -> None:
    assert repo_from_url("https://huggingface.co/google/gemma-3-270m") == "google/gemma-3-270m"
    assert repo_from_url("https://huggingface.co/google/gemma-3-270m/tree/main") == "google/gemma-3-270m"
    assert repo_from_url("https://huggingface.co/datasets/x/y") is None
    assert repo_from_url("https://github.com/google/gemma") is None
    assert repo_from_url("https://huggingface.co/gpt2") is None


def test_table_is_well_formed() -> None:
    for family in FAMILIES.values():
        assert family.default_size in family.entries, family.name
        for entry in family.entries.values():
            assert "instruct" in entry.variants and entry.download_gb > 0 and entry.params > 0
            for repo in entry.variants.values():
                assert basemodel.REPO_ID_RE.fullmatch(repo), repo
    assert isinstance(BaseModelInfo(None, None, "x").to_dict(), dict)


def test_hf_hub_cache_env_is_respected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    CacheBuilder(tmp_path / "hub-cache").add_revision(
        "google/gemma-3-270m-it", commit_hash("d"), model_files("gemma"), refs=("main",))
    assert map_base_model("gemma3:270m", Settings()).cache_status == "missing"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    assert map_base_model("gemma3:270m", Settings()).cache_status == "cached"
