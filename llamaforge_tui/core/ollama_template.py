"""Does training render conversations the way Ollama will at inference?

Ollama builds each prompt from the model's TEMPLATE layer (a Go template); training renders with a
Jinja chat template. If they differ, the fine-tuned model learns a format it is never shown. Here we
render the same sample conversations both ways and report the first difference. The Go side follows
Ollama's ``template.Execute``: system messages are collated into ``.System``, consecutive messages of
one role are merged, templates with ``.Messages`` see the whole list, and legacy
``.System/.Prompt/.Response`` templates are run turn by turn with the last one cut after
``.Response``. When the Go template uses something we cannot evaluate, the check says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.chat_templates import ChatTemplateChoice, render_chat
from llamaforge_tui.core.errors import DatasetError
from llamaforge_tui.core.go_template import GoStruct, GoTemplateError, Node, cut_after_response, execute, identifiers, parse

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SAMPLES: dict[str, list[dict[str, str]]] = {
    "user-assistant-user": [
        {"role": "user", "content": "Hello! Can you help me?"},
        {"role": "assistant", "content": "Of course. What do you need?"},
        {"role": "user", "content": "What is 2 + 2?"},
    ],
    "system-user": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name a primary colour."},
    ],
}


def _message(m: dict[str, str]) -> GoStruct:
    return GoStruct("api.Message", Role=m["role"], Content=m["content"], Thinking="", Images=[], ToolCalls=[],
                    ToolName="")


def _collate(messages: list[dict[str, str]]) -> tuple[str, list[dict[str, str]]]:
    system = [m["content"] for m in messages if m["role"] == "system"]
    collated: list[dict[str, str]] = []
    for m in messages:
        if collated and collated[-1]["role"] == m["role"] and m["role"] != "tool":
            collated[-1] = {"role": m["role"], "content": collated[-1]["content"] + "\n\n" + m["content"]}
        else:
            collated.append(dict(m))
    return "\n\n".join(system), collated


def render_ollama(template: str, messages: list[dict[str, str]], *, system: str | None = None) -> str:
    """The prompt Ollama's /api/chat would build from ``messages`` (raises GoTemplateError)."""
    nodes = parse(template)
    names = identifiers(nodes)
    if "messages" not in names and "response" not in names:
        nodes = [*nodes, *parse("{{ .Response }}")]  # Ollama appends it to such templates
    if system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]  # the model's SYSTEM layer
    sys_text, collated = _collate(messages)
    base: dict[str, Any] = {"Think": False, "IsThinkSet": False}
    if "messages" in names or "document" in names:
        return execute(nodes, {**base, "System": sys_text, "Messages": [_message(m) for m in collated], "Tools": [],
                               "Response": "", "Query": "", "Document": "", "Instruction": ""})
    return _render_legacy(nodes, collated, base)


def _render_legacy(nodes: list[Node], messages: list[dict[str, str]], base: dict[str, Any]) -> str:
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def flush() -> None:
        out.append(execute(nodes, {**base, **turn}))
        turn.update(System="", Prompt="", Response="")

    for m in messages:
        if m["role"] == "system":
            if turn["Prompt"] or turn["Response"]:
                flush()
            turn["System"] = m["content"]
        elif m["role"] == "user":
            if turn["Response"]:
                flush()
            turn["Prompt"] = m["content"]
        elif m["role"] == "assistant":
            turn["Response"] = m["content"]
    out.append(execute(cut_after_response(nodes), {**base, **turn}))
    return "".join(out)


@dataclass
class SampleComparison:
    name: str
    ours: str
    theirs: str

    @property
    def same(self) -> bool:
        return self.ours == self.theirs

    def first_difference(self, context: int = 24) -> str:
        i = 0
        while i < min(len(self.ours), len(self.theirs)) and self.ours[i] == self.theirs[i]:
            i += 1
        lo = max(0, i - context)
        return (f"at character {i}: training renders {self.ours[lo:i + context]!r}, "
                f"Ollama renders {self.theirs[lo:i + context]!r}")


@dataclass
class TemplateCheck:
    """``status``: "match", "differ", "unknown" (the Go template could not be evaluated) or "absent"."""

    status: str
    message: str
    samples: list[SampleComparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def warning(self) -> str | None:
        return None if self.status in ("match", "absent") else self.message

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "message": self.message, "notes": self.notes,
                "samples": [{"name": s.name, "same": s.same, "training": s.ours, "ollama": s.theirs}
                            for s in self.samples]}


def _strip_bos(text: str, tokenizer: Any) -> str:
    bos = getattr(tokenizer, "bos_token", None)
    return text[len(bos):] if bos and text.startswith(bos) else text  # Ollama's runner adds BOS itself


def check_against_ollama(tokenizer: PreTrainedTokenizerBase, choice: ChatTemplateChoice, ollama_template: str | None,
                         *, system_layer: str | None = None) -> TemplateCheck:
    """Render the sample conversations with the training template and with Ollama's TEMPLATE layer."""
    if not ollama_template:
        return TemplateCheck("absent", "the Ollama model has no TEMPLATE layer to compare with")
    notes: list[str] = []
    if system_layer:
        notes.append(f"Ollama adds the model's SYSTEM prompt ({system_layer[:60]!r}) to conversations without one; "
                     "records without a system message are trained without it")
    samples: list[SampleComparison] = []
    for name, msgs in SAMPLES.items():
        try:
            theirs = render_ollama(ollama_template, msgs)
        except GoTemplateError as exc:
            return TemplateCheck("unknown", f"could not evaluate the Ollama TEMPLATE ({exc}); "
                                 "the training template was not compared with it", samples, notes)
        try:
            ours = _strip_bos(render_chat(tokenizer, choice, msgs, add_generation_prompt=True), tokenizer)
        except DatasetError as exc:
            return TemplateCheck("unknown", f"the training template cannot render the sample: {exc}", samples, notes)
        samples.append(SampleComparison(name, ours, theirs))
    differing = [s for s in samples if not s.same]
    if not differing:
        return TemplateCheck("match", f"the {choice.name} template renders the samples exactly as Ollama's TEMPLATE",
                             samples, notes)
    first = differing[0]
    whitespace_only = all("".join(s.ours.split()) == "".join(s.theirs.split()) for s in differing)
    kind = "differ only in whitespace" if whitespace_only else "differ"
    return TemplateCheck("differ", f"the {choice.name} template and Ollama's TEMPLATE {kind} on "
                         f"{len(differing)} of {len(samples)} samples ({first.name}, {first.first_difference()})",
                         samples, notes)
