"""Registration against a local server that speaks Ollama's blob/create/show API."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from llamaforge_tui.core.ollama.modelfile import ModelfileSpec
from llamaforge_tui.core.ollama.register import (
    NameClash,
    OllamaRegistrar,
    RegistrationError,
    ServerUnreachable,
    create_command,
    file_digest,
    register_export,
    validate_name,
)
from fixtures.fake_ollama import FakeOllama

TEMPLATE = "{{ .Prompt }}<end_of_turn>\n"


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 40)
    return path


def _spec() -> ModelfileSpec:
    return ModelfileSpec("./model.gguf", template=TEMPLATE, system="be brief",
                         parameters={"stop": ["<end_of_turn>", "<eos>"], "temperature": 0.2})


def test_happy_path_uploads_creates_and_checks(gguf: Path) -> None:
    statuses = []
    with FakeOllama() as fake:
        result = register_export(fake.host, "my-tune", _spec(), model_path=gguf, on_status=statuses.append)
        digest = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
        assert fake.state.blobs[digest] == gguf.read_bytes()
        body = fake.state.create_bodies[-1]
    assert body["files"] == {"model.gguf": digest}
    assert body["template"] == TEMPLATE and body["parameters"]["stop"] == ["<end_of_turn>", "<eos>"]
    assert body["system"] == "be brief"
    assert result.name == "my-tune:latest" and result.uploaded == [digest] and result.skipped == []
    assert result.statuses[-1] == "success"
    assert result.show["template"] == TEMPLATE
    phases = [s.phase for s in statuses]
    assert "upload" in phases and "create" in phases and phases[-1] == "check"


def test_existing_blob_is_not_sent_again(gguf: Path) -> None:
    with FakeOllama() as fake:
        digest = file_digest(gguf)
        fake.state.blobs[digest] = gguf.read_bytes()
        result = register_export(fake.host, "again", _spec(), model_path=gguf)
        posts = [p for m, p in fake.state.requests if m == "POST" and p.startswith("/api/blobs/")]
    assert posts == [] and result.skipped == [digest] and result.uploaded == []


def test_requantizing_server_is_checked_with_show_not_digest(gguf: Path) -> None:
    with FakeOllama() as fake:
        fake.state.requantize = True
        result = register_export(fake.host, "rq", _spec(), model_path=gguf)
        assert fake.state.models["rq:latest"]["digest"] != file_digest(gguf)
    assert result.quantization_level == "Q8_0"


def test_name_clash_asks_then_force_replaces(gguf: Path) -> None:
    with FakeOllama() as fake:
        register_export(fake.host, "taken:v1", _spec(), model_path=gguf)
        with pytest.raises(NameClash, match="already exists.*--force"):
            register_export(fake.host, "taken:v1", _spec(), model_path=gguf)
        assert len(fake.state.create_bodies) == 1
        register_export(fake.host, "taken:v1", _spec(), model_path=gguf, force=True)
        assert len(fake.state.create_bodies) == 2


def test_server_error_line_and_http_error_are_reported(gguf: Path) -> None:
    with FakeOllama() as fake:
        fake.state.fail_create = "unsupported architecture"
        with pytest.raises(RegistrationError, match="could not create bad: unsupported architecture"):
            register_export(fake.host, "bad", _spec(), model_path=gguf)
        fake.state.fail_create = None
        fake.state.create_http_error = (500, "quantization is only supported for F16, BF16 and F32 models")
        with pytest.raises(RegistrationError, match="HTTP 500: quantization is only supported"):
            register_export(fake.host, "bad", _spec(), model_path=gguf)


def test_digest_mismatch_error_body(gguf: Path) -> None:
    with FakeOllama() as fake:
        reg = OllamaRegistrar(fake.host)
        with pytest.raises(RegistrationError, match="digest mismatch"):
            reg.upload_blob(gguf, "sha256:" + "0" * 64)


def test_adapter_registration_uses_from_and_adapters(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"GGUF adapter bytes")
    spec = ModelfileSpec("gemma3:270m", adapter="./adapter.gguf", template=TEMPLATE)
    with FakeOllama() as fake:
        register_export(fake.host, "with-adapter", spec, adapter_path=adapter)
        body = fake.state.create_bodies[-1]
    assert body["from"] == "gemma3:270m" and body["adapters"] == {"adapter.gguf": file_digest(adapter)}
    assert "files" not in body


def test_refused_connection_is_one_clear_line(gguf: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServerUnreachable, match=f"not reachable at http://127.0.0.1:{port}"):
        register_export(f"127.0.0.1:{port}", "x", _spec(), model_path=gguf)


def test_names_and_command() -> None:
    assert validate_name("user/model:tag") == "user/model:tag"
    with pytest.raises(RegistrationError, match="invalid Ollama model name"):
        validate_name("bad name!")
    assert create_command("my-tune", Path("/tmp/a b/Modelfile")) == "ollama create my-tune -f '/tmp/a b/Modelfile'"
