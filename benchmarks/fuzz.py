"""Fuzz every parser of files that come from outside, each input in a worker with a time and a memory limit.

For each parser, N seeded inputs (``tests/fixtures/fuzz_inputs.py``: mutated valid files, synthetic worst
cases, junk) run in a worker process whose address space is capped (``RLIMIT_AS``, 512 MiB by default) and
whose every input has a time limit (2 s, ``setitimer``; a worker that does not answer 3 s later is killed).
An input is *accepted*, *refused* (the project's own error, or a row/status/record error), or an *unexpected
failure*: any other exception, a time-out (hang), a memory error (runaway allocation), a crash of the
worker, or output that is not valid UTF-8.

Run: ``python benchmarks/fuzz.py [--inputs 10000] [--workers 2] [--only gguf,template]``; reproduce one input
with ``--only PARSER --index N --show``. Exit status 1 when any input failed unexpectedly.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Generator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

ACCEPTED, REFUSED, UNEXPECTED = "accepted", "refused", "unexpected"
TIME_LIMIT_S = 2.0
KILL_GRACE_S = 3.0
MEMORY_LIMIT = 512 * 1024 * 1024


class Hang(BaseException):
    """Raised by the per-input timer (a BaseException, so no ``except Exception`` in the code can eat it)."""


class BadOutput(AssertionError):
    """A parser gave a result that breaks a promise (output not valid UTF-8, a round trip that differs)."""


def _utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadOutput(f"{what} is not valid UTF-8: {exc}") from None


# ---------------------------------------------------------------------------------------------- targets

def t_gguf(rng: random.Random, work: Path) -> Generator[None, None, str]:
    from fixtures.fuzz_inputs import gguf_input

    from llamaforge_tui.core.errors import GgufError
    from llamaforge_tui.core.fsutil import safe_json_value
    from llamaforge_tui.core.gguf.file import GgufFile
    from llamaforge_tui.core.gguf.info import GgufSummary, summarize

    path = work / "model.gguf"
    path.write_bytes(gguf_input(rng))
    yield
    try:
        with GgufFile(path) as gf:
            summary = summarize(gf)
            for key in list(gf.kv):
                gf.get(key)
            for info in gf.tensors[:4]:
                gf.tensor_array(info)
    except GgufError:
        return REFUSED
    doc = json.loads(json.dumps(summary.to_dict()))
    if GgufSummary.from_dict(doc) != summary:
        raise BadOutput("summary cache round trip differs")
    _utf8(json.dumps(safe_json_value(summary.to_dict()), ensure_ascii=False), "summary JSON")
    return ACCEPTED


def t_summary_cache(rng: random.Random, work: Path) -> Generator[None, None, str]:
    from fixtures.fuzz_inputs import json_text, random_json_value, small_valid_gguf

    from llamaforge_tui.core.gguf.info import GgufSummary, SummaryCache, summarize_gguf

    gguf = work / "ok.gguf"
    if not gguf.exists():
        gguf.write_bytes(small_valid_gguf())
    good = summarize_gguf(gguf)
    st = os.stat(gguf)
    entry = {"stamp": [st.st_size, st.st_mtime_ns], "summary": good.to_dict()}
    r = rng.random()
    if r < 0.5:  # a corrupt entry for this very file: a field of the wrong type, missing, or junk
        summary = dict(entry["summary"])
        key = rng.choice(list(summary))
        summary[key] = random_json_value(rng) if rng.random() < 0.8 else summary.pop(key, None)
        doc = {"format": 1, "entries": {str(gguf): {**entry, "summary": rng.choice([summary, [], "x", None])}}}
        text = json.dumps(doc)
    else:
        text = json_text(rng, random_json_value(rng))
    cache_file = work / "cache.json"
    cache_file.write_text(text, encoding="utf-8", errors="surrogatepass")
    yield
    cache = SummaryCache(cache_file)
    got = cache.summarize(gguf)
    if got != good and (r >= 0.5 or not isinstance(summary, dict) or got != GgufSummary.from_dict(summary)):
        raise BadOutput("a corrupt cache entry was trusted")  # only an entry of the right types may be used
    cache.save()
    return ACCEPTED


def t_manifest(rng: random.Random, work: Path) -> Generator[None, None, str]:
    from fixtures.fuzz_inputs import manifest_input

    from llamaforge_tui.core.ollama.manifest import (
        ManifestError,
        is_manifest_list,
        parse_json,
        parse_manifest,
        parse_manifest_list,
        pick_list_entry,
        read_manifest_bytes,
    )

    path = work / "manifest"
    path.write_bytes(manifest_input(rng))
    yield
    try:
        doc = parse_json(read_manifest_bytes(path), path)
        if is_manifest_list(doc):
            pick_list_entry(parse_manifest_list(doc, work, work / "manifest"))
        else:
            parse_manifest(doc, work, work / "manifest")
    except ManifestError:
        return REFUSED
    return ACCEPTED


def _special_file(rng: random.Random, path: Path) -> None:
    """A blob that is not a plain small file: a FIFO, a symlink loop, a folder, a huge sparse file, /dev/zero."""
    kind = rng.randrange(5)
    if kind == 0:
        os.mkfifo(path)
    elif kind == 1:
        os.symlink(path.name, path)  # points at itself: ELOOP
    elif kind == 2:
        path.mkdir()
    elif kind == 3:
        with open(path, "wb") as fh:
            fh.truncate(rng.choice([5 * 1024 * 1024, 1 << 34]))
    else:
        os.symlink("/dev/zero", path)


def t_store(rng: random.Random, work: Path) -> Generator[None, None, str]:
    from fixtures.fuzz_inputs import DIGEST, json_text, manifest_doc, manifest_input, random_json_value, small_valid_gguf

    from llamaforge_tui.core.errors import LlamaForgeError
    from llamaforge_tui.core.fsutil import safe_json_value
    from llamaforge_tui.core.ollama.model import STATUSES
    from llamaforge_tui.core.ollama.store import scan_store
    from llamaforge_tui.core.settings import Settings

    root = work / "store"
    shutil.rmtree(root, ignore_errors=True)
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    blob = blobs / ("sha256-" + DIGEST[7:])
    r = rng.random()
    if r < 0.4:
        _special_file(rng, blob)
    elif r < 0.6:
        blob.write_bytes(small_valid_gguf())
    else:
        blob.write_bytes(json_text(rng, random_json_value(rng)).encode("utf-8", "surrogatepass"))
    name = rng.choice([b"model", b"m\xff\xfe", b"caf\xc3\xa9", b"x" * 200])
    folder = os.path.join(os.fsencode(root), b"manifests", b"registry.ollama.ai", b"library", name)
    os.makedirs(folder)
    tag = os.path.join(folder, rng.choice([b"latest", b"t\x80"]))
    r = rng.random()
    if r < 0.15:
        _special_file(rng, Path(os.fsdecode(tag)))
    else:
        data = manifest_input(rng) if r < 0.5 else json.dumps(manifest_doc(rng)).encode()
        with open(tag, "wb") as fh:
            fh.write(data)
    yield
    scan = scan_store(Settings(models_dirs=[str(root)]), use_summary_cache=rng.random() < 0.5)
    refused = False
    for model in scan.models:
        if model.status not in STATUSES:
            raise BadOutput(f"unknown status {model.status!r}")
        refused |= model.status != "ok"
        for kind in ("template", "system", "license"):
            try:
                text = model.read_layer_text(kind)
            except LlamaForgeError:
                refused = True
                continue
            _utf8(text or "", f"{kind} layer text")
        try:
            model.params()
        except LlamaForgeError:
            refused = True
        out = json.dumps(safe_json_value(model.to_dict()), ensure_ascii=False, default=str)
        _utf8(out, "models --json")
    for problem in scan.problems:
        _utf8(safe_json_value(problem), "a scan problem")
    return REFUSED if refused or scan.problems else ACCEPTED


def t_dataset(rng: random.Random, work: Path) -> Generator[None, None, str]:
    from fixtures.fuzz_inputs import dataset_input

    from llamaforge_tui.core.data.dataset import iter_records, load_dataset, scan_token_stats
    from llamaforge_tui.core.data.records import RecordError
    from llamaforge_tui.core.errors import LlamaForgeError

    data, suffix = dataset_input(rng)
    (work / "ds").mkdir(exist_ok=True)
    path = work / "ds" / f"data{suffix}"
    if path.exists() or path.is_symlink():
        path.unlink()
    if rng.random() < 0.02:
        os.mkfifo(path)
    else:
        path.write_bytes(data)
    yield
    refused = False
    try:
        load = load_dataset(path, max_record_bytes=65536)
        for err in load.errors:
            _utf8(err.reason, "a record error's reason")
        refused = bool(load.errors)
        for item in iter_records(path, max_record_bytes=65536):
            if isinstance(item, RecordError):
                _utf8(item.reason, "a record error's reason")
        scan_token_stats(path, None, None, max_seq_len=64)
    except LlamaForgeError as exc:
        _utf8(str(exc), "a dataset error")
        return REFUSED
    return REFUSED if refused else ACCEPTED


def t_template(rng: random.Random, work: Path) -> Generator[None, None, str]:
    from fixtures.fuzz_inputs import template_input

    from llamaforge_tui.core.ollama.go_template import GoTemplateError
    from llamaforge_tui.core.ollama.template import render_ollama

    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a"}]
    src, shown = template_input(rng), messages[rng.randrange(3):]
    yield
    try:
        render_ollama(src, shown)
    except GoTemplateError:
        return REFUSED
    return ACCEPTED


def t_modelfile(rng: random.Random, work: Path) -> Generator[None, None, str]:
    from fixtures.fuzz_inputs import modelfile_text

    from llamaforge_tui.core.gguf.writer import ExportError
    from llamaforge_tui.core.ollama.modelfile import ModelfileSpec, parse_modelfile
    from llamaforge_tui.core.ollama.modelfile_grammar import lost_character, quote_value

    template, system = modelfile_text(rng), (modelfile_text(rng) if rng.random() < 0.7 else None)
    stops = [modelfile_text(rng) for _ in range(rng.randint(0, 3))]
    spec = ModelfileSpec("./model.gguf", template=template, system=system, parameters={"stop": stops} if stops else {})
    yield
    try:
        text = spec.render()
    except ExportError:
        blocks = [t for t in (template, system) if t is not None]
        if all('"""' not in t and lost_character(t) is None for t in blocks) and all(quote_value(s) for s in stops):
            raise BadOutput("refused a spec that Ollama's grammar can hold") from None
        return REFUSED
    parsed = parse_modelfile(text)
    got = (parsed.get("from"), parsed.get("template"), parsed.get("system"), parsed["parameters"].get("stop", []))
    if got != ("./model.gguf", template, system, stops):
        raise BadOutput(f"round trip differs: wrote {(template, system, stops)!r}, read {got[1:]!r}")
    return ACCEPTED


def t_repo_url(rng: random.Random, work: Path) -> Generator[None, None, str]:
    from fixtures.fuzz_inputs import url_input

    from llamaforge_tui.core.model.basemodel import repo_from_url

    url = url_input(rng)
    yield
    return ACCEPTED if repo_from_url(url) else REFUSED


# Each target is a generator: it makes its input, yields (the time limit starts there), then parses it and
# returns the outcome.
TARGETS: dict[str, Callable[[random.Random, Path], Generator[None, None, str]]] = {
    "gguf header + summary": t_gguf, "gguf summary cache": t_summary_cache, "ollama manifest": t_manifest,
    "ollama store scan": t_store, "dataset readers + records": t_dataset, "go template": t_template,
    "modelfile round trip": t_modelfile, "base model repo_url": t_repo_url,
}
SHORT = {"gguf": "gguf header + summary", "cache": "gguf summary cache", "manifest": "ollama manifest",
         "store": "ollama store scan", "dataset": "dataset readers + records", "template": "go template",
         "modelfile": "modelfile round trip", "url": "base model repo_url"}


# ---------------------------------------------------------------------------------------------- worker

def _alarm(signum: int, frame: object) -> None:
    raise Hang


def run_one(parser: str, index: int, work: Path) -> tuple[str, str]:
    rng = random.Random(f"{parser}:{index}")
    steps = TARGETS[parser](rng, work)
    try:
        next(steps)  # the input is made (not timed)
    except Exception as exc:  # a broken harness is reported, not a crash of the worker
        return UNEXPECTED, f"could not make the input: {type(exc).__name__}: {exc}"
    signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT_S)
    try:
        next(steps)
        raise AssertionError("a target yields once")
    except StopIteration as done:
        return done.value, ""
    except Hang:
        return UNEXPECTED, f"hang: over {TIME_LIMIT_S:.0f} s"
    except MemoryError:
        return UNEXPECTED, "runaway allocation: MemoryError"
    except BaseException as exc:  # the point of fuzzing: anything else is a finding
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        return UNEXPECTED, f"{type(exc).__name__}: {str(exc)[:200]} ({Path(tb.filename).name}:{tb.lineno})"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def worker(conn: mp.connection.Connection, memory_limit: int) -> None:
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    logging.disable(logging.WARNING)  # refusals log warnings; the table counts them
    work = Path(tempfile.mkdtemp(prefix="lf-fuzz-"))
    os.environ["LLAMAFORGE_DATA_DIR"] = str(work / "data")
    signal.signal(signal.SIGALRM, _alarm)
    for parser in TARGETS:  # import everything before the memory cap
        run_one(parser, -1, work)
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    try:
        while True:
            job = conn.recv()
            if job is None:
                return
            conn.send(run_one(*job, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


class Worker:
    def __init__(self, ctx: mp.context.BaseContext, memory_limit: int) -> None:
        self.ctx, self.memory_limit = ctx, memory_limit
        self.start()

    def start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=worker, args=(child, self.memory_limit), daemon=True)
        self.proc.start()
        self.job: tuple[str, int] | None = None
        self.sent = 0.0

    def send(self, job: tuple[str, int]) -> None:
        self.job, self.sent = job, time.monotonic()
        self.conn.send(job)

    def restart(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.start()


def fuzz(parsers: list[str], n: int, workers: int, memory_limit: int, first: int = 0) -> dict[str, dict]:
    ctx = mp.get_context("forkserver")
    results = {p: {"inputs": 0, ACCEPTED: 0, REFUSED: 0, UNEXPECTED: 0, "failures": [], "seconds": 0.0} for p in parsers}
    jobs = [(p, i) for p in parsers for i in range(first, first + n)]
    pool = [Worker(ctx, memory_limit) for _ in range(workers)]
    started = {p: 0.0 for p in parsers}
    pending = list(reversed(jobs))

    def record(job: tuple[str, int], outcome: str, detail: str) -> None:
        res = results[job[0]]
        res["inputs"] += 1
        res[outcome] += 1
        if outcome == UNEXPECTED:
            res["failures"].append((job[1], detail))

    t0 = time.monotonic()
    for w in pool:
        if pending:
            w.send(pending.pop())
    while any(w.job for w in pool):
        for w in pool:
            if w.job is None:
                continue
            job = w.job
            if w.conn.poll(0.01):
                try:
                    outcome, detail = w.conn.recv()
                except (EOFError, OSError):  # the worker died mid-answer
                    outcome, detail = UNEXPECTED, f"worker died (exit code {w.proc.exitcode})"
                    w.restart()
            elif not w.proc.is_alive():
                outcome, detail = UNEXPECTED, f"worker died (exit code {w.proc.exitcode})"
                w.restart()
            elif time.monotonic() - w.sent > TIME_LIMIT_S + KILL_GRACE_S:
                outcome, detail = UNEXPECTED, "hang: the worker did not answer; killed"
                w.restart()
            else:
                continue
            started[job[0]] += time.monotonic() - w.sent
            record(job, outcome, detail)
            w.job = None
            if pending:
                w.send(pending.pop())
    for w in pool:
        w.conn.send(None)
        w.proc.join(timeout=5)
    for p in parsers:
        results[p]["seconds"] = started[p]
    results["_wall"] = time.monotonic() - t0  # type: ignore[assignment]
    return results


def table(results: dict[str, dict]) -> str:
    header = ["parser", "inputs", "accepted", "refusals", "unexpected failures", "seconds"]
    rows = [header] + [[p, f"{r['inputs']:,}", f"{r[ACCEPTED]:,}", f"{r[REFUSED]:,}", f"{r[UNEXPECTED]:,}",
                        f"{r['seconds']:.0f}"] for p, r in results.items() if not p.startswith("_")]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=10_000, help="inputs per parser (default 10000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-mb", type=int, default=MEMORY_LIMIT // 2**20, help="address-space cap per worker")
    ap.add_argument("--only", help="comma-separated parsers: " + ", ".join(SHORT))
    ap.add_argument("--index", type=int, help="run this one input index only (with --only)")
    ap.add_argument("--show", action="store_true", help="print the input's outcome in this process (debugging)")
    args = ap.parse_args()
    parsers = [SHORT.get(p.strip(), p.strip()) for p in args.only.split(",")] if args.only else list(TARGETS)
    unknown = [p for p in parsers if p not in TARGETS]
    if unknown:
        ap.error(f"unknown parser(s): {', '.join(unknown)}; choose from {', '.join(SHORT)}")
    if args.index is not None and args.show:
        work = Path(tempfile.mkdtemp(prefix="lf-fuzz-"))
        os.environ["LLAMAFORGE_DATA_DIR"] = str(work / "data")
        signal.signal(signal.SIGALRM, _alarm)
        for p in parsers:
            print(p, args.index, run_one(p, args.index, work))
        return 0
    first, n = (args.index, 1) if args.index is not None else (0, args.inputs)
    results = fuzz(parsers, n, args.workers, args.memory_mb * 2**20, first)
    wall = results.pop("_wall")
    print(f"{n:,} inputs per parser; {TIME_LIMIT_S:.0f} s and {args.memory_mb} MiB per input; "
          f"{args.workers} workers; {wall:.0f} s wall\n")
    print(table(results))
    classes: dict[tuple[str, str], int] = {}
    for p, r in results.items():
        for _index, detail in r["failures"]:
            where = detail[detail.rfind("("):] if detail.endswith(")") else ""
            key = (p, detail.split(":")[0] + (" " + where if where else ""))
            classes[key] = classes.get(key, 0) + 1
    if classes:
        print(f"\n{len(classes)} distinct unexpected failure(s) (parser, kind and place: inputs):")
        for (p, kind), count in sorted(classes.items()):
            print(f"  {p}: {kind}: {count}")
    failed = False
    for p, r in results.items():
        for index, detail in r["failures"][:5]:
            failed = True
            print(f"\n{p} #{index}: {detail}\n  reproduce: python benchmarks/fuzz.py --only "
                  f"{next(k for k, v in SHORT.items() if v == p)} --index {index} --show")
        failed |= bool(r["failures"])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
