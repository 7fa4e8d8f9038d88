"""Download a base model into the Hugging Face cache: only what training needs, with progress and cancel.

The work is huggingface_hub's (``HfApi.resolve_revision`` writes ``refs/<rev>``, ``model_info`` lists the
files with sizes, ``hf_hub_download`` fetches each one into ``blobs/`` through a temporary
``.incomplete`` file and links it into ``snapshots/<commit>/`` only once complete). This module picks the
files, turns huggingface_hub's per-chunk ``tqdm`` updates into ``DownloadProgress`` events (bytes, speed,
ETA), and cancels by raising from that hook: the interrupted blob's temporary file is removed by
huggingface_hub and the snapshot never holds a half-written file.

``huggingface_hub.constants`` reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` once, at import; this module
reads them from the environment at call time, so the process's current settings win.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.hub.layout import resolve_cache_dir

log = logging.getLogger(__name__)

# Top-level files a LoRA run needs: config, tokenizer (json / sentencepiece / BPE / tiktoken), chat
# template, and safetensors weights with their index.
ALLOW_PATTERNS: tuple[str, ...] = ("*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja")
# Never pickles or other formats, never `original/` (Meta's consolidated .pth) or any sub-folder.
IGNORE_PATTERNS: tuple[str, ...] = ("*.bin", "*.pth", "*.pt", "*.gguf", "*.onnx", "*.msgpack", "*.h5",
                                    "original/*", "*/*")

Phase = Literal["resolving", "downloading", "done"]

LOGIN_HINT = "log in with `hf auth login` or set HF_TOKEN to a token that can read it"


class DownloadError(LlamaForgeError):
    """A download could not start or finish (auth, missing repo, offline, network)."""


class DownloadCancelled(DownloadError):
    """The user cancelled; the cache holds no half-written file (partial blobs are removed)."""


@dataclass(frozen=True)
class DownloadProgress:
    """One progress report. ``speed_bps``/``eta_seconds`` are ``None`` until enough bytes have moved."""

    repo_id: str
    revision: str | None
    phase: Phase
    filename: str | None
    files_done: int
    file_count: int
    downloaded_bytes: int
    total_bytes: int
    speed_bps: float | None = None
    eta_seconds: float | None = None

    @property
    def fraction(self) -> float:
        return min(1.0, self.downloaded_bytes / self.total_bytes) if self.total_bytes else 0.0


def select_files(names: list[str] | tuple[str, ...]) -> list[str]:
    """The repo files a download fetches (allow-list minus ignore-list), in a stable order: small files
    first so config and tokenizer land before the big shards."""
    keep = [n for n in names
            if any(fnmatch.fnmatch(n, p) for p in ALLOW_PATTERNS)
            and not any(fnmatch.fnmatch(n, p) for p in IGNORE_PATTERNS)]
    return sorted(keep, key=lambda n: (n.endswith(".safetensors"), n))


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now, not when huggingface_hub was imported."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_endpoint() -> str | None:
    value = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return value or None


# --------------------------------------------------------------------------------------------------
# Progress: huggingface_hub's tqdm hook -> DownloadProgress events


class _Tracker:
    """Counts bytes across files, computes speed over a sliding window, throttles reports, and
    raises ``DownloadCancelled`` from inside huggingface_hub's download loop when asked to stop."""

    WINDOW_S = 5.0
    MIN_INTERVAL_S = 0.1

    def __init__(self, repo_id: str, revision: str, total: int, file_count: int,
                 report: Callable[[DownloadProgress], None] | None, cancel: threading.Event | None) -> None:
        self.repo_id, self.revision, self.total, self.file_count = repo_id, revision, total, file_count
        self.report, self.cancel = report, cancel
        self.done_bytes = 0  # bytes of finished files
        self.file_bytes = 0  # bytes of the current file so far
        self.files_done = 0
        self.filename: str | None = None
        self._samples: deque[tuple[float, int]] = deque()
        self._last_emit = 0.0

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise DownloadCancelled(f"download of {self.repo_id} cancelled")

    def start_file(self, name: str) -> None:
        self.check_cancel()
        self.filename, self.file_bytes = name, 0
        self.emit(force=True)

    def finish_file(self, size: int | None) -> None:
        # A file already in the cache never calls update(); count it as done so the totals add up.
        self.done_bytes += max(size or 0, self.file_bytes)
        self.file_bytes = 0
        self.files_done += 1
        self.emit(force=True)

    def add(self, n: float) -> None:
        self.file_bytes += int(n)
        now = time.monotonic()
        self._samples.append((now, self.downloaded))
        while self._samples and now - self._samples[0][0] > self.WINDOW_S:
            self._samples.popleft()
        self.emit()
        self.check_cancel()

    @property
    def downloaded(self) -> int:
        return self.done_bytes + self.file_bytes

    def speed(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None

    def snapshot(self, phase: Phase = "downloading") -> DownloadProgress:
        speed = self.speed()
        remaining = max(0, self.total - self.downloaded)
        eta = remaining / speed if speed else (0.0 if phase == "done" else None)
        return DownloadProgress(self.repo_id, self.revision, phase, self.filename, self.files_done,
                                self.file_count, self.downloaded, self.total, speed, eta)

    def emit(self, force: bool = False, phase: Phase = "downloading") -> None:
        now = time.monotonic()
        if self.report is None or (not force and now - self._last_emit < self.MIN_INTERVAL_S):
            return
        self._last_emit = now
        self.report(self.snapshot(phase))

    def bar_class(self) -> type:
        """A ``tqdm``-shaped class bound to this tracker (huggingface_hub instantiates it per file)."""
        tracker = self

        class _Bar:
            def __init__(self, *args: Any, total: float | None = None, initial: float = 0, **kwargs: Any) -> None:
                self.n, self.total = initial or 0, total
                if initial:  # resumed file: those bytes are already on disk
                    tracker.add(initial)

            def update(self, n: float | None = 1) -> None:
                self.n += n or 0
                tracker.add(n or 0)

            def update_transfer(self, n: float | None = 1) -> None:
                """Network bytes (xet); progress is counted on bytes written, so nothing to do."""

            def set_postfix_str(self, *args: Any, **kwargs: Any) -> None: ...
            def set_transfer_postfix_str(self, *args: Any, **kwargs: Any) -> None: ...
            def set_description(self, *args: Any, **kwargs: Any) -> None: ...
            def set_description_str(self, *args: Any, **kwargs: Any) -> None: ...
            def refresh(self, *args: Any, **kwargs: Any) -> None: ...
            def close(self) -> None: ...

            @property
            def format_dict(self) -> dict[str, Any]:
                return {"rate": tracker.speed()}

            def __enter__(self) -> _Bar:
                return self

            def __exit__(self, *exc: Any) -> None:
                return None

        return _Bar


# --------------------------------------------------------------------------------------------------
# Errors -> messages the user can act on


def _translate(exc: Exception, repo_id: str, revision: str | None) -> DownloadError:
    import httpx
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
        RevisionResolutionError,
    )

    if isinstance(exc, GatedRepoError):
        return DownloadError(f"{repo_id} is gated: accept its terms on its Hub page, then {LOGIN_HINT}")
    if isinstance(exc, RevisionNotFoundError):
        return DownloadError(f"revision {revision!r} does not exist in {repo_id}")
    if isinstance(exc, RepositoryNotFoundError):
        return DownloadError(f"{repo_id} was not found on the Hub, or it is private: check the name; "
                             f"for a private or gated repo, {LOGIN_HINT}")
    if isinstance(exc, OfflineModeIsEnabled):
        return DownloadError(f"cannot download {repo_id}: HF_HUB_OFFLINE=1 was set when LlamaForge started; "
                             "restart with HF_HUB_OFFLINE unset (or 0) to download")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            return DownloadError(f"the Hub refused access to {repo_id} (HTTP {status}): {LOGIN_HINT}")
        return DownloadError(f"the Hub answered HTTP {status} for {repo_id}: {str(exc).splitlines()[0]}")
    if isinstance(exc, (LocalEntryNotFoundError, RevisionResolutionError, httpx.TransportError)):
        return DownloadError(f"cannot reach the Hub ({hub_endpoint() or 'https://huggingface.co'}) to download "
                             f"{repo_id}: check your connection (or HF_ENDPOINT)")
    return DownloadError(f"cannot download {repo_id}: {exc}")


def _hub_call(fn: Callable[[], Any], repo_id: str, revision: str | None) -> Any:
    """Run one huggingface_hub call, turning its auth/not-found/offline/network errors into ours."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError, RevisionResolutionError

    try:
        return fn()
    except DownloadCancelled:
        raise
    except (HfHubHTTPError, RevisionResolutionError, httpx.TransportError, OSError, ValueError) as exc:
        # OSError covers OfflineModeIsEnabled (a ConnectionError) and LocalEntryNotFoundError;
        # ValueError covers bad repo ids (HFValidationError).
        raise _translate(exc, repo_id, revision) from exc


# --------------------------------------------------------------------------------------------------
# The download


def download_repo(repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None, *,
                  progress: Callable[[DownloadProgress], None] | None = None,
                  cancel: threading.Event | None = None, token: str | bool | None = None) -> Path:
    """Download config, tokenizer files and safetensors of ``repo_id`` at ``revision`` (default ``main``).

    Blocking; call from a worker thread. ``progress`` receives ``DownloadProgress`` events (throttled to
    ~10/s, plus one per file boundary and a final ``done``). Setting ``cancel`` stops within one
    network chunk and raises ``DownloadCancelled``. Returns the snapshot folder.
    """
    from huggingface_hub import HfApi, hf_hub_download

    if is_offline():
        raise DownloadError(f"cannot download {repo_id}: HF_HUB_OFFLINE is set, so the Hub is never contacted; "
                            "unset it (or set HF_HUB_OFFLINE=0) to download")
    folder = resolve_cache_dir(cache_dir)
    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    if progress is not None:
        progress(DownloadProgress(repo_id, revision, "resolving", None, 0, 0, 0, 0))
    resolved = _hub_call(lambda: api.resolve_revision(repo_id, revision=revision, cache_dir=folder, token=token),
                         repo_id, revision)
    info = _hub_call(lambda: api.model_info(repo_id, revision=resolved.resolved, files_metadata=True, token=token),
                     repo_id, revision)
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    names = select_files(list(sizes))
    if not any(n.endswith(".safetensors") for n in names):
        raise DownloadError(f"{repo_id} has no top-level .safetensors weights; LlamaForge never loads pickled "
                            "weights (.bin/.pth), so this repo cannot be used as a base model")
    total = sum(sizes[n] or 0 for n in names)
    tracker = _Tracker(repo_id, resolved.resolved, total, len(names), progress, cancel)
    bar = tracker.bar_class()
    path: str | None = None
    for name in names:
        tracker.start_file(name)
        try:
            path = _hub_call(lambda: hf_hub_download(repo_id, name, revision=resolved, cache_dir=folder,
                                                     endpoint=endpoint, token=token, tqdm_class=bar),
                             repo_id, revision)
        except DownloadCancelled:
            log.info("download of %s cancelled during %s", repo_id, name)
            raise
        except Exception as exc:
            # The xet backend calls our progress hook from native code, which may wrap the
            # DownloadCancelled we raise there in an error of its own.
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled(f"download of {repo_id} cancelled") from exc
            raise
        tracker.finish_file(sizes[name])
    tracker.filename = None
    tracker.emit(force=True, phase="done")
    assert path is not None
    return Path(path).parent  # only top-level files are fetched, so a file's folder is the snapshot


def format_duration(seconds: float | None) -> str:
    """``95`` -> ``'1:35'``, ``3700`` -> ``'1:01:40'``; ``None`` -> ``'--:--'``."""
    if seconds is None:
        return "--:--"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_text(p: DownloadProgress) -> str:
    """One line for a log or a status bar: percent, bytes, speed, ETA, file."""
    from llamaforge_tui.core.fsutil import human_bytes

    if p.phase == "resolving":
        return f"resolving {p.repo_id}@{p.revision or 'main'} ..."
    speed = f"{human_bytes(p.speed_bps)}/s" if p.speed_bps else "-- /s"
    head = "done" if p.phase == "done" else f"{p.fraction * 100:5.1f}%"
    line = (f"{head}  {human_bytes(p.downloaded_bytes)} / {human_bytes(p.total_bytes)}  {speed}  "
            f"ETA {format_duration(p.eta_seconds)}  [{p.files_done}/{p.file_count} files]")
    return f"{line}  {p.filename}" if p.filename else line
