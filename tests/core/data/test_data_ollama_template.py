"""The Go template subset and the training-vs-Ollama template check."""

from __future__ import annotations

import pytest
from fixtures.data_tokenizers import make_tokenizer

from llamaforge_tui.core.data.chat_templates import resolve_chat_template
from llamaforge_tui.core.ollama.go_template import GoTemplateError, execute, parse
from llamaforge_tui.core.data.template_check import check_against_ollama
from llamaforge_tui.core.ollama.template import render_ollama

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"}]

# Written for these tests in the style of Ollama's library templates.
CHATML_MESSAGES = ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
                   '{{ end }}<|im_start|>assistant\n')
CHATML_LEGACY = ('{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
                 '{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}'
                 '<|im_start|>assistant\n{{ .Response }}<|im_end|>\n')
LLAMA3_LAST = ('{{- range $i, $m := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 -}}'
               '<|start_header_id|>{{ $m.Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>'
               '{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}'
               '{{- end }}')


@pytest.mark.parametrize(("src", "data", "expected"), [
    ("a  {{- \" \" -}}  b", {}, "a b"),
    ("{{ if .X }}yes{{ else if .Y }}why{{ else }}no{{ end }}", {"Y": 1}, "why"),
    ("{{ range $i, $v := .L }}{{ $i }}={{ $v }};{{ else }}empty{{ end }}", {"L": ["a", "b"]}, "0=a;1=b;"),
    ("{{ range .L }}x{{ else }}empty{{ end }}", {"L": []}, "empty"),
    ("{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ end }}{{ $x }}", {}, "2"),
    ("{{ with .U }}{{ .Name }}{{ end }}", {"U": {"Name": "ann"}}, "ann"),
    ("{{ or .Missing \"dflt\" }}|{{ and 1 0 }}|{{ not .Missing }}", {}, "dflt|0|true"),
    ("{{ .S | printf \"%s!\" }} {{ len .L }} {{ index .L 1 }} {{ slice .S 1 3 }}", {"S": "hello", "L": [1, 2]},
     "hello! 2 2 el"),
    ("{{ json .M }}", {"M": {"a": "<b>"}}, '{"a":"\\u003cb\\u003e"}'),
    ("{{/* comment */}}{{ eq .R \"x\" \"y\" }}", {"R": "y"}, "true"),
    ("{{ \"tab\\there\" }}{{ `raw\\n` }}", {}, "tab\there" + "raw\\n"),
    ("{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}{{ end }}",
     {"L": [1, 2, 3, 4, 5]}, "13"),
    ("{{ range $k, $v := .M }}{{ $k }}={{ $v }} {{ end }}", {"M": {"b": 2, "a": 1}}, "a=1 b=2 "),
])
def test_go_subset(src: str, data: dict, expected: str) -> None:
    assert execute(parse(src), data) == expected


@pytest.mark.parametrize("src", ["{{ template \"x\" }}", "{{ upper .X }}", "{{ if .X }}", "{{ end }}", "{{ .X",
                                 "{{ define \"a\" }}{{ end }}", "{{ if .X }}{{ break }}{{ end }}"])
def test_unsupported_or_broken_templates_raise(src: str) -> None:
    with pytest.raises(GoTemplateError):
        execute(parse(src), {"X": "a"})


def test_messages_template_collates_system_and_adds_generation_prompt() -> None:
    assert render_ollama(CHATML_MESSAGES, MSGS) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    merged = render_ollama(CHATML_MESSAGES, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert "<|im_start|>user\na\n\nb<|im_end|>" in merged  # consecutive same-role messages merge, as Ollama does


def test_legacy_template_runs_turn_by_turn_and_cuts_after_response() -> None:
    out = render_ollama(CHATML_LEGACY, MSGS)
    assert out == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                   "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    # a template without .Response gets one appended; the SYSTEM layer applies when no system message is sent
    assert render_ollama("{{ .System }}|{{ .Prompt }}|", [{"role": "user", "content": "q"}], system="S") == "S|q|"


def test_variables_len_slice_last_message() -> None:
    out = render_ollama(LLAMA3_LAST, MSGS[1:])
    assert out.endswith("2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert out.count("<|start_header_id|>assistant") == 2


@pytest.mark.parametrize(("family", "template", "status"), [
    ("chatml", CHATML_MESSAGES, "match"),
    ("chatml", CHATML_LEGACY, "match"),
    ("llama3", LLAMA3_LAST, "match"),
    ("gemma", CHATML_MESSAGES, "differ"),
    ("chatml", "{{ range .Messages }}{{ .Nope }}{{ end }}", "unknown"),
    ("chatml", None, "absent"),
])
def test_check_against_ollama(family: str, template: str | None, status: str) -> None:
    tok = make_tokenizer(family)
    check = check_against_ollama(tok, resolve_chat_template(tok, None), template)
    assert check.status == status, check.message
    if status == "differ":
        assert "at character 1" in check.message and "<start_of_turn>user" in check.message
        assert check.warning == check.message
    if status == "unknown":
        assert "could not evaluate" in check.message and "Nope" in check.message
    if status == "match":
        assert check.warning is None and all(s.same for s in check.samples)


def test_whitespace_only_difference_is_named() -> None:
    tok = make_tokenizer("chatml")
    check = check_against_ollama(tok, resolve_chat_template(tok, None), CHATML_MESSAGES.replace("<|im_end|>\n{{", "<|im_end|>{{"))
    assert check.status == "differ" and "only in whitespace" in check.message


@pytest.mark.parametrize("family", ["gemma", "chatml", "llama3", "phi3", "mistral", "plain"])
def test_export_go_templates_render_what_training_renders(family: str) -> None:
    """EXPORT writes these Go TEMPLATEs into Modelfiles; they must agree with the Jinja used for training."""
    from llamaforge_tui.core.ollama.modelfile import GO_TEMPLATES

    tok = make_tokenizer("none" if family == "plain" else family)
    choice = resolve_chat_template(tok, None, override=family)
    check = check_against_ollama(tok, choice, GO_TEMPLATES[family].replace("@EOS@", tok.eos_token))
    assert check.status == "match", check.message
