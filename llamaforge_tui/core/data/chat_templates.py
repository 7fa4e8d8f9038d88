"""Chat templates: the model's own, a known family's, a user override, or a plain fallback.

Many GGUFs (the Gemma 3 270M test model included) carry no ``tokenizer.chat_template``. Training
with the wrong template teaches the model a format Ollama never sends it, so the choice is explicit
(:class:`ChatTemplateChoice` says which one and why) and the user can override it.

The family templates below are written for this project in Jinja, following each family's published
turn format. They render a ``bos_token`` when the tokenizer has one and the family uses it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.errors import DatasetError
from llamaforge_tui.core.ollama.go_template import GoTemplateError
from llamaforge_tui.core.ollama.go_template import parse as parse_go_template
from llamaforge_tui.core.ollama.template import render_ollama

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_BOS = "{%- if bos_token %}{{ bos_token }}{% endif %}"

# Gemma (2 and 3): no system role; the system text opens the first user turn. Assistant is "model".
GEMMA = _BOS + """
{%- set ns = namespace(prefix='') %}
{%- for message in messages %}
{%- if message['role'] == 'system' %}{% set ns.prefix = message['content'] | trim + '\n\n' %}
{%- else %}
{%- set role = 'model' if message['role'] == 'assistant' else 'user' %}
{{- '<start_of_turn>' + role + '\n' + ns.prefix + message['content'] | trim + '<end_of_turn>\n' }}
{%- set ns.prefix = '' %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"""

# Llama 3 / 3.x: header tokens around the role, <|eot_id|> closes each turn.
LLAMA3 = _BOS + """
{%- for message in messages %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"""

# ChatML (Qwen 2/2.5/3 and many others).
CHATML = """
{%- for message in messages %}
{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"""

# Mistral [INST]: the system text opens the first user message; eos closes each assistant reply.
MISTRAL = _BOS + """
{%- set ns = namespace(prefix='') %}
{%- for message in messages %}
{%- if message['role'] == 'system' %}{% set ns.prefix = message['content'] + '\n\n' %}
{%- elif message['role'] == 'user' %}{{ '[INST] ' + ns.prefix + message['content'] + ' [/INST]' }}{% set ns.prefix = '' %}
{%- else %}{{ ' ' + message['content'] }}{% if eos_token %}{{ eos_token }}{% endif %}
{%- endif %}
{%- endfor %}"""

# Phi-3: <|role|> markers, <|end|> closes each turn.
PHI3 = """
{%- for message in messages %}
{{- '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"""

# When nothing fits: readable markers, eos after each reply so the model learns to stop.
PLAIN = _BOS + """
{%- for message in messages %}
{%- if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}
{%- elif message['role'] == 'user' %}{{ '### User:\n' + message['content'] + '\n\n' }}
{%- else %}{{ '### Assistant:\n' + message['content'] }}{% if eos_token %}{{ eos_token }}{% endif %}{{ '\n\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"""

FAMILY_TEMPLATES: dict[str, str] = {
    "gemma": GEMMA, "llama3": LLAMA3, "chatml": CHATML, "mistral": MISTRAL, "phi3": PHI3, "plain": PLAIN,
}
FAMILY_ALIASES = {"qwen": "chatml", "qwen2": "chatml", "qwen3": "chatml", "gemma2": "gemma", "gemma3": "gemma",
                  "llama-3": "llama3", "phi-3": "phi3", "inst": "mistral"}

# The tokens that identify each family in a vocabulary or in a template's text.
FAMILY_MARKERS: dict[str, tuple[str, ...]] = {
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "phi3": ("<|user|>", "<|assistant|>", "<|end|>"),
    "mistral": ("[INST]", "[/INST]"),
}
ARCH_FAMILIES = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma",
                 "qwen2": "chatml", "qwen3": "chatml", "qwen2moe": "chatml", "qwen3moe": "chatml",
                 "phi3": "phi3", "mistral": "mistral", "mistral3": "mistral"}


@dataclass(frozen=True, slots=True)
class ChatTemplateChoice:
    """Which template renders conversations, and why (shown to the user in the CLI and the pane)."""

    name: str  # family name ("gemma", "chatml", ...), "ollama", or "custom" for a template we do not recognise
    template: str  # the source: Jinja (transformers' apply_chat_template) or, for syntax "go", Ollama's TEMPLATE
    origin: str  # "tokenizer", "gguf", "override", "family", "fallback", "ollama" (or the bundle's template_origin)
    reason: str = ""  # one line for people: "architecture gemma3, <start_of_turn> in the vocabulary"
    syntax: str = "jinja"  # "go": rendered exactly as Ollama renders its TEMPLATE layer (go_template.py)

    def describe(self) -> str:
        return f"{self.name} ({self.origin}{': ' + self.reason if self.reason else ''})"


def family_of_template(template: str) -> str | None:
    """Guess the family of a template's text, by the turn markers it writes."""
    for family, markers in FAMILY_MARKERS.items():
        if all(m in template for m in markers[:2]):
            return family
    return None


def _vocab_has(tokenizer: Any, tokens: Iterable[str]) -> bool:
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        return False
    return all(t in vocab for t in tokens)


def family_for(tokenizer: Any, architecture: str | None) -> tuple[str | None, str]:
    """(family, reason) from the special tokens present and the architecture; (None, why) when nothing fits."""
    arch = (architecture or "").lower()
    arch_family = ARCH_FAMILIES.get(arch)
    by_tokens = [f for f, markers in FAMILY_MARKERS.items() if f != "mistral" and _vocab_has(tokenizer, markers[:2])]
    if arch_family and (arch_family in by_tokens or arch_family == "mistral"):
        marks = " ".join(FAMILY_MARKERS[arch_family][:2])
        how = f"{marks} in the vocabulary" if arch_family in by_tokens else "the architecture's format"
        return arch_family, f"architecture {arch}, {how}"
    if by_tokens:
        family = by_tokens[0]
        return family, f"{' '.join(FAMILY_MARKERS[family][:2])} in the vocabulary" + (f" (architecture {arch})" if arch else "")
    if _vocab_has(tokenizer, FAMILY_MARKERS["mistral"]):
        return "mistral", "[INST] tokens in the vocabulary"
    if arch_family:
        return arch_family, f"architecture {arch} (its turn tokens are not in the vocabulary)"
    return None, f"no known turn tokens in the vocabulary (architecture {arch or 'unknown'})"


OLLAMA_OVERRIDE = "ollama"


def _split_bundle(source: Any) -> tuple[Any, str | None, str | None, str | None]:
    """(tokenizer, chat template, template origin, architecture) from a TokenizerBundle or a bare tokenizer."""
    if hasattr(source, "tokenizer") and hasattr(source, "chat_template"):
        return (source.tokenizer, source.chat_template, getattr(source, "template_origin", None) or None,
                getattr(source, "architecture", None))
    return source, getattr(source, "chat_template", None), None, None


def resolve_chat_template(source: Any, architecture: str | None = None, override: str | None = None, *,
                          ollama_template: str | None = None) -> ChatTemplateChoice:
    """Pick the template for ``source`` (a SOURCES ``TokenizerBundle`` or a tokenizer).

    Order: ``override`` (a family name, ``"ollama"``, a path to a Jinja file, or Jinja text); the model's
    own template (HF tokenizer or GGUF ``tokenizer.chat_template``); the family matching the architecture
    and the special tokens present; the plain format. For an Ollama model with a TEMPLATE layer, the layer
    itself replaces that default when the default renders differently (origin ``"ollama"``). ``"ollama"`` trains with the Ollama model's TEMPLATE
    layer itself (``ollama_template``, or the bundle's), so training renders exactly what Ollama sends.
    """
    tokenizer, own, own_origin, bundle_arch = _split_bundle(source)
    architecture = architecture or bundle_arch
    if override and override.strip().lower() == OLLAMA_OVERRIDE:
        go_text = ollama_template or getattr(source, "ollama_template", None)
        if not go_text:
            raise DatasetError("the 'ollama' chat template needs an Ollama model with a TEMPLATE layer "
                               "(model source ollama:NAME[:TAG])")
        try:
            parse_go_template(go_text)
        except GoTemplateError as exc:
            raise DatasetError(f"cannot train with the Ollama TEMPLATE: {exc}") from exc
        return ChatTemplateChoice(OLLAMA_OVERRIDE, go_text, "override", "the Ollama model's TEMPLATE layer", "go")
    if override:
        return _from_override(override)
    if own:
        family = family_of_template(own) or "custom"
        choice = ChatTemplateChoice(family, own, own_origin or "tokenizer", "the model's own chat template")
    else:
        family, reason = family_for(tokenizer, architecture)
        choice = (ChatTemplateChoice(family, FAMILY_TEMPLATES[family], "family", reason) if family is not None
                  else ChatTemplateChoice("plain", PLAIN, "fallback", reason))
    go_text = ollama_template or getattr(source, "ollama_template", None)
    return _prefer_ollama_template(tokenizer, choice, go_text) if go_text else choice


# Conversations rendered both ways to compare a training template with an Ollama TEMPLATE.
TEMPLATE_SAMPLES: dict[str, list[dict[str, str]]] = {
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


def strip_bos(text: str, tokenizer: Any) -> str:
    bos = getattr(tokenizer, "bos_token", None)
    return text[len(bos):] if bos and text.startswith(bos) else text  # Ollama's runner adds BOS itself


def _prefer_ollama_template(tokenizer: Any, choice: ChatTemplateChoice, go_text: str) -> ChatTemplateChoice:
    """An Ollama model is served with its TEMPLATE layer, so that is the default training format whenever the
    template we would otherwise pick renders the samples differently: a fine-tune trained in one format and
    served in another learns the wrong turn markers. Kept when the TEMPLATE cannot be evaluated here."""
    for name, messages in TEMPLATE_SAMPLES.items():
        try:
            theirs = render_ollama(go_text, messages)
            ours = strip_bos(render_chat(tokenizer, choice, messages, add_generation_prompt=True), tokenizer)
        except (GoTemplateError, DatasetError):
            return choice
        if ours != theirs:
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            reason = (f"the model's own TEMPLATE (Ollama serves it): the {choice.name} template renders "
                      f"the {name} sample differently from character {at}")
            return ChatTemplateChoice(OLLAMA_OVERRIDE, go_text, "ollama", reason, "go")
    return choice


def _from_override(override: str) -> ChatTemplateChoice:
    key = override.strip().lower()
    key = FAMILY_ALIASES.get(key, key)
    if key in FAMILY_TEMPLATES:
        return ChatTemplateChoice(key, FAMILY_TEMPLATES[key], "override", "chosen by the user")
    if "{{" in override or "{%" in override:
        return ChatTemplateChoice(family_of_template(override) or "custom", override, "override", "Jinja given by the user")
    path = Path(override).expanduser()
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"cannot read chat template {path}: {exc}") from exc
        return ChatTemplateChoice(family_of_template(text) or "custom", text, "override", f"from {path}")
    raise DatasetError(f"unknown chat template {override!r}; use one of {', '.join(FAMILY_TEMPLATES)}, "
                       "ollama (the Ollama model's TEMPLATE), a path to a Jinja file, or Jinja text")


def render_chat(tokenizer: PreTrainedTokenizerBase, template: ChatTemplateChoice, messages: list[dict[str, str]],
                *, add_generation_prompt: bool = False) -> str:
    """Render messages to text exactly as training will see them (transformers' Jinja environment, or
    Ollama's rules for a Go TEMPLATE: there a conversation ending with a user turn gets the reply header)."""
    if template.syntax == "go":
        try:
            return render_ollama(template.template, messages)
        except GoTemplateError as exc:
            raise DatasetError(f"the Ollama TEMPLATE failed to render: {exc}") from exc
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(messages, chat_template=template.template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except TemplateError as exc:
        raise DatasetError(f"chat template {template.name} failed to render: {exc}") from exc
    if not isinstance(text, str):  # pragma: no cover - transformers returns str with tokenize=False
        raise DatasetError(f"chat template {template.name} did not render text")
    return text
