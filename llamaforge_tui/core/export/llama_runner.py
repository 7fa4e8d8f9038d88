"""Every use of llama.cpp goes through here, and runs in a child process.

llama.cpp is native code: a bad kernel (the AMX tile setup of some native builds on Intel Sapphire/Emerald/
Granite Rapids, llama.cpp PR 26954) dies with a signal, and in-process that takes the TUI, a training run in
it, or the whole test session down. So the model lives in a child (``python -m
llamaforge_tui.core.export.llama_child``); results and progress stream back over a pipe; if the child dies
from a signal the caller gets one ``LlamaCppCrashed`` naming what ran, the signal, the state of the file on
disk and the fix to try. The app itself never imports ``llama_cpp``.

llama.cpp's extra buffer types (AMX tiles, repacked quantized layouts) are off by default: the child sets
``use_extra_bufts = False`` on ``llama_model_params`` before the model loads. The same build then computes
those files correctly, at some cost in speed. The setting ``llama_cpp_extra_buffers = true`` turns them back
on (pass ``extra_buffers=settings.llama_cpp_extra_buffers``; ``extra_buffers_setting(settings)`` reads it).

API (all blocking; ``stop_event`` ends the child and raises ``ExportCancelled``):

- ``LlamaSession(gguf_path, *, lora_path=None, n_ctx=512, n_threads=None, extra_buffers=False, what=...,
  file_note=..., stop_event=None)``: one loaded model in one child; a context manager. Methods:
  ``logits(sequences) -> list[np.ndarray]`` (float32, one row per position), ``greedy(prompt_ids,
  max_new_tokens, stop_ids) -> list[int]``, ``generate(prompt, *, max_tokens=256, temperature=0.8,
  top_p=0.95, seed=None, stop=(), stop_ids=(), on_token=None, stop_event=None, add_special=True) ->
  Generation`` (``prompt``: token ids, or text that llama.cpp tokenizes with special tokens parsed;
  ``on_token(text)`` gets each piece of text as it is decoded, held back only while it might be the start
  of a stop string), ``tokenize(text, *, add_special=True, parse_special=True)``, ``detokenize(ids)``,
  ``close()``. ``info`` holds the vocabulary size, the context and the buffer types llama.cpp used.
- ``generate(gguf_path, prompt, *, max_tokens, temperature, top_p, seed, stop, on_token, stop_event,
  lora_path=None, n_ctx=2048, extra_buffers=False) -> Generation``: one answer from a fresh child.
- ``llama_logits(gguf_path, sequences, *, lora_path=None, extra_buffers=False, ...)``: all-position logits.
- ``quantize_file(src, dst_tmp, ftype, *, threads=None, on_progress=None, stop_event=None)``:
  ``llama_model_quantize`` (``ftype``: ``Q4_K_M``, ``Q5_K_M``, ``Q6_K``...); progress as (done, total) tensors.
- ``llama_cpp_installed()``: whether the child can import ``llama_cpp`` (checked without loading it here).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from llamaforge_tui.core.gguf.writer import ExportCancelled, ExportError

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "llamaforge-tui[verify]"'
REBUILD_HINT = 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --force-reinstall --no-cache-dir llama-cpp-python'
_CHILD_MODULE = "llamaforge_tui.core.export.llama_child"
_POLL_S = 0.1


class LlamaCppCrashed(ExportError):
    """llama.cpp's process died from a signal (or exited abnormally); the app and the files on disk are fine."""

    def __init__(self, message: str, *, signal_name: str | None, what: str) -> None:
        super().__init__(message)
        self.signal_name = signal_name
        self.what = what


@dataclass(frozen=True)
class LlamaInfo:
    n_vocab: int
    n_ctx: int
    buffer_types: tuple[str, ...]  # e.g. ("CPU_Mapped",), or ("CPU_Mapped", "CPU_REPACK") with extra buffers
    extra_buffers: bool


@dataclass(frozen=True)
class Generation:
    text: str
    ids: list[int]
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    tokens_per_second: float


def llama_cpp_installed() -> bool:
    if "llama_cpp" in sys.modules:  # a test may have hidden it (sys.modules["llama_cpp"] = None)
        return sys.modules["llama_cpp"] is not None
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):
        return False


def require_llama_cpp(what: str = "this") -> None:
    if not llama_cpp_installed():
        raise ExportError(f"{what} needs llama-cpp-python, which is not installed; install it with: {INSTALL_HINT}")


def extra_buffers_setting(settings: Any) -> bool:
    return getattr(settings, "llama_cpp_extra_buffers", False) is True


def _signal_name(returncode: int) -> str | None:
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[3])  # the folder that holds the llamaforge_tui package
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONFAULTHANDLER", "1")  # a native crash leaves a Python stack in the child's log
    return env


class _Child:
    """The child process and the thread that reads its answers into a queue."""

    def __init__(self, what: str, file_note: str, extra_buffers: bool) -> None:
        self.what = what
        self.file_note = file_note
        self.extra_buffers = extra_buffers
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the child; closed in close())
        self.proc = subprocess.Popen([sys.executable, "-m", _CHILD_MODULE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, env=_child_env(), bufsize=0)
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, args=(self.proc.stdout,), name="llama-child-reader",
                                       daemon=True)
        self.reader.start()

    def _read(self, out: IO[bytes]) -> None:
        try:
            for line in iter(out.readline, b""):
                event = json.loads(line)
                if event.get("event") == "array":
                    data = _read_exact(out, int(event["nbytes"]))
                    if data is None:
                        break
                    event["array"] = np.frombuffer(data, dtype="<f4").reshape(event["shape"])
                self.events.put(event)
        except (OSError, ValueError) as exc:
            log.debug("llama.cpp child stream ended: %s", exc)
        finally:
            self.events.put(None)

    def send(self, request: dict[str, Any]) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child is gone; the reader's end of stream says how

    def next_event(self, stop_event: threading.Event | None, on_stop: Callable[[], None] | None = None
                   ) -> dict[str, Any]:
        """The next answer; raises on the child's death, its error, or a stop request."""
        stopping = False
        while True:
            if stop_event is not None and stop_event.is_set() and not stopping:
                if on_stop is None:
                    self.kill()
                    raise ExportCancelled(f"stopped: {self.what}")
                on_stop()
                stopping = True
            try:
                event = self.events.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if event is None:
                raise self._death()
            if event.get("event") == "error":
                if event.get("kind") == "missing":
                    raise ExportError(f"{self.what} needs llama-cpp-python, which cannot be imported "
                                      f"({event.get('message')}); install it with: {INSTALL_HINT}")
                raise ExportError(str(event.get("message")))
            return event

    def _death(self) -> ExportError:
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode or -9
        tail = self.stderr_tail()
        if tail:
            log.warning("llama.cpp child (%s) stderr:\n%s", self.what, tail)
        name = _signal_name(code)
        if name is None:  # a Python-level failure in the child: a bug, not the CPU; say what it printed
            last = tail.splitlines()[-1] if tail else "no output"
            return LlamaCppCrashed(f"llama.cpp's process exited unexpectedly (code {code}) during {self.what}: "
                                   f"{last}. {self.file_note}", signal_name=None, what=self.what)
        extra = (" Or set llama_cpp_extra_buffers = false in settings.toml (AMX/repacked buffers)."
                 if self.extra_buffers else "")
        return LlamaCppCrashed(
            f"llama.cpp crashed with {name} during {self.what}. {self.file_note} The app is unaffected. If this "
            f"llama.cpp build was made for this CPU's native instructions, rebuild it without them: "
            f"{REBUILD_HINT}.{extra}", signal_name=name, what=self.what)

    def stderr_tail(self, limit: int = 4000) -> str:
        with contextlib.suppress(OSError, ValueError):
            self.stderr.seek(0, os.SEEK_END)
            size = self.stderr.tell()
            self.stderr.seek(max(0, size - limit))
            return self.stderr.read().decode("utf-8", "replace").strip()
        return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.send({"op": "close"})
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.reader.join(timeout=5)
        for stream in (self.proc.stdout, self.stderr):
            with contextlib.suppress(OSError, AttributeError):
                stream.close()


def _read_exact(out: IO[bytes], n: int) -> bytes | None:
    parts, got = [], 0
    while got < n:
        chunk = out.read(n - got)
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _start(what: str, file_note: str, extra_buffers: bool, stop_event: threading.Event | None) -> _Child:
    require_llama_cpp(what)
    child = _Child(what, file_note, extra_buffers)
    try:
        child.next_event(stop_event)  # "ready": llama_cpp imported in the child
    except BaseException:
        child.close()
        raise
    return child


class LlamaSession:
    """One model (plus an optional LoRA adapter) loaded in a llama.cpp child process."""

    def __init__(self, gguf_path: Path | str, *, lora_path: Path | str | None = None, n_ctx: int = 512,
                 n_threads: int | None = None, extra_buffers: bool = False, what: str | None = None,
                 file_note: str | None = None, stop_event: threading.Event | None = None) -> None:
        path = Path(gguf_path)
        self.stop_event = stop_event
        what = what or f"work on {path.name}"
        note = file_note or f"{path} on disk is complete and untouched."
        self._child = _start(what, note, extra_buffers, stop_event)
        try:
            self._child.send({"op": "open", "path": str(path), "lora_path": str(lora_path) if lora_path else None,
                              "n_ctx": int(n_ctx), "n_threads": n_threads, "extra_buffers": bool(extra_buffers)})
            opened = self._child.next_event(stop_event)
        except BaseException:
            self._child.close()
            raise
        self.info = LlamaInfo(int(opened["n_vocab"]), int(opened["n_ctx"]), tuple(opened["buffer_types"]),
                              bool(opened["extra_buffers"]))

    def __enter__(self) -> LlamaSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def n_ctx(self) -> int:
        return self.info.n_ctx

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        self._child.send(request)
        return self._child.next_event(self.stop_event)

    def logits(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Logits of every position of each sequence, each evaluated from an empty context."""
        for s in sequences:
            if len(s) > self.n_ctx:
                raise ExportError(f"sequence of {len(s)} tokens is longer than the context {self.n_ctx}")
        self._child.send({"op": "logits", "sequences": [[int(t) for t in s] for s in sequences]})
        out: list[np.ndarray] = []
        while True:
            event = self._child.next_event(self.stop_event)
            if event["event"] == "array":
                out.append(event["array"])
            elif event["event"] == "done":
                return out

    def greedy(self, prompt_ids: Sequence[int], max_new_tokens: int, stop_ids: set[int] | Sequence[int]) -> list[int]:
        event = self._call({"op": "greedy", "prompt_ids": [int(t) for t in prompt_ids],
                            "max_new_tokens": int(max_new_tokens), "stop_ids": sorted(int(t) for t in stop_ids)})
        return list(event["ids"])

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return list(self._call({"op": "tokenize", "text": text, "add_special": add_special,
                                "parse_special": parse_special})["ids"])

    def detokenize(self, ids: Sequence[int]) -> str:
        return str(self._call({"op": "detokenize", "ids": [int(t) for t in ids]})["text"])

    def generate(self, prompt: str | Sequence[int], *, max_tokens: int = 256, temperature: float = 0.8,
                 top_p: float = 0.95, seed: int | None = None, stop: Sequence[str] = (),
                 stop_ids: Sequence[int] = (), on_token: Callable[[str], None] | None = None,
                 stop_event: threading.Event | None = None, add_special: bool = True) -> Generation:
        """Sample an answer, streaming its text to ``on_token``; ``stop_event`` ends it early (kept, not lost)."""
        request: dict[str, Any] = {"op": "generate", "max_tokens": int(max_tokens), "temperature": float(temperature),
                                   "top_p": float(top_p), "seed": seed, "stop": list(stop),
                                   "stop_ids": [int(t) for t in stop_ids], "add_special": add_special}
        if isinstance(prompt, str):
            request["prompt_text"] = prompt
        else:
            request["prompt_ids"] = [int(t) for t in prompt]
        self._child.send(request)
        stopper = stop_event or self.stop_event
        while True:
            event = self._child.next_event(stopper, on_stop=lambda: self._child.send({"op": "cancel"}))
            if event["event"] == "token":
                if on_token is not None:
                    on_token(str(event["text"]))
            elif event["event"] == "done":
                return Generation(str(event["text"]), list(event["ids"]), str(event["finish_reason"]),
                                  int(event["prompt_tokens"]), float(event["tokens_per_second"]))

    def close(self) -> None:
        self._child.close()


def llama_logits(gguf_path: Path | str, sequences: Sequence[Sequence[int]], *, lora_path: Path | str | None = None,
                 extra_buffers: bool = False, what: str | None = None, file_note: str | None = None,
                 stop_event: threading.Event | None = None) -> list[np.ndarray]:
    n_ctx = max(64, max((len(s) for s in sequences), default=0) + 8)
    with LlamaSession(gguf_path, lora_path=lora_path, n_ctx=n_ctx, extra_buffers=extra_buffers, what=what,
                      file_note=file_note, stop_event=stop_event) as session:
        return session.logits(sequences)


def generate(gguf_path: Path | str, prompt: str | Sequence[int], *, max_tokens: int = 256, temperature: float = 0.8,
             top_p: float = 0.95, seed: int | None = None, stop: Sequence[str] = (),
             on_token: Callable[[str], None] | None = None, stop_event: threading.Event | None = None,
             lora_path: Path | str | None = None, n_ctx: int = 2048, extra_buffers: bool = False) -> Generation:
    with LlamaSession(gguf_path, lora_path=lora_path, n_ctx=n_ctx, extra_buffers=extra_buffers,
                      what=f"chat generation with {Path(gguf_path).name}") as session:
        return session.generate(prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                stop=stop, on_token=on_token, stop_event=stop_event)


def quantize_file(src: Path | str, dst: Path | str, ftype: str, *, threads: int | None = None,
                  on_progress: Callable[[int, int], None] | None = None, stop_event: threading.Event | None = None,
                  file_note: str | None = None) -> None:
    """``llama_model_quantize(src -> dst)`` in a child; the caller owns ``dst`` (write it to a temporary name)."""
    what = f"{ftype.upper()} quantization with llama.cpp"
    note = file_note or f"The input {src} is complete and untouched; no output was kept."
    child = _start(what, note, False, stop_event)
    try:
        child.send({"op": "quantize", "src": str(src), "dst": str(dst), "ftype": ftype.upper(), "nthread": threads})
        while True:
            event = child.next_event(stop_event)
            if event["event"] == "progress":
                if on_progress is not None:
                    on_progress(int(event["done"]), int(event["total"]))
            elif event["event"] == "done":
                return
    finally:
        child.close()
