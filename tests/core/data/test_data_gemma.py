"""Masking with the real Gemma 3 270M GGUF's own tokenizer (no chat template in the file: the family's is chosen)."""

from __future__ import annotations

import pytest

from fixtures.ollama_store import gemma_gguf_path

from llamaforge_tui.core.data.chat_templates import resolve_chat_template
from llamaforge_tui.core.data.dataset import IGNORE_INDEX, Conversation, Message, TextDoc, encode_record

START_OF_TURN, END_OF_TURN, NEWLINE, BOS, EOS = 105, 106, 107, 2, 1


@pytest.fixture(scope="module")
def gemma_tokenizer():  # noqa: ANN201
    from llamaforge_tui.core.gguf.tokenizer import load_gguf_tokenizer

    return load_gguf_tokenizer(gemma_gguf_path())


def runs(ex) -> list[list[int]]:  # noqa: ANN001
    """Consecutive trained positions, as id lists."""
    out: list[list[int]] = []
    prev = False
    for tid, lab in zip(ex.input_ids, ex.labels):
        trained = lab != IGNORE_INDEX
        if trained and not prev:
            out.append([])
        if trained:
            out[-1].append(tid)
        prev = trained
    return out


@pytest.mark.slow
def test_gemma_gguf_tokenizer_masks_only_replies(gemma_tokenizer) -> None:  # noqa: ANN001
    tok = gemma_tokenizer
    choice = resolve_chat_template(tok, "gemma3")
    assert (choice.name, choice.origin) == ("gemma", "family")
    conv = Conversation((
        Message("system", "You are Lumi, the support assistant."),
        Message("user", "How do I reset my kettle?"),
        Message("assistant", "Hold the power button for five seconds."),
        Message("user", "Thanks!"),
        Message("assistant", "You're welcome."),
    ), line=1)
    ex = encode_record(conv, tok, choice, 512)
    assert ex.input_ids[:4] == [BOS, START_OF_TURN, tok.convert_tokens_to_ids("user"), NEWLINE]
    assert ex.input_ids.count(BOS) == 1
    replies = runs(ex)
    assert len(replies) == 2
    for run, text in zip(replies, ("Hold the power button for five seconds.", "You're welcome.")):
        assert run[-1] == END_OF_TURN  # the model learns to close its turn (not the newline after it)
        assert tok.decode(run[:-1]) == text
        assert run[:-1] == tok(text, add_special_tokens=False)["input_ids"]
    masked = [t for t, lab in zip(ex.input_ids, ex.labels) if lab == IGNORE_INDEX]
    assert masked.count(START_OF_TURN) == 4 and END_OF_TURN in masked  # user turns' end markers stay masked
    assert "support assistant" in tok.decode(masked) and "kettle" in tok.decode(masked)

    doc = encode_record(TextDoc("Lumen Home makes kettles.", 1), tok, None, 512)
    assert doc.input_ids[0] == BOS and doc.input_ids[-1] == EOS and doc.labels[1:] == doc.input_ids[1:]
