"""`llamaforge cache`, `cache delete` and `download`: the headless side of the HF cache pane."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamaforge_tui.cli import main
from tests.fixtures.fake_hub import FakeHub, FakeRepo, go_online
from tests.fixtures.hf_cache_factory import build_realistic_cache, model_files


def test_cache_json_follows_the_cli_contract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = build_realistic_cache(tmp_path / "hub")
    assert main(["cache", "--json", "--cache-dir", str(cache.root)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"total_size_bytes", "warnings", "repos"} <= set(data)
    assert any("broken symlink" in w for w in data["warnings"])
    repo = next(r for r in data["repos"] if r["repo_id"] == "acme/big-model")
    assert {"repo_id", "repo_type", "size_bytes", "complete", "revisions", "used_by"} <= set(repo)
    assert repo["complete"] is True and repo["used_by"] == []
    assert {"commit", "refs", "size_bytes", "complete"} <= set(repo["revisions"][0])
    assert sorted(tuple(r["refs"]) for r in repo["revisions"]) == [(), ("main",)]
    partial = next(r for r in data["repos"] if r["repo_id"] == "acme/partial-model")
    assert partial["complete"] is False


def test_cache_table_respects_hf_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cache = build_realistic_cache(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache.root))
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith(f"HF cache {cache.root}: 5 repo(s)")
    assert lines[2].startswith("acme/big-model") and "corrupt" in out and "warning: Blob missing" in out
    assert "interrupted download" in out


def test_cache_delete_needs_yes_off_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cache = build_realistic_cache(tmp_path / "hub")
    monkeypatch.setattr("sys.stdin", open("/dev/null"))
    args = ["cache", "delete", f"acme/big-model@{cache.complete_old[:8]}", "--cache-dir", str(cache.root)]
    assert main(args) == 1
    assert "pass --yes" in capsys.readouterr().err
    assert (cache.builder.repo_path("acme/big-model") / "snapshots" / cache.complete_old).exists()

    assert main([*args, "--yes"]) == 0
    out = capsys.readouterr().out
    assert "freed 60.00 kB" in out
    assert not (cache.builder.repo_path("acme/big-model") / "snapshots" / cache.complete_old).exists()
    assert (cache.builder.repo_path("acme/big-model") / "snapshots" / cache.complete_main).exists()

    assert main(["cache", "delete", "acme/small-model", "--yes", "--json", "--cache-dir", str(cache.root)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["whole_repo"] is True and result["freed_bytes"] > 0
    assert not cache.builder.repo_path("acme/small-model").exists()

    assert main(["cache", "delete", "acme/nope", "--yes", "--cache-dir", str(cache.root)]) == 1
    assert capsys.readouterr().err.startswith("error: acme/nope is not in the Hugging Face cache")


def test_download_prints_log_friendly_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with FakeHub() as hub:
        hub.add(FakeRepo("acme/tiny", model_files("tiny", shards=2, shard_bytes=50_000)))
        go_online(monkeypatch, hub)
        assert main(["download", "acme/tiny", "--cache-dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "\r" not in out
        lines = out.splitlines()
        assert lines[0] == "resolving acme/tiny@main ..."
        assert any("model-00002-of-00002.safetensors" in line and "ETA" in line for line in lines)
        assert lines[-2].startswith("done  ")
        assert lines[-1].startswith("acme/tiny is in the cache at ") and "(cached," in lines[-1]

        assert main(["download", "acme/absent", "--cache-dir", str(tmp_path)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "acme/absent was not found" in err[0] and "HF_TOKEN" in err[0]


def test_download_json_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeHub() as hub:
        hub.add(FakeRepo("acme/tiny", model_files("tiny")))
        go_online(monkeypatch, hub)
        assert main(["download", "acme/tiny", "--json", "--cache-dir", str(tmp_path)]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["phase"] == "resolving" and events[-1]["type"] == "DownloadFinished"
    assert events[-1]["state"] == "cached"
    assert events[-2]["phase"] == "done" and events[-2]["downloaded_bytes"] == events[-2]["total_bytes"]
