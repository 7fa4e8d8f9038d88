"""Base-model downloads against a local stand-in for the Hub (HF_ENDPOINT): files, progress, cancel, errors."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from llamaforge_tui.core.hub.cache import repo_cache_status, scan_cache
from llamaforge_tui.core.hub.download import (
    DownloadCancelled,
    DownloadError,
    DownloadProgress,
    download_repo,
    select_files,
)
from tests.fixtures.fake_hub import FakeHub, FakeRepo, go_online
from tests.fixtures.hf_cache_factory import model_files

SHARD = 120_000


def _repo_files() -> dict[str, bytes]:
    files = model_files("tiny", shards=2, shard_bytes=SHARD)
    files.update({"pytorch_model.bin": b"pickle" * 10, "original/consolidated.00.pth": b"pth" * 10,
                  "model-q4.gguf": b"GGUF", "README.md": b"# tiny", "onnx/model.onnx": b"onnx"})
    return files


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):
    with FakeHub() as server:
        server.add(FakeRepo("acme/tiny", _repo_files()))
        go_online(monkeypatch, server)
        yield server


def _all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() or p.is_symlink()]


def test_select_files_keeps_only_what_training_needs() -> None:
    assert select_files(list(_repo_files())) == [
        "config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def test_download_fetches_config_tokenizer_and_shards_with_progress(hub: FakeHub, tmp_path: Path) -> None:
    events: list[DownloadProgress] = []
    snapshot = download_repo("acme/tiny", cache_dir=tmp_path, progress=events.append)

    assert sorted(p.name for p in snapshot.iterdir()) == sorted(select_files(list(_repo_files())))
    assert (snapshot / "model-00001-of-00002.safetensors").read_bytes() == _repo_files()[
        "model-00001-of-00002.safetensors"]
    assert not any(p.suffix in {".bin", ".pth", ".gguf", ".onnx"} for p in _all_files(tmp_path))
    assert not any("resolve" in path and ("original/" in path or path.endswith(".bin")) for _, path in hub.requests)
    # LFS shards came through the "CDN" redirect, as on the real Hub.
    assert sum(1 for method, path in hub.requests if method == "GET" and path.startswith("/cdn/")) == 2
    status = repo_cache_status("acme/tiny", tmp_path)
    assert status.state == "cached" and status.revision == snapshot.name
    assert (tmp_path / "models--acme--tiny" / "refs" / "main").read_text() == snapshot.name

    assert events[0].phase == "resolving" and events[-1].phase == "done"
    downloading = [e for e in events if e.phase == "downloading"]
    total = sum(len(_repo_files()[n]) for n in select_files(list(_repo_files())))
    assert {e.total_bytes for e in downloading} == {total} and events[-1].downloaded_bytes == total
    counts = [e.downloaded_bytes for e in events[1:]]
    assert counts == sorted(counts)  # never goes backwards
    assert any(0 < e.downloaded_bytes < total for e in downloading)  # mid-file updates, not only per file
    assert any(e.speed_bps and e.eta_seconds is not None for e in downloading)
    assert events[-1].files_done == events[-1].file_count == 6

    # A second download is served from the cache: no file body is fetched again.
    hub.requests.clear()
    assert download_repo("acme/tiny", cache_dir=tmp_path) == snapshot
    assert not any(method == "GET" and "/resolve/" in path for method, path in hub.requests)


def test_cancel_leaves_no_half_written_file_in_the_snapshot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cancel = threading.Event()
    seen: list[DownloadProgress] = []

    def on_progress(p: DownloadProgress) -> None:
        seen.append(p)
        # Cancel strictly inside the first shard (progress reports are throttled to ~10/s).
        if p.filename == "model-00001-of-00002.safetensors" and 0 < p.downloaded_bytes - _small_bytes() < SHARD:
            cancel.set()

    with FakeHub(chunk_size=4096, chunk_delay=0.01) as server:
        server.add(FakeRepo("acme/tiny", _repo_files()))
        go_online(monkeypatch, server)
        with pytest.raises(DownloadCancelled, match="cancelled"):
            download_repo("acme/tiny", cache_dir=tmp_path, progress=on_progress, cancel=cancel)
        repo = tmp_path / "models--acme--tiny"
        snapshot = next((repo / "snapshots").iterdir())
        # Small files landed; the shard being fetched is neither linked nor left half-written anywhere.
        assert sorted(p.name for p in snapshot.iterdir()) == [
            "config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"]
        assert not [p for p in _all_files(tmp_path) if p.name.endswith(".incomplete")]
        blob_sizes = sorted(p.stat().st_size for p in (repo / "blobs").iterdir())
        assert SHARD not in blob_sizes
        assert repo_cache_status("acme/tiny", tmp_path).state == "partial"
        assert seen[-1].downloaded_bytes < _small_bytes() + SHARD
        assert scan_cache(tmp_path).find("acme/tiny").complete is False

        # Downloading again completes the model.
        snapshot2 = download_repo("acme/tiny", cache_dir=tmp_path)
        assert snapshot2 == snapshot and repo_cache_status("acme/tiny", tmp_path).state == "cached"


def _small_bytes() -> int:
    files = _repo_files()
    return sum(len(files[n]) for n in select_files(list(files)) if not n.endswith(".safetensors"))


@pytest.mark.parametrize(
    ("repo", "match"),
    [
        (FakeRepo("acme/private", {"config.json": b"{}"}, private=True), r"not found on the Hub, or it is private.*HF_TOKEN"),
        (FakeRepo("acme/gated", model_files("g"), gated=True), r"gated.*hf auth login.*HF_TOKEN"),
    ],
)
def test_auth_errors_explain_how_to_log_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, repo: FakeRepo,
                                           match: str) -> None:
    with FakeHub() as server:
        server.add(repo)
        go_online(monkeypatch, server)
        with pytest.raises(DownloadError, match=match):
            download_repo(repo.repo_id, cache_dir=tmp_path)
    snapshots = list(tmp_path.glob("models--*/snapshots/*/*"))
    assert snapshots == []


def test_private_repo_with_hf_token_downloads_and_the_token_stays_on_the_hub(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with FakeHub() as server:
        server.add(FakeRepo("acme/private", model_files("p", shards=2, shard_bytes=1000), private=True))
        go_online(monkeypatch, server)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        snapshot = download_repo("acme/private", cache_dir=tmp_path)
        assert (snapshot / "model-00002-of-00002.safetensors").exists()
        assert len(server.cdn_auth) == 2 and server.cdn_auth == [None, None]


def test_missing_repo_and_revision(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"acme/nope was not found on the Hub.*hf auth login"):
        download_repo("acme/nope", cache_dir=tmp_path)
    with pytest.raises(DownloadError, match=r"revision 'v9' does not exist in acme/tiny"):
        download_repo("acme/tiny", "v9", cache_dir=tmp_path)


def test_repo_without_safetensors_is_refused(hub: FakeHub, tmp_path: Path) -> None:
    hub.add(FakeRepo("acme/pickles", {"config.json": b"{}", "tokenizer.json": b"{}", "pytorch_model.bin": b"x"}))
    with pytest.raises(DownloadError, match="no top-level .safetensors"):
        download_repo("acme/pickles", cache_dir=tmp_path)
    assert not any("/resolve/" in path for _, path in hub.requests)


def test_offline_mode_is_respected_without_touching_the_network(hub: FakeHub, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.requests.clear()
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE"):
        download_repo("acme/tiny", cache_dir=tmp_path)
    assert hub.requests == []


def test_unreachable_hub_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with FakeHub() as server:
        go_online(monkeypatch, server)
        url = server.url
    monkeypatch.setenv("HF_ENDPOINT", url)  # the server is gone: connection refused
    with pytest.raises(DownloadError, match="cannot reach the Hub"):
        download_repo("acme/tiny", cache_dir=tmp_path)
