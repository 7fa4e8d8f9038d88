"""Modelfiles: Ollama layers copied byte for byte; family templates and stops for other sources."""

from __future__ import annotations

import json
from pathlib import Path

from fixtures.ollama_store import small_store  # noqa: F401  (pytest fixture)

from llamaforge_tui.core.ollama.modelfile import (
    GO_TEMPLATES,
    ModelfileSpec,
    from_ollama_model,
    from_template_family,
    parse_modelfile,
)
from llamaforge_tui.core.ollama.store import find_model
from llamaforge_tui.core.settings import Settings


def test_ollama_source_keeps_template_system_stops_byte_for_byte(small_store, tmp_path: Path) -> None:  # noqa: F811
    settings = Settings(models_dirs=[str(small_store.root)])
    model = find_model(settings, "llama3.2:1b")
    spec = from_ollama_model(model, "./model.gguf")
    text = spec.render()
    (tmp_path / "Modelfile").write_text(text, encoding="utf-8")
    parsed = parse_modelfile((tmp_path / "Modelfile").read_text(encoding="utf-8"))
    assert parsed["from"] == "./model.gguf"
    assert parsed["template"] == model.read_layer_text("template") == "{{ .Prompt }} [bold]not markup[/bold]"
    assert parsed["system"] == "You are terse."
    assert parsed["parameters"]["stop"] == ["<end>"] == model.params()["stop"]
    assert parsed["parameters"]["temperature"] == [0.2]
    body = spec.create_request("x", {"model.gguf": "sha256:" + "a" * 64})
    assert body["template"] == model.read_layer_text("template")
    assert body["parameters"] == {"stop": ["<end>"], "temperature": 0.2}


def test_multiline_template_with_quotes_and_backslashes_survives() -> None:
    template = '{{ if .System }}"sys" \\n {{ .System }}\n{{ end }}{{ .Prompt }}\n'
    spec = ModelfileSpec("./m.gguf", template=template, license="line1\nline2",
                         parameters={"stop": ["<|im_end|>", "\"q\""]})
    parsed = parse_modelfile(spec.render())
    assert parsed["template"] == template and parsed["license"] == "line1\nline2"
    assert parsed["parameters"]["stop"] == ["<|im_end|>", "\"q\""]


def test_family_template_and_stops_from_tokens() -> None:
    spec = from_template_family("./m.gguf", "gemma", eos_token="<eos>", vocab={"<end_of_turn>", "<eos>"})
    assert spec.template == GO_TEMPLATES["gemma"]
    assert spec.parameters == {"stop": ["<end_of_turn>", "<eos>"]}
    spec = from_template_family("./m.gguf", "mistral", eos_token="</s>")
    assert "</s>" in spec.template and "@EOS@" not in spec.template
    assert spec.parameters["stop"] == ["</s>"]
    unknown = from_template_family("./m.gguf", "custom", eos_token="<eos>", chat_template="{{ x }}")
    assert unknown.template is None and unknown.parameters == {"stop": ["<eos>"]}


def test_adapter_modelfile_says_from_source_and_adapter() -> None:
    spec = from_template_family("gemma3:270m", "gemma", eos_token="<eos>", adapter="./adapter.gguf")
    text = spec.render()
    assert "FROM gemma3:270m\nADAPTER ./adapter.gguf\n" in text
    assert json.dumps("<eos>") in text


def test_go_templates_render_exactly_what_training_renders() -> None:
    """Each family's Go TEMPLATE, run by the Go-template evaluator as Ollama would, gives the Jinja text."""
    import pytest

    from fixtures.data_tokenizers import make_tokenizer
    from llamaforge_tui.core.data.chat_templates import FAMILY_TEMPLATES, ChatTemplateChoice
    from llamaforge_tui.core.data.template_check import check_against_ollama

    for family in ("gemma", "chatml", "llama3", "phi3", "mistral", "plain"):
        tok = make_tokenizer("chatml" if family == "plain" else family)
        spec = from_template_family("./m.gguf", family, eos_token=tok.eos_token)
        check = check_against_ollama(tok, ChatTemplateChoice(family, FAMILY_TEMPLATES[family], "family"), spec.template)
        if check.status != "match":
            pytest.fail(f"{family}: {check.message}")
