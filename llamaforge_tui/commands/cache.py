"""`llamaforge cache [delete REPO[@REV] [--yes]]` and `llamaforge download REPO[@REV]`.

Headless versions of the HF cache pane: list the cache (``--json`` per CLI.md), delete revisions or a
whole repo through huggingface_hub's delete strategy, and download a base model with progress lines
that read well in a tmux log (one line per update, no carriage returns).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from datetime import datetime
from typing import Any

from llamaforge_tui.commands.common import add_json_flag, print_json, settings_from_args
from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.fsutil import human_bytes


def register(subparsers: argparse._SubParsersAction) -> None:
    cache = subparsers.add_parser(
        "cache", help="list the Hugging Face cache, or delete from it",
        description="List the Hugging Face hub cache (repos, sizes, revisions, completeness, which Ollama "
                    "models map to each), or `cache delete REPO[@REV]` to free space.")
    cache.add_argument("action", nargs="?", choices=["delete"], help="delete a repo or one revision of it")
    cache.add_argument("target", nargs="?", metavar="REPO[@REV]", help="for delete: ORG/NAME or ORG/NAME@REVISION")
    cache.add_argument("--yes", "-y", action="store_true", help="delete without asking")
    add_json_flag(cache)
    cache.set_defaults(func=run_cache)

    download = subparsers.add_parser(
        "download", help="download a base model (config, tokenizer, safetensors) into the HF cache",
        description="Fetch what training needs from a Hugging Face repo: config, tokenizer files and "
                    "safetensors weights (never *.bin, *.pth, *.gguf or original/).")
    download.add_argument("repo", metavar="REPO[@REV]")
    download.add_argument("--interval", type=float, default=2.0, help="seconds between progress lines (default 2)")
    add_json_flag(download)
    download.set_defaults(func=run_download)


# -- cache --------------------------------------------------------------------------------------


def run_cache(args: argparse.Namespace) -> int:
    from llamaforge_tui.core.hub.cache import cache_dir_from_settings
    from llamaforge_tui.core.model.basemodel import ollama_models_by_repo
    from llamaforge_tui.core.model.dequant_cache import scan_cache_with_dequantized

    settings = settings_from_args(args)
    if args.action == "delete":
        return _run_delete(args, settings)
    if args.target:
        raise LlamaForgeError(f"unexpected argument {args.target!r}; did you mean `llamaforge cache delete {args.target}`?")
    scan = scan_cache_with_dequantized(cache_dir_from_settings(settings))
    usage, note = ollama_models_by_repo(settings)
    if args.json:
        print_json(scan.to_dict(usage))
        return 0
    print(f"HF cache {scan.cache_dir}: {len(scan.repos)} repo(s), {human_bytes(scan.total_size_bytes)}")
    if scan.dequantized_cache_bytes:
        print(f"LlamaForge dequantized GGUF cache: {human_bytes(scan.dequantized_cache_bytes)}")
    if scan.repos:
        rows = [("REPO", "TYPE", "SIZE", "REVS", "COMPLETE", "MODIFIED", "ACCESSED", "USED BY")]
        for r in scan.repos:
            complete = "corrupt" if r.corrupt else {True: "yes", False: "no", None: "-"}[r.complete]
            rows.append((r.repo_id, r.repo_type, human_bytes(r.size_bytes), str(len(r.revisions)), complete,
                         _date(r.last_modified), _date(r.last_accessed), ", ".join(usage.get(r.repo_id, [])) or "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if scan.incomplete_files:
        size = sum(s for _, s in scan.incomplete_files)
        print(f"{len(scan.incomplete_files)} interrupted download(s) hold {human_bytes(size)} in blobs/*.incomplete")
    for warning in scan.warnings:
        print(f"warning: {warning}")
    if note:
        print(f"note: {note}")
    return 0


def _date(stamp: float) -> str:
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M") if stamp else "-"


def _run_delete(args: argparse.Namespace, settings: Any) -> int:
    from llamaforge_tui.core.hub.cache import cache_dir_from_settings, delete_revisions, parse_repo_ref, plan_deletion, scan_cache
    from llamaforge_tui.core.hub.usage import needed_by
    from llamaforge_tui.core.model.basemodel import ollama_models_by_repo
    from llamaforge_tui.core.train.runs import runs_by_hf_repo

    if not args.target:
        raise LlamaForgeError("usage: llamaforge cache delete REPO[@REV] [--yes]")
    repo_id, revision = parse_repo_ref(args.target)
    scan = scan_cache(cache_dir_from_settings(settings))
    plan = plan_deletion(scan, repo_id, [revision] if revision else None)
    usage, _ = ollama_models_by_repo(settings)
    reasons = needed_by(repo_id, runs=runs_by_hf_repo(settings))
    if usage.get(repo_id):
        reasons.insert(0, f"Ollama model(s) {', '.join(usage[repo_id])} map to it")
    out = sys.stderr if args.json else sys.stdout
    print(f"will delete {plan.describe()}, freeing {human_bytes(plan.freed_bytes)}", file=out)
    for reason in reasons:
        print(f"warning: still needed: {reason}", file=out)
    if not args.yes:
        if not sys.stdin.isatty():
            raise LlamaForgeError("refusing to delete without confirmation: pass --yes")
        answer = input("Delete? [y/N] ").strip().lower()
        if answer not in {"y", "yes"}:
            print("nothing deleted", file=out)
            return 1
    freed = delete_revisions(plan)
    if args.json:
        print_json({"repo_id": plan.repo_id, "deleted_revisions": list(plan.commits), "whole_repo": plan.whole_repo,
                    "freed_bytes": freed})
    else:
        print(f"deleted {plan.describe()}: freed {human_bytes(freed)}")
    return 0


# -- download -----------------------------------------------------------------------------------


def run_download(args: argparse.Namespace) -> int:
    from llamaforge_tui.core.hub.cache import cache_dir_from_settings, parse_repo_ref, repo_cache_status
    from llamaforge_tui.core.hub.download import DownloadProgress, download_repo, progress_text

    settings = settings_from_args(args)
    repo_id, revision = parse_repo_ref(args.repo)
    cache_dir = cache_dir_from_settings(settings)
    last = {"t": 0.0, "file": None}

    def report(p: DownloadProgress) -> None:
        now = time.monotonic()
        new_file = p.filename != last["file"]
        if not (new_file or p.phase != "downloading" or now - last["t"] >= args.interval):
            return
        last["t"], last["file"] = now, p.filename
        if args.json:
            sys.stdout.write(json.dumps({"type": "DownloadProgress", **asdict(p)}) + "\n")
        else:
            sys.stdout.write(progress_text(p) + "\n")
        sys.stdout.flush()

    snapshot = download_repo(repo_id, revision, cache_dir, progress=report)
    status = repo_cache_status(repo_id, cache_dir, revision=snapshot.name)
    if args.json:
        print(json.dumps({"type": "DownloadFinished", "repo_id": repo_id, "revision": snapshot.name,
                          "snapshot_path": str(snapshot), "state": status.state, "size_bytes": status.size_bytes}))
    else:
        print(f"{repo_id} is in the cache at {snapshot} ({status.state}, {human_bytes(status.size_bytes)})")
        if status.missing:
            print(f"warning: not a complete model: missing {', '.join(status.missing)}")
    return 0
