"""The child side of ``llama_runner``: the only module that loads llama.cpp's native library.

Run as ``python -m llamaforge_tui.core.export.llama_child`` by ``llama_runner``, never imported by the app. It
reads one JSON request per line on stdin and answers on a private copy of stdout (fd 1 itself is pointed at
stderr, so nothing llama.cpp prints can corrupt the protocol). Every answer is one JSON line; a logits array
follows its header line as raw little-endian float32 bytes. A native crash here ends only this process: the
parent sees the signal and reports it.

The model is loaded through llama.cpp's C API (ctypes bindings of ``llama-cpp-python``) rather than ``Llama``,
because ``use_extra_bufts`` must be set on ``llama_model_params`` before the model loads and ``Llama`` does not
take it. With it off, llama.cpp keeps quantized weights in its plain CPU buffers: no AMX tiles and no repacked
layouts, whose kernels crash some native builds on Intel AMX CPUs (llama.cpp PR 26954, ollama issue 17249).

``LLAMAFORGE_LLAMA_CHILD_CRASH=<op>`` (tests only) makes this process kill itself with SIGSEGV when it is asked
for ``op``, the way a crashing kernel would.
"""

from __future__ import annotations

import codecs
import ctypes
import json
import os
import re
import queue
import signal
import sys
import threading
import time
from typing import IO, Any

import numpy as np

CRASH_ENV = "LLAMAFORGE_LLAMA_CHILD_CRASH"
_BUFFER_RE = re.compile(r"(\S+) model buffer size")
_PROGRESS_RE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")


class ChildError(Exception):
    """A failure to report to the parent as a message (the process stays healthy)."""


class Channel:
    """JSON lines (and raw array bytes) to the parent, through a duplicate of the original stdout."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out

    def send(self, event: str, **fields: Any) -> None:
        self.out.write(json.dumps({"event": event, **fields}).encode() + b"\n")
        self.out.flush()

    def send_array(self, index: int, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array, dtype="<f4")
        self.send("array", index=index, shape=list(data.shape), nbytes=data.nbytes)
        self.out.write(memoryview(data).cast("B"))
        self.out.flush()


class Logs:
    """llama.cpp's log lines, kept (for the buffer types and the quantizer's progress) instead of printed."""

    def __init__(self, lc: Any) -> None:
        self.lines: list[str] = []
        self.buffers: list[str] = []  # "<type> model buffer size" lines since the last clear: what the load used
        self.on_line: Any = None

        @lc.llama_log_callback
        def callback(level: int, text: bytes, user_data: Any) -> None:
            line = text.decode("utf-8", "replace")
            self.lines.append(line)
            m = _BUFFER_RE.search(line)
            if m and m.group(1) not in self.buffers:
                self.buffers.append(m.group(1))
            del self.lines[:-400]
            if self.on_line is not None:
                self.on_line(line)

        self._callback = callback  # keep the C function pointer alive
        lc.llama_log_set(callback, ctypes.c_void_p(0))

    def clear(self) -> None:
        self.lines.clear()
        self.buffers.clear()


class Model:
    """One loaded model and context: all-position logits, greedy decoding, sampling, the vocabulary."""

    def __init__(self, lc: Any, logs: Logs, req: dict[str, Any]) -> None:
        self.lc = lc
        params = lc.llama_model_default_params()
        params.n_gpu_layers = 0
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = bool(req.get("extra_buffers", False))
        elif req.get("extra_buffers") is False:
            raise ChildError("this llama-cpp-python has no use_extra_bufts; upgrade it (pip install -U "
                             "llama-cpp-python) or set llama_cpp_extra_buffers = true")
        self.model = lc.llama_model_load_from_file(str(req["path"]).encode(), params)
        if not self.model:
            raise ChildError(f"llama.cpp could not load {req['path']}: {_last_error(logs)}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab))
        self.n_ctx = int(req.get("n_ctx") or 512)
        threads = int(req.get("n_threads") or max(1, (os.cpu_count() or 2) // 2))
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = self.n_ctx
        cparams.n_batch = self.n_ctx
        cparams.n_ubatch = min(self.n_ctx, 512)
        cparams.n_threads = cparams.n_threads_batch = threads
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise ChildError(f"llama.cpp could not make a context of {self.n_ctx} tokens: {_last_error(logs)}")
        self.adapter = None
        if req.get("lora_path"):
            self.adapter = lc.llama_adapter_lora_init(self.model, str(req["lora_path"]).encode())
            if not self.adapter:
                raise ChildError(f"llama.cpp could not load the adapter {req['lora_path']}: {_last_error(logs)}")
            adapters = (lc.llama_adapter_lora_p_ctypes * 1)(self.adapter)
            if lc.llama_set_adapters_lora(self.ctx, adapters, 1, (ctypes.c_float * 1)(1.0)):
                raise ChildError(f"llama.cpp could not apply the adapter {req['lora_path']}")
        self.batch = lc.llama_batch_init(self.n_ctx, 0, 1)
        self.n_past = 0

    def reset(self) -> None:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        self.n_past = 0

    def eval(self, ids: list[int], *, all_logits: bool) -> np.ndarray:
        """Feed ``ids`` after what is in the context; the logits of every new position (or the last one)."""
        if self.n_past + len(ids) > self.n_ctx:
            raise ChildError(f"{self.n_past + len(ids)} tokens do not fit the context of {self.n_ctx}")
        for i, tok in enumerate(ids):
            if not 0 <= tok < self.n_vocab:
                raise ChildError(f"token id {tok} is outside the vocabulary of {self.n_vocab}")
            self.batch.token[i] = tok
            self.batch.pos[i] = self.n_past + i
            self.batch.n_seq_id[i] = 1
            self.batch.seq_id[i][0] = 0
            self.batch.logits[i] = all_logits or i == len(ids) - 1
        self.batch.n_tokens = len(ids)
        rc = self.lc.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise ChildError(f"llama_decode failed (code {rc})")
        self.n_past += len(ids)
        rows = len(ids) if all_logits else 1
        ptr = self.lc.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(rows, self.n_vocab)).copy()

    def piece(self, tok: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self.lc.llama_token_to_piece(self.vocab, tok, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.lc.llama_token_to_piece(self.vocab, tok, buf, len(buf), 0, False)
        return buf.raw[:max(n, 0)]

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        out = (self.lc.llama_token * cap)()
        n = self.lc.llama_tokenize(self.vocab, data, len(data), out, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            out = (self.lc.llama_token * cap)()
            n = self.lc.llama_tokenize(self.vocab, data, len(data), out, cap, add_special, parse_special)
        return list(out[:n])

    def is_eog(self, tok: int) -> bool:
        return bool(self.lc.llama_vocab_is_eog(self.vocab, tok))

    def close(self) -> None:
        self.lc.llama_batch_free(self.batch)
        if self.adapter:
            self.lc.llama_adapter_lora_free(self.adapter)
        self.lc.llama_free(self.ctx)
        self.lc.llama_model_free(self.model)


def _last_error(logs: Logs) -> str:
    lines = [ln.strip() for ln in logs.lines if ln.strip()]
    return lines[-1] if lines else "no details"


def _sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p)
    if 0 < top_p < 1:
        keep = int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1
        order = order[:keep]
    q = p[order] / p[order].sum()
    return int(order[rng.choice(len(order), p=q)])


class Inbox:
    """The parent's requests, one JSON object per stdin line, read by a thread so a ``cancel`` is seen between
    tokens. (A ``select`` on the buffered stdin missed a cancel that the buffer had already read along with its
    request: the pipe looked empty while the line sat in Python's buffer.) The thread only reads; llama.cpp is
    called from the main thread alone."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._held: list[dict[str, Any] | None] = []
        threading.Thread(target=self._read, args=(stream,), name="llama-child-stdin", daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            try:
                self._lines.put(json.loads(raw))
            except ValueError:
                self._lines.put({"op": "invalid", "line": raw[:200].decode("utf-8", "replace")})
        self._lines.put(None)  # the parent closed the pipe (or died)

    def next(self) -> dict[str, Any] | None:
        """The next request, blocking; None when the parent has gone."""
        return self._held.pop(0) if self._held else self._lines.get()

    def cancelled(self) -> bool:
        """A ``cancel`` (or the parent's end) waiting; other requests stay queued, in order."""
        while True:
            try:
                req = self._lines.get_nowait()
            except queue.Empty:
                break
            self._held.append(req)
        for i, req in enumerate(self._held):
            if req is None:
                return True  # keep the None: the main loop ends on it
            if req.get("op") == "cancel":
                del self._held[i]
                return True
        return False


def generate(model: Model, req: dict[str, Any], chan: Channel, inbox: Inbox) -> None:
    """Stream tokens as ``token`` events; stop at an end-of-generation token, a stop string or ``max_tokens``."""
    prompt = req.get("prompt_ids")
    if prompt is None:
        prompt = model.tokenize(str(req.get("prompt_text", "")), bool(req.get("add_special", True)), True)
    if not prompt:
        raise ChildError("the prompt is empty")
    max_tokens = max(0, min(int(req.get("max_tokens", 256)), model.n_ctx - len(prompt)))
    stops = [s for s in req.get("stop") or [] if s]
    stop_ids = set(req.get("stop_ids") or [])
    rng = np.random.default_rng(req.get("seed"))
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    model.reset()
    started = time.perf_counter()
    logits = model.eval(list(prompt), all_logits=False)[-1]
    first = time.perf_counter()
    text, sent, ids, reason = "", 0, [], "length"
    while len(ids) < max_tokens:
        tok = _sample(logits, float(req.get("temperature", 0.0)), float(req.get("top_p", 1.0)), rng)
        if tok in stop_ids or model.is_eog(tok):
            reason = "stop"
            break
        ids.append(tok)
        text += decoder.decode(model.piece(tok))
        hit = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        if hit >= 0:
            text, reason = text[:hit], "stop"
            break
        hold = max((len(s) - 1 for s in stops), default=0)  # a stop string may still be forming at the end
        safe = max(sent, len(text) - hold)
        if safe > sent:
            chan.send("token", id=tok, text=text[sent:safe])
            sent = safe
        if inbox.cancelled():
            reason = "cancelled"
            break
        if len(ids) < max_tokens:
            logits = model.eval([tok], all_logits=False)[-1]
    if text[sent:]:
        chan.send("token", id=ids[-1] if ids else -1, text=text[sent:])
    elapsed = time.perf_counter() - first
    chan.send("done", ids=ids, text=text, finish_reason=reason, prompt_tokens=len(prompt),
              prompt_seconds=first - started,
              tokens_per_second=(len(ids) / elapsed) if ids and elapsed > 0 else 0.0)


def quantize(lc: Any, logs: Logs, req: dict[str, Any], chan: Channel) -> None:
    name = "LLAMA_FTYPE_MOSTLY_" + str(req["ftype"]).upper()
    if not hasattr(lc, name):
        raise ChildError(f"this llama.cpp has no {req['ftype']} quantization")
    params = lc.llama_model_quantize_default_params()
    params.ftype = int(getattr(lc, name))
    params.nthread = int(req.get("nthread") or max(1, os.cpu_count() or 1))

    def on_line(line: str) -> None:
        m = _PROGRESS_RE.search(line)
        if m:
            chan.send("progress", done=int(m.group(1)), total=int(m.group(2)))

    logs.on_line = on_line
    try:
        rc = lc.llama_model_quantize(str(req["src"]).encode(), str(req["dst"]).encode(), ctypes.byref(params))
    finally:
        logs.on_line = None
    if rc != 0:
        raise ChildError(f"llama.cpp could not quantize {req['src']} to {req['ftype']} (code {rc}): "
                         f"{_last_error(logs)}")
    chan.send("done")


def handle(lc: Any, logs: Logs, model: Model | None, req: dict[str, Any], chan: Channel,
           inbox: Inbox) -> Model | None:
    op = req.get("op")
    if os.environ.get(CRASH_ENV) == op:
        os.kill(os.getpid(), signal.SIGSEGV)
    if op == "quantize":
        quantize(lc, logs, req, chan)
        return model
    if op == "open":
        if model is not None:
            model.close()
        logs.clear()
        model = Model(lc, logs, req)
        chan.send("done", n_vocab=model.n_vocab, n_ctx=model.n_ctx, buffer_types=list(logs.buffers),
                  extra_buffers=bool(req.get("extra_buffers", False)))
        return model
    if model is None:
        raise ChildError(f"{op!r} needs an open model")
    if op == "logits":
        for i, seq in enumerate(req["sequences"]):
            model.reset()
            chan.send_array(i, model.eval([int(t) for t in seq], all_logits=True))
        chan.send("done")
    elif op == "greedy":
        stop_ids = set(req.get("stop_ids") or [])
        model.reset()
        logits = model.eval([int(t) for t in req["prompt_ids"]], all_logits=False)[-1]
        out: list[int] = []
        for _ in range(int(req["max_new_tokens"])):
            nxt = int(np.argmax(logits))
            if nxt in stop_ids or model.n_past >= model.n_ctx:
                break
            out.append(nxt)
            logits = model.eval([nxt], all_logits=False)[-1]
        chan.send("done", ids=out)
    elif op == "generate":
        generate(model, req, chan, inbox)
    elif op == "tokenize":
        chan.send("done", ids=model.tokenize(str(req["text"]), bool(req.get("add_special", True)),
                                              bool(req.get("parse_special", True))))
    elif op == "detokenize":
        data = b"".join(model.piece(int(t)) for t in req["ids"])
        chan.send("done", text=data.decode("utf-8", "replace"))
    else:
        raise ChildError(f"unknown request {op!r}")
    return model


def main() -> int:
    proto = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # whatever native code prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    chan = Channel(proto)
    inbox = Inbox(sys.stdin.buffer)
    try:
        import llama_cpp as lc
    except ImportError as exc:
        chan.send("error", kind="missing", message=str(exc))
        return 0
    logs = Logs(lc)
    lc.llama_backend_init()
    chan.send("ready", version=getattr(lc, "__version__", "?"))
    model: Model | None = None
    while (req := inbox.next()) is not None:
        if req.get("op") == "close":
            break
        if req.get("op") == "cancel":
            continue  # arrived after the generation had already ended
        try:
            model = handle(lc, logs, model, req, chan, inbox)
        except ChildError as exc:
            chan.send("error", kind="failed", message=str(exc))
    if model is not None:
        model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
