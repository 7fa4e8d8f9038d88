"""Token-level pieces of generation: streaming text out of token ids, stop strings held back until they are known,
temperature/top-p sampling from a private generator, and the stop tokens of a model. No model code here: the
session (``session.py``) drives them, and they are tested on their own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OnToken = Callable[[str], None]

# Turn-closing tokens of the known chat formats: generation ends at these when the vocabulary has them, as it
# ends in Ollama through the model's stop PARAMETERs.
TURN_END_TOKENS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<|end_of_text|>",
                   "</s>", "<eos>")


# -- streaming text from token ids ----------------------------------------------------------------------------------
class IncrementalDecoder:
    """Token ids in, new text out. Byte-level tokenizers can split one character over several tokens, so text is
    released only once it decodes cleanly (no trailing U+FFFD); decoding a short window (not the whole answer)
    keeps each step cheap while spaces and merges come out as the full decode would write them."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the window decoded for context
        self.read = 0  # ids up to here have been released as text
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            piece = after[len(before):]
            self.prefix, self.read = self.read, len(self.ids)
            self.text += piece
            return piece
        return ""

    def flush(self) -> str:
        """What is still held back at the end (an incomplete character is released as it decodes)."""
        rest = self._decode(self.ids[self.prefix:])[len(self._decode(self.ids[self.prefix:self.read])):]
        self.read = self.prefix = len(self.ids)
        self.text += rest
        return rest


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    hits = [text.find(s) for s in stops if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string (kept until it is known)."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:n]):
                keep = n
                break
    return keep


class StopStringFilter:
    """Streams text through, holding back what may turn into a stop string; ``done`` once one appears."""

    def __init__(self, stops: tuple[str, ...], on_token: OnToken | None) -> None:
        self.stops = tuple(s for s in stops if s)
        self.on_token = on_token
        self.buffer = ""
        self.sent = 0
        self.done = False

    def feed(self, piece: str) -> None:
        if self.done or not piece:
            return
        self.buffer += piece
        text, hit = cut_at_stop(self.buffer, self.stops)
        if hit:
            self.buffer, self.done = text, True
            self._send(len(text))
        else:
            self._send(len(text) - held_back(text, self.stops))

    def finish(self) -> str:
        self._send(len(self.buffer))
        return self.buffer

    def _send(self, upto: int) -> None:
        if upto > self.sent:
            if self.on_token is not None:
                self.on_token(self.buffer[self.sent:upto])
            self.sent = upto


# -- sampling -------------------------------------------------------------------------------------------------------
def next_token(logits: Any, temperature: float, top_p: float, generator: Any) -> int:
    """Greedy at temperature <= 0; otherwise temperature, then nucleus (top-p) sampling."""
    import torch

    if temperature <= 0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if 0.0 < top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p  # always keeps the top token
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())


def stop_token_ids(tokenizer: Any, model: Any = None) -> set[int]:
    """The ids that end an answer: eos, the generation config's eos ids, and the turn-end tokens in the vocabulary."""
    stops: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        stops.add(int(tokenizer.eos_token_id))
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    for value in eos if isinstance(eos, (list, tuple)) else [eos]:
        if isinstance(value, int):
            stops.add(value)
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        vocab = {}
    stops.update(int(vocab[t]) for t in TURN_END_TOKENS if t in vocab)
    return stops
