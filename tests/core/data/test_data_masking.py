"""Assistant-only loss masking on real template styles, written into tiny offline tokenizers."""

from __future__ import annotations

import pytest
from fixtures.data_tokenizers import make_tokenizer

from llamaforge_tui.core.data.chat_templates import FAMILY_TEMPLATES, resolve_chat_template
from llamaforge_tui.core.data.dataset import (
    IGNORE_INDEX,
    Conversation,
    Message,
    TextDoc,
    encode_record,
    render_for_display,
)
from llamaforge_tui.core.data.encode import RecordRejected
from llamaforge_tui.core.errors import DatasetError

CONV = Conversation((
    Message("system", "You are a helpful assistant for the Acme store."),
    Message("user", "How can I reset the Acme Kettle?"),
    Message("assistant", "Hold the power button for ten seconds."),
    Message("user", "What is the capital of France?"),
    Message("assistant", "The capital of France is Paris."),
), line=7)

# family -> (architecture, end-of-turn text the model must learn to emit)
CASES = {
    "chatml": ("qwen2", "<|im_end|>"),
    "llama3": ("llama", "<|eot_id|>"),
    "gemma": ("gemma3", "<end_of_turn>"),
    "mistral": ("mistral", "</s>"),
    "phi3": ("phi3", "<|end|>"),
}


def trained_text(tok, ex) -> str:  # noqa: ANN001 - test helper
    return tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX])


@pytest.mark.parametrize("family", list(CASES))
def test_only_assistant_replies_and_their_end_marker_are_trained(family: str) -> None:
    arch, end = CASES[family]
    tok = make_tokenizer(family)
    choice = resolve_chat_template(tok, arch)
    assert (choice.name, choice.origin) == (family, "family")
    ex = encode_record(CONV, tok, choice, max_seq_len=4096)
    assert ex.line == 7 and len(ex.input_ids) == len(ex.labels) == ex.length and not ex.truncated
    assert all(lab in (IGNORE_INDEX, tid) for tid, lab in zip(ex.input_ids, ex.labels))
    trained = trained_text(tok, ex)
    # Both turns are trained, each with the marker that ends it; no prompt text leaks in.
    first, second = trained.split(end)[:2]
    assert first.strip() == "Hold the power button for ten seconds."
    assert second.strip() == "The capital of France is Paris."
    assert trained.count(end) == 2
    for prompt_text in ("Acme store", "reset the Acme Kettle", "capital of France?", "assistant\n", "model\n"):
        assert prompt_text not in trained
    # The full sequence is exactly the tokenizer's view of the rendered text, BOS once at most.
    full = tok.decode(ex.input_ids)
    assert "How can I reset the Acme Kettle?" in full
    if tok.bos_token:
        assert ex.input_ids.count(tok.bos_token_id) <= 1


def test_gemma_multi_turn_layout_and_display_pieces() -> None:
    tok = make_tokenizer("gemma")
    choice = resolve_chat_template(tok, "gemma3")
    ex = encode_record(CONV, tok, choice, 4096)
    assert ex.input_ids[0] == tok.bos_token_id and ex.labels[0] == IGNORE_INDEX
    pieces = render_for_display(CONV, tok, choice)
    assert [trained for _, trained in pieces] == [False, True, False, True, False]
    assert pieces[0][0].startswith("<bos><start_of_turn>user\nYou are a helpful assistant")
    assert pieces[0][0].endswith("<start_of_turn>model\n")
    assert pieces[1][0] == "Hold the power button for ten seconds.<end_of_turn>"  # not the newline after it
    assert pieces[2][0].startswith("\n<start_of_turn>user") and pieces[4][0] == "\n"
    assert "".join(p for p, _ in pieces) == tok.decode(ex.input_ids)


def test_template_adding_tokens_after_the_assistant_turn() -> None:
    # A template that closes every reply with eos AND appends a trailer after the whole conversation.
    template = ("{% for m in messages %}{% if m['role'] == 'user' %}<|im_start|>user\n{{ m['content'] }}<|im_end|>\n"
                "{% elif m['role'] == 'assistant' %}<|im_start|>assistant\n{{ m['content'] }}<|im_end|>{{ eos_token }}\n"
                "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                "{% else %}<|endoftext|>{% endif %}")
    tok = make_tokenizer("chatml", chat_template=template)
    choice = resolve_chat_template(tok)
    assert (choice.origin, choice.name) == ("tokenizer", "chatml")
    conv = Conversation(CONV.messages[1:], line=1)
    ex = encode_record(conv, tok, choice, 4096)
    trained = trained_text(tok, ex)
    assert "Hold the power button for ten seconds.<|im_end|><|im_end|>" in trained  # eos_token is <|im_end|> here
    assert "The capital of France is Paris." in trained
    assert "capital of France?" not in trained and "user" not in trained
    # the final trailer belongs to the last reply's render, the user turn in between does not
    assert tok.decode(ex.input_ids).endswith("<|endoftext|>")


def test_text_documents_train_on_every_token_and_end_with_eos() -> None:
    tok = make_tokenizer("llama3")
    ex = encode_record(TextDoc("The Acme Kettle boils water in three minutes.", 3), tok, None, 4096)
    assert ex.input_ids[0] == tok.bos_token_id and ex.labels[0] == IGNORE_INDEX
    assert ex.input_ids[-1] == tok.eos_token_id
    assert ex.labels[1:] == ex.input_ids[1:]
    assert render_for_display(TextDoc("abc def", 1), tok, None) == [("abc def", True)]


def test_truncation_and_over_long_prompt() -> None:
    tok = make_tokenizer("chatml")
    choice = resolve_chat_template(tok, "qwen2")
    full = encode_record(CONV, tok, choice, 4096)
    cut_at = full.labels.index(next(x for x in full.labels if x != IGNORE_INDEX)) + 3
    ex = encode_record(CONV, tok, choice, cut_at)
    assert ex.truncated and len(ex.input_ids) == cut_at and ex.length == full.length and ex.trainable == 3
    with pytest.raises(RecordRejected, match="over-long record.*hold no assistant tokens") as info:
        encode_record(CONV, tok, choice, 10)
    assert info.value.line == 7
    pieces = render_for_display(CONV, tok, choice, max_seq_len=cut_at)
    assert sum(1 for _, t in pieces if t) == 1  # only the first reply's head survives truncation


def test_choice_order_override_and_fallback(tmp_path) -> None:  # noqa: ANN001
    tok = make_tokenizer("none")
    fallback = resolve_chat_template(tok, "falcon")
    assert (fallback.name, fallback.origin) == ("plain", "fallback") and "falcon" in fallback.reason
    assert resolve_chat_template(tok, "gemma3").name == "gemma"  # architecture alone, tokens absent
    assert resolve_chat_template(tok, None, override="qwen").template == FAMILY_TEMPLATES["chatml"]
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}", encoding="utf-8")
    from_file = resolve_chat_template(tok, None, override=str(jinja))
    assert (from_file.name, from_file.origin) == ("custom", "override")
    with pytest.raises(DatasetError, match="unknown chat template 'zephyr'.*gemma"):
        resolve_chat_template(tok, None, override="zephyr")

    class Bundle:  # the shape SOURCES' TokenizerBundle has
        tokenizer = make_tokenizer("gemma")
        chat_template = None
        template_origin = "none"
        architecture = "gemma3"
        ollama_template = None

    assert resolve_chat_template(Bundle()).name == "gemma"
    Bundle.chat_template, Bundle.template_origin = FAMILY_TEMPLATES["chatml"], "gguf"
    assert (resolve_chat_template(Bundle()).name, resolve_chat_template(Bundle()).origin) == ("chatml", "gguf")


def test_broken_template_is_a_clear_error() -> None:
    tok = make_tokenizer("chatml")
    choice = resolve_chat_template(tok, None, override="{% for m in messages %}{{ m['content'] }")
    with pytest.raises(DatasetError, match="failed to render"):
        encode_record(CONV, tok, choice, 100)


# Ollama-style Go templates written for these tests: one folds the system prompt into the first user turn
# with a single newline, one leaves the last message open (no end marker) as recent library templates do.
GO_GEMMA = ('{{- $system := .System }}{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 }}'
            '{{- if eq .Role "user" }}<start_of_turn>user\n{{- if and (eq $i 1) $system }}\n{{ $system }}{{- end }}\n'
            '{{ .Content }}<end_of_turn>\n{{ else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}'
            '<end_of_turn>\n{{ end }}{{- if $last }}<start_of_turn>model\n{{ end }}{{- end }}\n')
GO_OPEN_LAST = ('{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 -}}'
                '<|im_start|>{{ .Role }}\n{{ .Content }}{{ if not $last }}<|im_end|>\n{{ end }}'
                '{{ if and $last (ne .Role "assistant") }}<|im_end|>\n<|im_start|>assistant\n{{ end }}{{- end }}')


@pytest.mark.parametrize(("family", "go", "end"), [("gemma", GO_GEMMA, "<end_of_turn>"),
                                                   ("chatml", GO_OPEN_LAST, "<|im_end|>")])
def test_training_with_the_ollama_template_itself(family: str, go: str, end: str) -> None:
    tok = make_tokenizer(family)
    choice = resolve_chat_template(tok, None, override="ollama", ollama_template=go)
    assert (choice.name, choice.syntax, choice.origin) == ("ollama", "go", "override")
    ex = encode_record(CONV, tok, choice, 4096)
    trained = trained_text(tok, ex)
    assert trained == f"Hold the power button for ten seconds.{end}The capital of France is Paris.{end}"
    full = tok.decode(ex.input_ids)
    assert full.endswith(f"Paris.{end}")  # the last reply is closed and nothing is rendered after it
    if family == "gemma":
        assert "<start_of_turn>user\nYou are a helpful assistant for the Acme store.\nHow can I" in full
    from llamaforge_tui.core.data.template_check import check_against_ollama

    assert check_against_ollama(tok, choice, go).status == "match"


def test_ollama_template_override_needs_a_usable_template() -> None:
    tok = make_tokenizer("chatml")
    with pytest.raises(DatasetError, match="needs an Ollama model with a TEMPLATE layer"):
        resolve_chat_template(tok, None, override="ollama")
    with pytest.raises(DatasetError, match="cannot train with the Ollama TEMPLATE"):
        resolve_chat_template(tok, None, override="ollama", ollama_template="{{ template \"x\" }}")
    choice = resolve_chat_template(tok, None, override="ollama", ollama_template="{{ range .Messages }}{{ .Nope }}{{ end }}")
    with pytest.raises(RecordRejected, match="Ollama TEMPLATE failed to render"):
        encode_record(CONV, tok, choice, 4096)
