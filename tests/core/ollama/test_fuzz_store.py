"""Property tests: Ollama manifests and the store scan refuse bad input with ``ManifestError``/``StoreError`` or
a model status, never another exception or a hang (random JSON, wrong types, traversal digests, huge layer
lists, deep nesting, huge numbers, FIFOs, symlink loops, undecodable folder names)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.fuzz_inputs import DIGEST, deep_json, huge_int_text, manifest_doc, manifest_input, random_json_value
from fixtures.ollama_store import StoreBuilder
from llamaforge_tui.core.errors import StoreError
from llamaforge_tui.core.fsutil import safe_json_value
from llamaforge_tui.core.ollama.manifest import (
    MAX_LAYERS,
    ManifestError,
    blob_name,
    is_manifest_list,
    parse_json,
    parse_manifest,
    parse_manifest_list,
    read_manifest_bytes,
)
from llamaforge_tui.core.ollama.model import MAX_TEXT_LAYER, STATUSES
from llamaforge_tui.core.ollama.store import enrich, scan_store
from llamaforge_tui.core.settings import Settings

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["schemaVersion", "layers", "config", "mediaType", "digest", "size",
                                         "manifests", "name", "x"]), inner, max_size=4), max_leaves=10)


def parse_or_refuse(data: bytes, root: Path) -> None:
    try:
        doc = parse_json(data, root / "m")
        if is_manifest_list(doc):
            for entry in parse_manifest_list(doc, root, root / "m"):
                assert entry.path.parent == root / "blobs"
        else:
            manifest = parse_manifest(doc, root, root / "m")
            for layer in (*manifest.layers, *([manifest.config] if manifest.config else [])):
                assert layer.path.parent == root / "blobs"  # no digest leads outside blobs/
                assert isinstance(layer.size, int) and layer.size >= 0
    except ManifestError as exc:
        assert str(exc)


@FAST
@given(doc=JSON)
def test_random_json_parses_or_is_a_manifest_error(tmp_path: Path, doc) -> None:
    parse_or_refuse(json.dumps(doc).encode(), tmp_path)


@FAST
@given(rng=st.randoms(use_true_random=False))
def test_hostile_manifests_parse_or_are_refused(tmp_path: Path, rng) -> None:
    parse_or_refuse(manifest_input(rng), tmp_path)


@FAST
@given(digest=st.text(max_size=80) | st.sampled_from(["sha256:../../etc/passwd", "sha256:" + "ab" * 32 + "/..",
                                                      "sha256-" + "A" * 64, "sha256:" + "a" * 64 + "\n"]))
def test_only_well_formed_digests_become_paths(digest: str) -> None:
    try:
        name = blob_name(digest)
    except ManifestError:
        return
    assert name.startswith("sha256-") and len(name) == 71 and all(c in "0123456789abcdef" for c in name[7:])


@pytest.mark.parametrize("text", [deep_json(100_000), deep_json(100_000, brackets="{}"),
                                  '{"schemaVersion": 2, "layers": [], "x": ' + "9" * 5000 + "}"])
def test_deep_nesting_and_huge_numbers_are_manifest_errors(tmp_path: Path, text: str) -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_json(text.encode(), tmp_path / "m")


def test_huge_layer_lists_are_refused(tmp_path: Path) -> None:
    layer = {"mediaType": "application/vnd.ollama.image.tensor", "digest": DIGEST, "size": 1}
    with pytest.raises(ManifestError, match="layers"):
        parse_manifest({"schemaVersion": 2, "layers": [layer] * (MAX_LAYERS + 1)}, tmp_path, tmp_path / "m")


def test_manifest_reads_refuse_fifos_folders_and_huge_files(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(ManifestError, match="FIFO"):
        read_manifest_bytes(fifo)
    with pytest.raises(ManifestError, match="folder"):
        read_manifest_bytes(tmp_path)
    big = tmp_path / "big"
    with open(big, "wb") as fh:
        fh.truncate(1 << 40)  # sparse: a terabyte that costs nothing
    with pytest.raises(ManifestError, match="larger than"):
        read_manifest_bytes(big)
    loop = tmp_path / "loop"
    os.symlink("loop", loop)
    with pytest.raises(ManifestError):
        read_manifest_bytes(loop)
    assert time.monotonic() - start < 2


# ---------------------------------------------------------------------------------------------- the store

def check_scan(root: Path) -> None:
    """Everything ``models`` and ``models --json`` do with a store, with the promises they make."""
    start = time.monotonic()
    scan = scan_store(Settings(models_dirs=[str(root)]))
    for model in scan.models:
        assert model.status in STATUSES
        for kind in ("template", "system", "license"):
            try:
                model.read_layer_text(kind)
            except StoreError as exc:
                assert str(exc)
        try:
            assert isinstance(model.params(), dict)
        except StoreError as exc:
            assert str(exc)
        json.dumps(safe_json_value(model.to_dict()), ensure_ascii=False, default=str).encode("utf-8")
    assert time.monotonic() - start < 2


def _special(kind: str, path: Path) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "loop":
        os.symlink(path.name, path)
    elif kind == "dir":
        path.mkdir()
    elif kind == "huge":
        with open(path, "wb") as fh:
            fh.truncate(MAX_TEXT_LAYER + 1)
    else:
        os.symlink("/dev/zero", path)


SPECIALS = ["fifo", "loop", "dir", "huge", "devzero"]


@FAST
@given(rng=st.randoms(use_true_random=False), special=st.sampled_from([None, *SPECIALS]),
       where=st.sampled_from(["manifest", "blob"]), name=st.sampled_from([b"model", b"m\xff\xfe", b"caf\xc3\xa9"]))
def test_store_scan_survives_hostile_stores(tmp_path_factory: pytest.TempPathFactory, rng, special, where, name) -> None:
    root = tmp_path_factory.mktemp("store")
    blob = root / "blobs" / ("sha256-" + DIGEST[7:])
    blob.parent.mkdir(parents=True)
    if special and where == "blob":
        _special(special, blob)
    else:
        blob.write_bytes(json.dumps(random_json_value(rng)).encode())
    folder = os.path.join(os.fsencode(root), b"manifests", b"registry.ollama.ai", b"library", name)
    os.makedirs(folder)
    tag = Path(os.fsdecode(os.path.join(folder, b"latest")))
    if special and where == "manifest":
        _special(special, tag)
    else:
        tag.write_bytes(json.dumps(manifest_doc(rng)).encode())
    check_scan(root)


@pytest.mark.parametrize("special", SPECIALS)
@pytest.mark.parametrize("kind", ["template", "system", "params", "license"])
def test_special_layer_files_are_store_errors_not_hangs(tmp_path: Path, special: str, kind: str) -> None:
    """The finding: a template, system or params entry that is a FIFO blocked `llamaforge models` for ever."""
    b = StoreBuilder(tmp_path)
    layer = b.layer(kind, "sha256:" + "cd" * 32, 10)
    b.write("m", "latest", b.manifest([layer]))
    _special(special, tmp_path / "blobs" / ("sha256-" + "cd" * 32))
    scan = scan_store(Settings(models_dirs=[str(tmp_path)]))
    (model,) = scan.models
    start = time.monotonic()
    with pytest.raises(StoreError, match=f"cannot read {kind} layer"):
        model.params() if kind == "params" else model.read_layer_text(kind)
    assert time.monotonic() - start < 1


@pytest.mark.parametrize("special", SPECIALS)
def test_a_special_manifest_marks_the_model_broken(tmp_path: Path, special: str) -> None:
    b = StoreBuilder(tmp_path)
    tag = b.manifest_path("m")
    tag.parent.mkdir(parents=True)
    _special(special, tag)
    start = time.monotonic()
    models = scan_store(Settings(models_dirs=[str(tmp_path)])).models
    assert time.monotonic() - start < 2
    if special == "dir":  # a folder where a tag should be is not a model
        assert models == []
    else:
        (model,) = models
        assert model.status == "broken" and "manifest" in model.reason


@pytest.mark.parametrize("params", [deep_json(5000, brackets="{}"), '{"num_ctx": ' + huge_int_text(__import__("random").Random(1)) + "}"])
def test_params_nested_too_deep_or_with_huge_numbers_are_store_errors(tmp_path: Path, params: str) -> None:
    b = StoreBuilder(tmp_path)
    b.write("m", "latest", b.manifest([b.text_layer("params", params)]))
    (model,) = scan_store(Settings(models_dirs=[str(tmp_path)])).models
    with pytest.raises(StoreError, match="params layer is not valid JSON"):
        model.params()


def test_a_manifest_size_that_is_a_string_marks_the_model_broken(tmp_path: Path) -> None:
    """The finding: a layer ``size`` of "12" raised TypeError in enrich."""
    b = StoreBuilder(tmp_path)
    doc = b.manifest([b.layer("model", DIGEST, "12")])
    b.write("m", "latest", doc)
    (model,) = scan_store(Settings(models_dirs=[str(tmp_path)])).models
    assert model.status == "broken" and "invalid size '12'" in model.reason
    assert enrich(model) is model


def test_undecodable_model_folder_names_reach_json_output_safely(tmp_path: Path) -> None:
    """The finding: a model folder whose name holds undecodable bytes crashed `models --json`."""
    b = StoreBuilder(tmp_path)
    doc = json.dumps(b.manifest([b.text_layer("template", "{{ .Prompt }}")])).encode()
    folder = os.path.join(os.fsencode(tmp_path), b"manifests", b"registry.ollama.ai", b"library", b"m\xff")
    os.makedirs(folder)
    with open(os.path.join(folder, b"latest"), "wb") as fh:
        fh.write(doc)
    (model,) = scan_store(Settings(models_dirs=[str(tmp_path)])).models
    assert model.name == "m\udcff"
    out = json.dumps(safe_json_value(model.to_dict()), ensure_ascii=False).encode("utf-8")
    assert json.loads(out)["full_name"] == "m\\xff:latest"
