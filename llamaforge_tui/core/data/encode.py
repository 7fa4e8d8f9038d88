"""Records -> token ids and labels, with the loss only on what the assistant says.

How the trained span is found: the conversation is rendered whole, and for each assistant message
``i`` the template also renders the prefix ``messages[:i]`` with the generation prompt and the prefix
``messages[:i+1]``. The assistant span is the characters between where those two renders stop
agreeing with the full text. This needs no per-template rules, covers multi-turn conversations, and
keeps whatever the template writes after a reply (``<end_of_turn>``, ``<|eot_id|>``, eos) inside the
trained span, so the model learns to stop. The full text is tokenized once with offsets, and a token
is trained when its characters overlap a span, so ``input_ids`` are exactly what the tokenizer makes
of the rendered text.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.data.chat_templates import ChatTemplateChoice, render_chat
from llamaforge_tui.core.data.records import Conversation, Record, TextDoc
from llamaforge_tui.core.errors import DatasetError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


class RecordRejected(DatasetError):
    """One record cannot be used (e.g. its prompt alone fills max_seq_len); the loader skips it."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


@dataclass(slots=True)
class Example:
    """One training example. ``labels`` is ``input_ids`` with untrained positions set to -100."""

    input_ids: list[int]
    labels: list[int]
    line: int = 0
    length: int = 0  # tokens of the whole record, before truncation or splitting
    truncated: bool = False
    chunk: int = 0  # position of this piece when a long text document is split into several examples

    @property
    def trainable(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def _common_prefix(a: str, b: str) -> int:
    if b.startswith(a):
        return len(a)
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # binary search on the longest common prefix
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def assistant_spans(tokenizer: PreTrainedTokenizerBase, template: ChatTemplateChoice,
                    conversation: Conversation) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the assistant's replies in it."""
    msgs = conversation.as_dicts()
    if template.syntax == "go":
        return _go_spans(tokenizer, template, conversation)
    full = render_chat(tokenizer, template, msgs)
    markers = _special_texts(tokenizer)
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(msgs):
        if msg["role"] != "assistant":
            continue
        start = _common_prefix(render_chat(tokenizer, template, msgs[:i], add_generation_prompt=True), full)
        end = _common_prefix(render_chat(tokenizer, template, msgs[: i + 1]), full)
        _check_span(conversation, template, full, start, end, i)
        spans.append((start, _trim_after_marker(full, start, end, markers)))
    return full, spans


def _check_span(conversation: Conversation, template: ChatTemplateChoice, full: str, start: int, end: int,
                i: int) -> None:
    probe = conversation.messages[i].content.strip()[:64]
    if end <= start or probe not in full[start:end]:
        raise RecordRejected(conversation.line, f"chat template {template.name} does not render assistant "
                             f"message {i + 1} as one contiguous span, so its loss cannot be masked")


def _go_spans(tokenizer: PreTrainedTokenizerBase, template: ChatTemplateChoice,
              conversation: Conversation) -> tuple[str, list[tuple[int, int]]]:
    """Spans for an Ollama (Go) TEMPLATE. Ollama renders prompts only: the last message is left open (no
    end marker, or a reply header after it). So the conversation is rendered with one more user turn, which
    closes every reply as a mid-conversation turn, and the text is cut after the last reply. A reply's span
    is its text plus the end marker written right after it (``<end_of_turn>``, ``<|im_end|>``, eos...)."""
    msgs = conversation.as_dicts()
    full = render_chat(tokenizer, template, [*msgs, {"role": "user", "content": "\u2063"}])
    markers = sorted(_special_texts(tokenizer), key=len, reverse=True)
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(msgs):
        if msg["role"] != "assistant":
            continue
        start = _common_prefix(render_chat(tokenizer, template, msgs[:i]), full)
        at = full.find(msg["content"], start)
        if at < 0 or full[start:at].strip():
            _check_span(conversation, template, full, start, start, i)
        end = at + len(msg["content"])
        marker = next((m for m in markers if full.startswith(m, end)), "")
        spans.append((start, end + len(marker)))
    return full[: spans[-1][1]] if spans else full, spans


def _special_texts(tokenizer: PreTrainedTokenizerBase) -> tuple[str, ...]:
    texts = set(getattr(tokenizer, "all_special_tokens", None) or ())
    try:
        texts.update(tokenizer.get_added_vocab())
    except (AttributeError, NotImplementedError):
        pass
    return tuple(t for t in texts if t and not t.isspace())


def _trim_after_marker(full: str, start: int, end: int, markers: tuple[str, ...]) -> int:
    """Drop whitespace the template writes after a reply's end marker (``<end_of_turn>\n``): Ollama
    stops at the marker, so the model is never asked for what follows. Kept when no marker precedes it,
    since then that whitespace may be the only end of the reply."""
    trimmed = end
    while trimmed > start and full[trimmed - 1] in " \t\r\n":
        trimmed -= 1
    if trimmed < end and any(full.endswith(m, start, trimmed) for m in markers):
        return trimmed
    return end


class RecordEncoder:
    """Encodes records for one tokenizer/template pair; remembers the tokenizer's BOS habit."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: ChatTemplateChoice | None,
                 max_seq_len: int | None) -> None:
        if max_seq_len is not None and max_seq_len < 2:
            raise DatasetError(f"max_seq_len must be at least 2, got {max_seq_len}")
        self.tokenizer = tokenizer
        self.template = template
        self.max_seq_len = max_seq_len
        self.bos_id: int | None = getattr(tokenizer, "bos_token_id", None)
        self.eos_id: int | None = getattr(tokenizer, "eos_token_id", None)
        self.adds_bos = False
        if self.bos_id is not None:
            with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
            self.adds_bos = bool(with_special) and with_special[0] == self.bos_id

    def tokens(self, record: Record) -> tuple[str, list[int], list[tuple[int, int]], list[bool]]:
        """(rendered text, ids, char offsets, trained flags), before truncation."""
        if isinstance(record, TextDoc):
            text, spans = record.text, [(0, len(record.text))]
        else:
            if self.template is None:
                raise DatasetError("a chat template is needed to render conversations")
            try:
                text, spans = assistant_spans(self.tokenizer, self.template, record)
            except RecordRejected:
                raise
            except DatasetError as exc:  # a template that refuses this record (raise_exception, bad roles)
                raise RecordRejected(record.line, str(exc)) from exc
        try:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        except NotImplementedError as exc:  # slow (Python) tokenizers have no offsets
            raise DatasetError(f"{type(self.tokenizer).__name__} gives no character offsets (not a fast "
                               "tokenizer), so the trained spans cannot be mapped to tokens") from exc
        ids: list[int] = list(enc["input_ids"])
        offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
        trained = [False] * len(ids)
        j = 0
        for k, (s, e) in enumerate(offsets):
            while j < len(spans) and spans[j][1] <= s:
                j += 1
            if j < len(spans) and e > spans[j][0] and s < spans[j][1] and e > s:
                trained[k] = True
        if self.adds_bos and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)  # type: ignore[arg-type]
            offsets.insert(0, (0, 0))
            trained.insert(0, False)
        if isinstance(record, TextDoc) and self.eos_id is not None and (not ids or ids[-1] != self.eos_id):
            ids.append(self.eos_id)  # a document ends: train the model to emit eos there
            offsets.append((len(text), len(text)))
            trained.append(True)
        return text, ids, offsets, trained

    def encode(self, record: Record) -> Example:
        _text, ids, _offsets, trained = self.tokens(record)
        labels = [t if flag else IGNORE_INDEX for t, flag in zip(ids, trained)]
        length = len(ids)
        cut = self.max_seq_len if self.max_seq_len is not None else length
        example = Example(ids[:cut], labels[:cut], record.line, length, length > cut)
        if not any(x != IGNORE_INDEX for x in example.labels):
            if any(flag for flag in trained):
                raise RecordRejected(record.line, f"over-long record: {length} tokens and the first {cut} "
                                     f"(max_seq_len) hold no assistant tokens, so nothing would be trained")
            raise RecordRejected(record.line, "no trainable tokens after rendering")
        return example


    def encode_all(self, record: Record) -> list[Example]:
        """Like :meth:`encode`, but a text document longer than ``max_seq_len`` is split into consecutive
        windows instead of truncated: continued pre-training on a long file should see all of it."""
        if not isinstance(record, TextDoc) or self.max_seq_len is None:
            return [self.encode(record)]
        _text, ids, _offsets, trained = self.tokens(record)
        n, size = len(ids), self.max_seq_len
        if n <= size:
            return [self.encode(record)]
        out: list[Example] = []
        for k, start in enumerate(range(0, n, size)):
            piece = ids[start:start + size]
            if len(piece) < 2:  # a one-token tail predicts nothing
                continue
            labels = [t if flag else IGNORE_INDEX for t, flag in zip(piece, trained[start:start + size])]
            out.append(Example(piece, labels, record.line, n, False, k))
        return out


def encode_record(record: Record, tokenizer: PreTrainedTokenizerBase, template: ChatTemplateChoice | None,
                  max_seq_len: int | None) -> Example:
    """One record -> Example(input_ids, labels), truncated to ``max_seq_len``; raises RecordRejected."""
    return RecordEncoder(tokenizer, template, max_seq_len).encode(record)


def render_for_display(record: Record, tokenizer: PreTrainedTokenizerBase, template: ChatTemplateChoice | None,
                       max_seq_len: int | None = None) -> list[tuple[str, bool]]:
    """The rendered text cut into (span, trained?) pieces, following the token labels exactly.

    Text past ``max_seq_len`` tokens (dropped by truncation) is returned as untrained.
    """
    encoder = RecordEncoder(tokenizer, template, None)
    text, _ids, offsets, trained = encoder.tokens(record)
    if max_seq_len is not None:
        trained = [flag and k < max_seq_len for k, flag in enumerate(trained)]
    pieces: list[tuple[str, bool]] = []
    pos, state = 0, False
    for (s, e), flag in zip(offsets, trained):
        if e <= s or flag == state:
            continue
        if s > pos:
            pieces.append((text[pos:s], state))
        pos, state = max(pos, s), flag
    if pos < len(text):
        pieces.append((text[pos:], state))
    return [p for p in pieces if p[0]]


# ---------------------------------------------------------------------------------------------- stats

@dataclass(frozen=True, slots=True)
class TokenStats:
    """Tokens per example (before truncation), and what training will actually see."""

    min: int
    median: int
    p95: int
    max: int
    over_max_seq_len: int  # records longer than max_seq_len (conversations are truncated, documents split)
    total_trainable: int  # tokens with a label, after truncation
    examples: int  # training examples (a split document counts once per piece)
    total_tokens: int = 0  # after truncation
    max_seq_len: int | None = None
    records: int = 0  # records measured (min/median/p95/max are over these)
    split_documents: int = 0  # text documents split into several examples rather than truncated

    def to_dict(self) -> dict[str, Any]:
        return {"min": self.min, "median": self.median, "p95": self.p95, "max": self.max,
                "over_max_seq_len": self.over_max_seq_len, "total_trainable": self.total_trainable,
                "examples": self.examples, "total_tokens": self.total_tokens, "max_seq_len": self.max_seq_len,
                "records": self.records, "split_documents": self.split_documents}


def _percentile(counts: Counter[int], n: int, q: float) -> int:
    """Nearest-rank percentile over a histogram (lengths -> count), so memory stays flat."""
    rank = max(1, -(-int(q * n * 1000) // 1000))  # ceil(q * n) without float surprises
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value
    return max(counts)


@dataclass
class StatsAccumulator:
    """Streams examples into a histogram of lengths: O(distinct lengths) memory, not O(examples)."""

    max_seq_len: int | None = None
    lengths: Counter[int] = field(default_factory=Counter)
    records: int = 0
    examples: int = 0
    over: int = 0
    split: int = 0
    trainable: int = 0
    tokens: int = 0

    def add(self, example: Example) -> None:
        self.add_record([example])

    def add_record(self, examples: list[Example]) -> None:
        """The examples one record became (several for a split document)."""
        if not examples:
            return
        length = examples[0].length
        self.lengths[length] += 1
        self.records += 1
        self.examples += len(examples)
        self.over += int(examples[0].truncated or len(examples) > 1
                         or (self.max_seq_len is not None and length > self.max_seq_len))
        self.split += int(len(examples) > 1)
        for ex in examples:
            self.trainable += ex.trainable
            self.tokens += len(ex.input_ids)

    def result(self) -> TokenStats:
        if not self.records:
            return TokenStats(0, 0, 0, 0, 0, 0, 0, 0, self.max_seq_len)
        n = self.records
        return TokenStats(min(self.lengths), _percentile(self.lengths, n, 0.5), _percentile(self.lengths, n, 0.95),
                          max(self.lengths), self.over, self.trainable, self.examples, self.tokens, self.max_seq_len,
                          n, self.split)


def token_stats(examples: list[Example], max_seq_len: int | None = None) -> TokenStats:
    """Stats over encoded examples; consecutive pieces of one split document count as one record."""
    acc = StatsAccumulator(max_seq_len)
    group: list[Example] = []
    for ex in examples:
        if group and ex.chunk == 0:
            acc.add_record(group)
            group = []
        group.append(ex)
    acc.add_record(group)
    return acc.result()


def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int = 1) -> int:
    """Optimizer steps to see every example once: ceil(n / (batch * accumulation))."""
    if batch_size < 1 or grad_accum < 1:
        raise DatasetError(f"batch size and accumulation must be at least 1 (got {batch_size}, {grad_accum})")
    per_step = batch_size * grad_accum
    return -(-n_examples // per_step)
