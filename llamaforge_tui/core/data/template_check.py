"""Does the training template render conversations exactly as the Ollama model's TEMPLATE layer does?

It renders sample conversations both ways: with the chosen training template (``chat_templates``) and
with Ollama's Go TEMPLATE (``core.ollama.template.render_ollama``), and reports where they differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.data.chat_templates import TEMPLATE_SAMPLES, ChatTemplateChoice, render_chat, strip_bos
from llamaforge_tui.core.errors import DatasetError
from llamaforge_tui.core.ollama.go_template import GoTemplateError
from llamaforge_tui.core.ollama.template import render_ollama

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


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
    for name, msgs in TEMPLATE_SAMPLES.items():
        try:
            theirs = render_ollama(ollama_template, msgs)
        except GoTemplateError as exc:
            return TemplateCheck("unknown", f"could not evaluate the Ollama TEMPLATE ({exc}); "
                                 "the training template was not compared with it", samples, notes)
        try:
            ours = strip_bos(render_chat(tokenizer, choice, msgs, add_generation_prompt=True), tokenizer)
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
