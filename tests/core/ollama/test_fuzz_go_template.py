"""Property tests: the Go template parser and evaluator render or raise ``GoTemplateError`` for any text, in
bounded time and memory (unbalanced actions, deep nesting, range over non-lists and huge integers,
loop control outside a range, empty parentheses, huge literals)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.fuzz_inputs import TEMPLATE_PIECES, template_input
from llamaforge_tui.core.ollama.go_template import MAX_OUTPUT_CHARS, GoTemplateError, execute, identifiers, parse
from llamaforge_tui.core.ollama.go_template_parse import MAX_BLOCK_DEPTH, MAX_PAREN_DEPTH
from llamaforge_tui.core.ollama.template import render_ollama

FAST = settings(max_examples=150, deadline=None)
MESSAGES = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]


def render_or_refuse(src: str) -> str | None:
    start = time.monotonic()
    try:
        out = render_ollama(src, MESSAGES)
    except GoTemplateError as exc:
        assert str(exc)
        out = None
    else:
        assert len(out) <= MAX_OUTPUT_CHARS + 100
    assert time.monotonic() - start < 2
    return out


@FAST
@given(pieces=st.lists(st.sampled_from(TEMPLATE_PIECES), max_size=30))
def test_any_sequence_of_template_pieces(pieces: list[str]) -> None:
    render_or_refuse("".join(pieces))


@FAST
@given(rng=st.randoms(use_true_random=False))
def test_hostile_templates(rng) -> None:
    render_or_refuse(template_input(rng))


@settings(max_examples=200, deadline=None)
@given(src=st.text(alphabet=st.sampled_from(list("{}()|$.-: \"'`\n\tabcdefilnrst0123456789")), max_size=60))
def test_arbitrary_text(src: str) -> None:
    render_or_refuse(src)


@pytest.mark.parametrize("depth", [MAX_BLOCK_DEPTH, MAX_BLOCK_DEPTH + 1, 5000])
@pytest.mark.parametrize("block", ["if 1", "range 1", "with 1"])
def test_deep_block_nesting_has_an_explicit_limit(depth: int, block: str) -> None:
    src = ("{{ " + block + " }}") * depth + "x" + "{{ end }}" * depth
    if depth <= MAX_BLOCK_DEPTH:
        assert execute(parse(src), {}) == "x"
        assert identifiers(parse(src)) == set()
    else:
        with pytest.raises(GoTemplateError, match="nested more than"):
            parse(src)


@pytest.mark.parametrize("depth", [MAX_PAREN_DEPTH, MAX_PAREN_DEPTH + 1, 5000])
def test_deep_pipelines_have_an_explicit_limit(depth: int) -> None:
    src = "{{ " + "(" * depth + "len .X" + ")" * depth + " }}"
    if depth <= MAX_PAREN_DEPTH:
        assert execute(parse(src), {"X": [1, 2]}) == "2"
    else:
        with pytest.raises(GoTemplateError, match="nested more than"):
            parse(src)


@pytest.mark.parametrize("src", [
    "{{ range 1000000000 }}x{{ end }}",
    "{{ range $i, $x := 100000000000000 }}{{ $i }}{{ end }}",
    "{{ range 1000 }}{{ range 1000 }}{{ range 1000 }}.{{ end }}{{ end }}{{ end }}",
    '{{ $x := "ab" }}{{ range 80 }}{{ $x = print $x $x }}{{ end }}{{ $x }}',
])
def test_huge_ranges_and_growing_strings_end_in_an_error(src: str) -> None:
    """The finding: a range over a huge integer was a MemoryError or a hang."""
    start = time.monotonic()
    with pytest.raises(GoTemplateError):
        execute(parse(src), {})
    assert time.monotonic() - start < 2


def test_range_over_small_integers_and_non_lists() -> None:
    assert execute(parse("{{ range $i := 3 }}{{ $i }}{{ end }}"), {}) == "012"
    for value in ("text", 1.5, True):
        with pytest.raises(GoTemplateError, match="range can't iterate"):
            execute(parse("{{ range .X }}{{ end }}"), {"X": value})
    assert execute(parse("{{ range .X }}a{{ else }}none{{ end }}"), {"X": None}) == "none"


@pytest.mark.parametrize("src", [
    "{{ range .X }}{{ else }}{{ break }}{{ end }}",
    "{{ range .X }}{{ else }}{{ if 1 }}{{ continue }}{{ end }}{{ end }}",
    "{{ break }}", "{{ if 1 }}{{ continue }}{{ end }}", "{{ with 1 }}{{ break }}{{ end }}",
])
def test_break_and_continue_outside_a_range_body_are_parse_errors(src: str) -> None:
    """The finding: {{break}} in a range's {{else}} let an internal exception escape; Go refuses it at parse."""
    with pytest.raises(GoTemplateError, match="outside"):
        parse(src)


def test_break_and_continue_inside_a_range_body() -> None:
    src = "{{ range .X }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}{{ end }}"
    assert execute(parse(src), {"X": [1, 2, 3, 4, 5]}) == "13"
    nested = "{{ range .X }}{{ range $.Y }}{{ else }}{{ break }}{{ end }}{{ . }}{{ end }}"  # break of the outer range
    assert execute(parse(nested), {"X": [7, 8], "Y": [1]}) == "78"
    assert execute(parse(nested), {"X": [7, 8], "Y": []}) == ""


@pytest.mark.parametrize("src", ["{{ () }}", "{{ ( ) }}", "{{ (|) }}", "{{ len () }}", "{{ | }}", "{{ $x := }}",
                                 "{{ 1 | }}", "{{ (1) | () }}"])
def test_empty_commands_are_parse_errors(src: str) -> None:
    """The finding: {{ () }} was an IndexError in the command evaluator."""
    with pytest.raises(GoTemplateError):
        parse(src)


@pytest.mark.parametrize("literal", ["9" * 5000, "99999999999999999999", "-9223372036854775809"])
def test_integer_literals_beyond_int64_are_refused(literal: str) -> None:
    with pytest.raises(GoTemplateError, match="number out of range"):
        parse("{{ " + literal + " }}")
    assert execute(parse("{{ 9223372036854775807 }}"), {}) == "9223372036854775807"


@pytest.mark.parametrize("src", ["{{", "{{ if 1 }}", "{{ end }}", "{{ else }}", "}}{{", "{{ range }}{{ end }}x",
                                 "{{ .X", '{{ "unclosed }}', "{{ if 1 }}{{ else }}{{ else }}{{ end }}"])
def test_unbalanced_actions_are_errors(src: str) -> None:
    with pytest.raises(GoTemplateError):
        execute(parse(src), {"X": 1})
