"""Property tests: every TEMPLATE, SYSTEM and PARAMETER value the Modelfile writer accepts reads back exactly
through a reader written to Ollama's own grammar (``modelfile_grammar``, a port of ``parser.ParseFile``), and
the writer refuses only what that grammar cannot hold (``\"\"\"`` in a block, characters Ollama drops)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.fuzz_inputs import MODELFILE_SPECIALS
from llamaforge_tui.core.gguf.writer import ExportError
from llamaforge_tui.core.ollama.modelfile import ModelfileSpec, parse_modelfile
from llamaforge_tui.core.ollama.modelfile_grammar import (
    ModelfileSyntaxError,
    go_printable,
    lost_character,
    parse_commands,
    quote_value,
)

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40) | st.lists(
    st.sampled_from(MODELFILE_SPECIALS) | st.characters(min_codepoint=32, max_codepoint=126), max_size=15).map("".join)


def holdable_block(text: str) -> bool:
    return '"""' not in text and lost_character(text) is None


@settings(max_examples=150, deadline=None)
@given(template=TEXT, system=st.none() | TEXT, license_=st.none() | TEXT, stops=st.lists(TEXT, max_size=4),
       temperature=st.none() | st.floats(0, 2) | st.integers(0, 10**6))
def test_writer_round_trips_through_ollamas_grammar(template, system, license_, stops, temperature) -> None:
    params: dict = {"stop": stops} if stops else {}
    if temperature is not None:
        params["temperature"] = temperature
    spec = ModelfileSpec("./model.gguf", template=template, system=system, license=license_, parameters=params,
                         notes=[f"stops: {stops!r}", "multi\nline note"])
    holdable = all(holdable_block(t) for t in (template, system, license_) if t is not None) and all(
        quote_value(s) is not None for s in stops)
    try:
        text = spec.render()
    except ExportError as exc:
        assert not holdable, f"refused a holdable spec: {exc}"
        return
    assert holdable
    parsed = parse_modelfile(text)
    assert parsed["from"] == "./model.gguf"
    assert parsed["template"] == template
    assert parsed.get("system") == system
    assert parsed.get("license") == license_
    assert parsed["parameters"].get("stop", []) == stops
    if temperature is not None:
        assert parsed["parameters"]["temperature"] == [temperature]


@settings(max_examples=150, deadline=None)
@given(value=TEXT)
def test_every_parameter_string_reads_back_or_is_refused(value: str) -> None:
    quoted = quote_value(value)
    if quoted is None:
        assert lost_character(value) is not None or ('"""' in value)
        return
    assert parse_commands(f"FROM x\nPARAMETER stop {quoted}\n") == [("model", "x"), ("stop", value)]


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=80))
def test_the_reader_parses_or_raises_its_own_error(text: str) -> None:
    try:
        commands = parse_commands(text)
    except ModelfileSyntaxError as exc:
        assert isinstance(exc, ValueError) and str(exc)
        return
    for name, value in commands:
        assert all(go_printable(c) or c in " \t\r\n" for c in value)


@pytest.mark.parametrize(("text", "expected"), [
    ('FROM llama3\nPARAMETER stop "<|im_end|>"\n', [("model", "llama3"), ("stop", "<|im_end|>")]),
    ("FROM x\nPARAMETER temperature 0.7\n# a comment\n", [("model", "x"), ("temperature", "0.7")]),
    ('FROM x\nTEMPLATE """{{ .System }}\n{{ .Prompt }}"""\n', [("model", "x"), ("template", "{{ .System }}\n{{ .Prompt }}")]),
    ('FROM x\nSYSTEM "two\nlines"', [("model", "x"), ("system", "two\nlines")]),
    ('FROM x\nPARAMETER stop a b\n', [("model", "x"), ("stop", "a b")]),
    ('FROM x\nPARAMETER stop "a\\nb"\n', [("model", "x"), ("stop", "a\\nb")]),  # no escapes in Modelfiles
    ("FROM x\nMESSAGE user Hello there\n", [("model", "x"), ("message", "user: Hello there")]),
    ("from x\nsystem \x1bhi\u200b!\n", [("model", "x"), ("system", "hi!")]),  # non-printables dropped
])
def test_reader_matches_ollamas_parser(text: str, expected: list) -> None:
    assert parse_commands(text) == expected


@pytest.mark.parametrize("text", ['FROM x\nTEMPLATE """never closed\n', "FROM x\nBOGUS y\n", "FROM x\nPARAMETER\n",
                                  "FROM x\nMESSAGE robot hi\n", 'FROM x\nSYSTEM "open'])
def test_reader_refuses_what_ollama_refuses(text: str) -> None:
    with pytest.raises(ModelfileSyntaxError):
        parse_commands(text)


@pytest.mark.parametrize(("value", "why"), [('say """hi"""', '"""'), ("a\x00b", "drops"), ("nb\u00a0sp", "drops"),
                                            ("\ufeffbom", "drops")])
def test_unwritable_values_are_refused_with_the_reason(value: str, why: str) -> None:
    with pytest.raises(ExportError, match=why):
        ModelfileSpec("./m.gguf", template=value).render()
    with pytest.raises(ExportError, match="API"):
        ModelfileSpec("./m.gguf", parameters={"stop": [value + '\n"']}).render()


def test_stops_that_json_escaping_would_corrupt_read_back_exactly() -> None:
    """Ollama never unescapes: a JSON-quoted stop "a\\"b" would be read as a\\"b. Quote the Ollama way."""
    stops = ['a"b', "back\\slash", "\n\n", '"', '""x', 'q"\nr', " padded ", "\t"]
    parsed = parse_modelfile(ModelfileSpec("./m.gguf", parameters={"stop": stops}).render())
    assert parsed["parameters"]["stop"] == stops
