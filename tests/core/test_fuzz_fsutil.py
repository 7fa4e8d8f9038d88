"""Property tests for the shared helpers every parser leans on (bounded reads, limited JSON, safe text,
``human_bytes``), and the CLI's promise that its output is valid UTF-8 whatever the files hold."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.ollama_store import StoreBuilder
from hypothesis import given, settings
from hypothesis import strategies as st

from llamaforge_tui.commands.common import print_json, safe_streams
from llamaforge_tui.core.fsutil import (
    SAFE_ERRORS,
    FileTooLarge,
    JsonLimitError,
    NotRegularFile,
    human_bytes,
    loads_json,
    read_regular,
    safe_json_value,
    safe_text,
)
from llamaforge_tui.core.model.basemodel import repo_from_url

FAST = settings(max_examples=200, deadline=None)
ROOT = Path(__file__).resolve().parents[2]


@FAST
@given(n=st.integers() | st.floats() | st.none(), binary=st.booleans())
def test_human_bytes_never_raises(n, binary: bool) -> None:
    """The finding: human_bytes overflowed converting a huge size to float."""
    assert isinstance(human_bytes(n, binary=binary), str)


def test_human_bytes_of_absurd_sizes() -> None:
    assert human_bytes(10**400) == "1.00e+388 TB"
    assert human_bytes(2**64) == "18446744.07 TB"
    assert human_bytes(1536) == "1.54 kB"


@FAST
@given(text=st.text())
def test_safe_text_always_encodes_and_keeps_valid_text(text: str) -> None:
    out = safe_text(text)
    out.encode("utf-8")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return
    assert out == text


def test_safe_text_shows_undecodable_bytes_as_escapes() -> None:
    name = os.fsdecode(b"caf\xe9-\xff")
    assert safe_text(name) == "caf\\xe9-\\xff"
    assert safe_text("lone \ud800") == "lone \\ud800"
    assert safe_json_value({"k\udcff": ["v\udcfe", 1, None, {"x": ("t\udc80",)}]}) == {
        "k\\xff": ["v\\xfe", 1, None, {"x": ["t\\x80"]}]}


@FAST
@given(text=st.text(max_size=60))
def test_loads_json_returns_or_raises_a_value_error(text: str) -> None:
    try:
        loads_json(text)
    except ValueError:
        pass


@pytest.mark.parametrize("text", ["[" * 100_000, "[" * 65 + "]" * 65, '{"a":' * 70 + "1" + "}" * 70, "1" * 4301,
                                  '{"size": -' + "9" * 5000 + "}"])
def test_loads_json_limits(text: str) -> None:
    with pytest.raises(JsonLimitError):
        loads_json(text)
    assert loads_json("[" * 64 + "]" * 64) is not None
    assert loads_json("9" * 4300) == int("9" * 4300)


def test_read_regular_refuses_special_files_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    start = time.monotonic()
    for path in (fifo, tmp_path, Path("/dev/zero")):
        with pytest.raises(NotRegularFile):
            read_regular(path, 10)
    big = tmp_path / "big"
    with open(big, "wb") as fh:
        fh.truncate(1 << 40)
    with pytest.raises(FileTooLarge):
        read_regular(big, 1 << 20)
    assert time.monotonic() - start < 1
    (tmp_path / "ok").write_bytes(b"12345")
    assert read_regular(tmp_path / "ok", 5) == b"12345"
    with pytest.raises(FileTooLarge):
        read_regular(tmp_path / "ok", 4)


def test_read_regular_does_not_allocate_its_limit(tmp_path: Path) -> None:
    """``read(n)`` preallocates n bytes: a 1 GiB limit must not cost 1 GiB for a 10-byte file."""
    import tracemalloc

    (tmp_path / "small").write_bytes(b"x" * 10)
    tracemalloc.start()
    read_regular(tmp_path / "small", 1 << 30)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20


@FAST
@given(url=st.text(max_size=40) | st.sampled_from(["http://[", "https://[::1", "http://ｈｆ.co/a/b",
                                                   "https://huggingface.co\uff03/a/b", "http://a\u2100b/c/d"]))
def test_repo_from_url_returns_a_repo_or_none(url: str) -> None:
    """The finding: ``http://[`` and fullwidth netlocs raised ValueError from urllib."""
    repo = repo_from_url(url)
    assert repo is None or repo.count("/") == 1
    assert repo_from_url("https://huggingface.co/google/gemma-3-270m/tree/main") == "google/gemma-3-270m"


def test_print_json_escapes_surrogates(capsys: pytest.CaptureFixture[str]) -> None:
    print_json({"name": "m\udcff", "reason": "role 'us\udcfeer'", "path": Path(os.fsdecode(b"/x/\xff"))})
    out = capsys.readouterr().out
    out.encode("utf-8")
    assert json.loads(out) == {"name": "m\\xff", "reason": "role 'us\\xfeer'", "path": "/x/\\xff"}


def test_safe_streams_escape_what_a_stream_cannot_encode(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdout", stream)
    safe_streams()
    assert stream.errors == SAFE_ERRORS
    print("m\udcff:latest")
    stream.flush()
    assert raw.getvalue() == b"m\\xff:latest\n"


def _cli(*args: str, env_home: Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "LLAMAFORGE_CONFIG_DIR": str(env_home / "c"), "LLAMAFORGE_DATA_DIR": str(env_home / "d"),
           "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "llamaforge_tui", *args], capture_output=True, timeout=120,
                          cwd=ROOT, env=env)


def test_models_with_undecodable_folder_names_print_valid_utf8(tmp_path: Path) -> None:
    """The finding: a model folder name with undecodable bytes crashed `models` and `models --json`."""
    root = tmp_path / "store"
    b = StoreBuilder(root)
    doc = json.dumps(b.manifest([b.text_layer("template", "{{ .Prompt }}")])).encode()
    folder = os.path.join(os.fsencode(root), b"manifests", b"registry.ollama.ai", b"library", b"m\xff")
    os.makedirs(folder)
    with open(os.path.join(folder, b"t\xfe"), "wb") as fh:
        fh.write(doc)
    for args in (("models", "--json"), ("models",)):
        proc = _cli(*args, "--models-dir", str(root), env_home=tmp_path)
        assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
        out = proc.stdout.decode("utf-8")  # strict: valid UTF-8
        if args[-1] == "--json":
            assert json.loads(out)[0]["full_name"] == "m\\xff:t\\xfe"
        else:
            assert "m\\xff:t\\xfe" in out


def test_data_error_reasons_with_lone_surrogates_print_valid_utf8(tmp_path: Path) -> None:
    """The finding: a record whose role holds a lone surrogate crashed `data` when printing the reason."""
    path = tmp_path / "d.jsonl"
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    bad = {"messages": [{"role": "us\udcffer", "content": "x"}, {"role": "assistant", "content": "y"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    for args in (("data", str(path), "--json"), ("data", str(path))):
        proc = _cli(*args, env_home=tmp_path)
        assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
        out = proc.stdout.decode("utf-8")
        assert "us\\xffer" in out or "us\\\\xffer" in out
