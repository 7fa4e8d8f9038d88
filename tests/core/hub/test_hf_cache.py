"""HF cache scan, completeness, per-repo status and deletion, on a realistic cache built offline."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from llamaforge_tui.core.hub.cache import (
    CacheError,
    delete_revisions,
    parse_repo_ref,
    plan_deletion,
    repo_cache_status,
    resolve_cache_dir,
    scan_cache,
)
from llamaforge_tui.core.hub.usage import models_by_repo, needed_by, repo_of_source, runs_by_repo
from tests.fixtures.hf_cache_factory import CacheBuilder, build_realistic_cache, commit_hash, model_files


@pytest.fixture
def cache(tmp_path: Path):
    return build_realistic_cache(tmp_path / "hub")


def _blob_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "blobs").iterdir() if not p.name.endswith(".incomplete"))


def test_scan_lists_every_repo_with_sizes_types_and_completeness(cache) -> None:
    scan = scan_cache(cache.root)
    by_id = {r.repo_id: r for r in scan.repos}
    assert set(by_id) == {"acme/big-model", "acme/partial-model", "acme/small-model", "acme/broken-model",
                          "acme/chat-data"}
    big = by_id["acme/big-model"]
    assert big.repo_type == "model" and len(big.revisions) == 2
    # Two revisions share config/tokenizer blobs: the repo size counts them once.
    assert big.size_bytes == _blob_bytes(big.repo_path)
    assert big.size_bytes < sum(r.size_bytes for r in big.revisions)
    assert big.revision("main").commit == cache.complete_main
    assert big.revision(cache.complete_old[:8]).commit == cache.complete_old
    assert big.complete is True and all(r.complete for r in big.revisions)
    partial = by_id["acme/partial-model"]
    assert partial.complete is False
    assert partial.revisions[0].missing == ("model-00002-of-00003.safetensors",)
    assert by_id["acme/small-model"].complete is True
    assert by_id["acme/chat-data"].repo_type == "dataset" and by_id["acme/chat-data"].complete is None
    # Sorted by size, biggest first; the total is what the cache holds on disk, corrupt repos included.
    sizes = [r.size_bytes for r in scan.repos]
    assert sizes == sorted(sizes, reverse=True)
    assert scan.total_size_bytes == sum(_blob_bytes(r.repo_path) for r in scan.repos) == sum(sizes)
    assert scan.corrupt_count == 1 and scan.to_dict()["corrupt_repos"] == 1


def test_a_corrupt_repo_with_data_counts_in_the_total(cache) -> None:
    """The walkthrough: a repo with a missing blob still holds 2 MB; the total used to leave it out."""
    broken = cache.root / "models--acme--broken-model" / "blobs"
    (broken / ("f" * 64)).write_bytes(b"x" * 2_000_000)
    scan = scan_cache(cache.root)
    assert scan.find("acme/broken-model").size_bytes >= 2_000_000
    assert scan.total_size_bytes == sum(r.size_bytes for r in scan.repos)
    assert scan.total_size_bytes >= 2_000_000 + sum(r.size_bytes for r in scan.repos if not r.corrupt)


def test_corrupt_repo_is_listed_with_the_scan_warning(cache) -> None:
    scan = scan_cache(cache.root)
    broken = scan.find("acme/broken-model")
    assert broken.corrupt is not None and "broken symlink" in broken.corrupt
    assert any("broken symlink" in w for w in scan.warnings)
    assert broken.complete is False
    assert "model.safetensors (broken link)" in broken.revisions[0].missing
    assert [p for p, _ in scan.incomplete_files] == [cache.incomplete_blob]
    with pytest.raises(CacheError, match="damaged"):
        plan_deletion(scan, "acme/broken-model")


def test_unreadable_folder_does_not_hide_the_other_repos(cache, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub.utils import _cache_manager

    real = _cache_manager._scan_cached_repo

    def scan_cache_dir(_: object) -> object:
        raise PermissionError(13, "Permission denied")

    def scan_repo(path: Path) -> object:
        if path.name == "models--acme--small-model":
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(huggingface_hub, "scan_cache_dir", scan_cache_dir)
    monkeypatch.setattr(_cache_manager, "_scan_cached_repo", scan_repo)
    scan = scan_cache(cache.root)
    assert scan.find("acme/big-model").corrupt is None
    small = scan.find("acme/small-model")
    assert small.corrupt is not None and "Permission denied" in small.corrupt
    assert any("Cannot read" in w and "small-model" in w for w in scan.warnings)


def test_missing_cache_folder_is_an_empty_scan(tmp_path: Path) -> None:
    scan = scan_cache(tmp_path / "nope")
    assert scan.repos == [] and scan.total_size_bytes == 0
    assert scan.to_dict()["repos"] == []


def test_repo_cache_status(cache) -> None:
    big = repo_cache_status("acme/big-model", cache.root)
    assert (big.state, big.revision) == ("cached", cache.complete_main)
    assert big.size_bytes == _blob_bytes(cache.builder.repo_path("acme/big-model"))
    partial = repo_cache_status("acme/partial-model", cache.root)
    assert partial.state == "partial" and partial.missing == ("model-00002-of-00003.safetensors",)
    assert repo_cache_status("acme/broken-model", cache.root).state == "partial"
    assert repo_cache_status("acme/absent", cache.root) == repo_cache_status("acme/absent", cache.root)
    assert repo_cache_status("acme/absent", cache.root).state == "missing"
    old = repo_cache_status("acme/big-model", cache.root, revision=cache.complete_old)
    assert (old.state, old.revision) == ("cached", cache.complete_old)


def test_status_without_tokenizer_or_config_is_partial(tmp_path: Path) -> None:
    b = CacheBuilder(tmp_path)
    files = model_files("nt")
    del files["tokenizer.json"]
    b.add_revision("acme/no-tok", commit_hash("nt"), files, refs=("main",))
    status = repo_cache_status("acme/no-tok", tmp_path)
    assert status.state == "partial" and any("tokenizer" in m for m in status.missing)
    # Sentencepiece tokenizers count too.
    files["tokenizer.model"] = b"spm"
    b.add_revision("acme/spm", commit_hash("spm"), files, refs=("main",))
    assert repo_cache_status("acme/spm", tmp_path).state == "cached"


def test_cache_dir_follows_the_environment_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert resolve_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hubcache"))
    assert resolve_cache_dir() == tmp_path / "hubcache"
    assert resolve_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    CacheBuilder(tmp_path / "hubcache").add_revision("a/b", commit_hash("ab"), model_files("ab"), refs=("main",))
    assert repo_cache_status("a/b").state == "cached"
    assert [r.repo_id for r in scan_cache().repos] == ["a/b"]


def test_delete_old_revision_frees_its_blobs_and_keeps_shared_ones(cache) -> None:
    scan = scan_cache(cache.root)
    repo = scan.find("acme/big-model")
    old = repo.revision(cache.complete_old)
    main = repo.revision("main")
    old_only = {f for f in old.files if (old.snapshot_path / f).resolve() != (main.snapshot_path / f).resolve()}
    assert old_only == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    expected = sum((old.snapshot_path / f).stat().st_size for f in old_only)
    shared_blobs = [(main.snapshot_path / f).resolve() for f in ("config.json", "tokenizer.json")]

    plan = plan_deletion(scan, "acme/big-model", [cache.complete_old[:10]])
    assert plan.freed_bytes == expected and not plan.whole_repo
    assert delete_revisions(plan) == expected

    assert not old.snapshot_path.exists()
    assert all(p.exists() for p in shared_blobs)
    after = scan_cache(cache.root).find("acme/big-model")
    assert [r.commit for r in after.revisions] == [cache.complete_main] and after.complete
    assert after.size_bytes == repo.size_bytes - expected


def test_delete_whole_repo_by_ref_and_errors(cache) -> None:
    scan = scan_cache(cache.root)
    small = scan.find("acme/small-model")
    plan = plan_deletion(scan, "acme/small-model", ["main"])
    assert plan.whole_repo and plan.freed_bytes == small.size_bytes
    delete_revisions(plan)
    assert not small.repo_path.exists()
    with pytest.raises(CacheError, match="not cached"):
        plan_deletion(scan_cache(cache.root), "acme/big-model", ["deadbeefdead"])
    with pytest.raises(CacheError, match="not in the Hugging Face cache"):
        plan_deletion(scan_cache(cache.root), "acme/nothing")


def test_parse_repo_ref() -> None:
    assert parse_repo_ref("Qwen/Qwen2.5-0.5B") == ("Qwen/Qwen2.5-0.5B", None)
    assert parse_repo_ref("hf:org/name@v1.0") == ("org/name", "v1.0")
    for bad in ("", "a/b/c", "../x", "a b/c"):
        with pytest.raises(CacheError):
            parse_repo_ref(bad)


def test_usage_mapping_from_models_and_runs() -> None:
    def model(name: str, repo: str | None) -> SimpleNamespace:
        return SimpleNamespace(full_name=name, base_model=SimpleNamespace(repo=repo) if repo else None)

    models = [model("gemma3:270m", "google/gemma-3-270m"), model("mine:latest", "google/gemma-3-270m"),
              model("other:1b", None)]
    assert models_by_repo(models) == {"google/gemma-3-270m": ["gemma3:270m", "mine:latest"]}
    runs = [SimpleNamespace(run_id="r1", source="hf:google/gemma-3-270m@main"),
            SimpleNamespace(run_id="r2", source="/c/hub/models--Qwen--Qwen2.5-0.5B/snapshots/abc"),
            SimpleNamespace(run_id="r3", source="ollama:gemma3:270m"),
            SimpleNamespace(run_id="r4", source={"source": "x.gguf", "hf_repo": "Qwen/Qwen2.5-0.5B"})]
    usage = runs_by_repo(runs)
    assert usage == {"google/gemma-3-270m": ["r1"], "Qwen/Qwen2.5-0.5B": ["r2", "r4"]}
    assert repo_of_source("model.gguf") is None
    reasons = needed_by("google/gemma-3-270m", selected_model=models[0], runs=usage)
    assert len(reasons) == 2 and "gemma3:270m" in reasons[0] and "r1" in reasons[1]
    assert needed_by("acme/unused", selected_model=models[0], runs=usage) == []


def test_run_usage_reads_runs_and_their_source_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs_module = pytest.importorskip("llamaforge_tui.core.train.runs")
    run_usage = runs_module.runs_by_hf_repo

    hf_run, ollama_run, gguf_run = tmp_path / "r-hf", tmp_path / "r-ollama", tmp_path / "r-gguf"
    for folder in (hf_run, ollama_run, gguf_run):
        folder.mkdir()
    runs_module.write_source(ollama_run, {"source": "ollama:gemma3:270m", "hf_repo": "google/gemma-3-270m"})
    runs_module.write_source(gguf_run, {"source": "x.gguf", "hf_repo": None})
    fake = [SimpleNamespace(run_id="a", path=hf_run, source="hf:Qwen/Qwen2.5-0.5B"),
            SimpleNamespace(run_id="b", path=ollama_run, source="ollama:gemma3:270m"),
            SimpleNamespace(run_id="c", path=gguf_run, source="x.gguf")]
    monkeypatch.setattr(runs_module, "list_runs", lambda settings: fake)
    assert run_usage(None) == {"Qwen/Qwen2.5-0.5B": ["a"], "google/gemma-3-270m": ["b"]}


def test_scan_counts_the_dequantized_gguf_cache(tmp_path: Path) -> None:
    """The dequantized-weights cache is LlamaForge's, not the hub's, but the user pays for it: it is in the totals."""
    from llamaforge_tui.core.model import dequant_cache
    from llamaforge_tui.core.model.dequant_cache import scan_cache_with_dequantized as scan_cache

    entry = dequant_cache.cache_root() / "abc-float32"
    entry.mkdir(parents=True)
    (entry / "meta.json").write_text('{"gguf_path": "/x", "dtype": "float32"}')
    (entry / "model.safetensors").write_bytes(b"\0" * 5000)
    scan = scan_cache(tmp_path / "empty-hub")
    assert scan.dequantized_cache_bytes == 5000 + len('{"gguf_path": "/x", "dtype": "float32"}')
    assert scan.to_dict()["dequantized_cache_bytes"] == scan.dequantized_cache_bytes
