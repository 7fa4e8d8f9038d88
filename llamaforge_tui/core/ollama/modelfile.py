"""The Modelfile written beside an export, and the same content as an ``/api/create`` request.

Missing stop tokens are the most common reason a fine-tune rambles in Ollama. So for an Ollama source the
TEMPLATE, SYSTEM, PARAMETER (every ``stop``) and LICENSE layers are copied verbatim; for any other source a
Go TEMPLATE is written that renders exactly the text the model was trained on (the Jinja family templates
of ``chat_templates.py``), with stops from the end-of-turn and EOS tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from llamaforge_tui.core.gguf.writer import ExportError
from llamaforge_tui.core.ollama.modelfile_grammar import (
    ModelfileSyntaxError,
    lost_character,
    param_key_ok,
    parse_commands,
    quote_block,
    quote_value,
)

__all__ = ["ModelfileSpec", "ModelfileSyntaxError", "from_ollama_layers", "from_ollama_model", "from_template_family",
           "parse_modelfile"]

# Go templates (Ollama's ``.Messages``) that render the same text as chat_templates.FAMILY_TEMPLATES for
# messages whose content is already trimmed. BOS is left to the tokenizer (``add_bos_token``), as Ollama does.
GO_TEMPLATES: dict[str, str] = {
    "gemma": """{{- $system := "" }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "system" }}{{ $system = .Content }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- else }}<start_of_turn>user
{{ if $system }}{{ $system }}

{{ end }}{{ .Content }}<end_of_turn>
{{ $system = "" }}{{ if $last }}<start_of_turn>model
{{ end }}
{{- end }}
{{- end }}""",
    "chatml": """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
{{ .Content }}{{ if and $last (eq .Role "assistant") }}{{ else }}<|im_end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}""",
    "llama3": """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}{{ if and $last (eq .Role "assistant") }}{{ else }}<|eot_id|>{{ end }}
{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}""",
    "phi3": """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|{{ .Role }}|>
{{ .Content }}{{ if and $last (eq .Role "assistant") }}{{ else }}<|end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|assistant|>
{{ end }}
{{- end }}""",
    "mistral": """{{- $system := "" }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "system" }}{{ $system = .Content }}
{{- else if eq .Role "user" }}[INST] {{ if $system }}{{ $system }}

{{ end }}{{ .Content }} [/INST]{{ $system = "" }}
{{- else }} {{ .Content }}{{ if not $last }}@EOS@{{ end }}
{{- end }}
{{- end }}""",
    "plain": """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "system" }}{{ .Content }}

{{ else if eq .Role "user" }}### User:
{{ .Content }}

{{ if $last }}### Assistant:
{{ end }}
{{- else }}### Assistant:
{{ .Content }}{{ if not $last }}@EOS@

{{ end }}
{{- end }}
{{- end }}""",
    "completion": "{{ .Prompt }}",
}
END_OF_TURN: dict[str, tuple[str, ...]] = {
    "gemma": ("<end_of_turn>",), "chatml": ("<|im_end|>",), "llama3": ("<|eot_id|>",), "phi3": ("<|end|>",),
    "mistral": (), "plain": ("### User:",), "completion": (),
}


@dataclass
class ModelfileSpec:
    """What a Modelfile says. ``from_`` is a path (``./model.gguf``) or an Ollama model name (adapter export)."""

    from_: str
    adapter: str | None = None
    template: str | None = None
    system: str | None = None
    license: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # why the template/stops are what they are

    def render(self) -> str:
        lines = ["# Written by LlamaForge. Create the model with: ollama create NAME -f Modelfile"]
        lines += [f"# {_one_line(n)}" for n in self.notes]
        lines.append(f"FROM {self.from_}")
        if self.adapter:
            lines.append(f"ADAPTER {self.adapter}")
        if self.template is not None:
            lines.append(f"TEMPLATE {_quote_block(self.template, 'TEMPLATE')}")
        if self.system is not None:
            lines.append(f"SYSTEM {_quote_block(self.system, 'SYSTEM')}")
        for key, value in self.parameters.items():
            if not param_key_ok(key):
                raise ExportError(f"PARAMETER name {key!r} cannot be written in a Modelfile (letters, digits, _)")
            for item in value if isinstance(value, list) else [value]:
                lines.append(f"PARAMETER {key} {_param_text(key, item)}")
        if self.license is not None:
            lines.append(f"LICENSE {_quote_block(self.license, 'LICENSE')}")
        return "\n".join(lines) + "\n"

    def create_request(self, name: str, files: dict[str, str] | None = None,
                       adapters: dict[str, str] | None = None) -> dict[str, Any]:
        """The ``/api/create`` body: ``files``/``adapters`` map file names to ``sha256:<hex>`` digests."""
        body: dict[str, Any] = {"model": name, "stream": True}
        if files:
            body["files"] = files
        else:
            body["from"] = self.from_
        if adapters:
            body["adapters"] = adapters
        if self.template is not None:
            body["template"] = self.template
        if self.system is not None:
            body["system"] = self.system
        if self.license is not None:
            body["license"] = self.license
        if self.parameters:
            body["parameters"] = self.parameters
        return body


_API_HINT = "register through the API instead (it carries the text exactly)"


def _one_line(note: str) -> str:
    """A comment line: a newline in a note (a stop token may hold one) would end the comment early."""
    return note.replace("\r", "\\r").replace("\n", "\\n")


def _unwritable(text: str, what: str) -> ExportError:
    lost = lost_character(text)
    if lost is not None:
        return ExportError(f"the {what} contains {lost!r}, which Ollama's Modelfile parser drops; {_API_HINT}")
    return ExportError(f'the {what} contains """, which a Modelfile cannot quote; {_API_HINT}')


def _quote_block(text: str, what: str) -> str:
    quoted = quote_block(text)
    if quoted is None:
        raise _unwritable(text, what)
    return quoted


def _param_text(key: str, value: Any) -> str:
    """A PARAMETER value that Ollama reads back exactly (strings quoted, since Ollama never unescapes)."""
    if isinstance(value, str):
        quoted = quote_value(value)
        if quoted is None:
            raise _unwritable(value, f"PARAMETER {key} value")
        return quoted
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    raise ExportError(f"PARAMETER {key} has a value {type(value).__name__} that a Modelfile cannot hold; {_API_HINT}")


def _param_value(value: Any) -> str:
    """Best effort, for showing parameters (``ollama show``'s way); ``render`` uses the strict ``_param_text``."""
    try:
        return _param_text("value", value)
    except ExportError:
        return json.dumps(value, ensure_ascii=False, default=str)


def from_ollama_layers(from_: str, *, template: str | None, system: str | None, license: str | None,
                       params: dict[str, Any], adapter: str | None = None) -> ModelfileSpec:
    """Copy the source model's layers verbatim (template and every stop byte for byte)."""
    notes = ["TEMPLATE, SYSTEM, PARAMETER and LICENSE copied verbatim from the source Ollama model"]
    return ModelfileSpec(from_, adapter, template, system, license, dict(params), notes)


def from_template_family(from_: str, family: str | None, *, eos_token: str | None, vocab: set[str] | None = None,
                         adapter: str | None = None, chat_template: str | None = None) -> ModelfileSpec:
    """A TEMPLATE matching the training format, with stops from the end-of-turn and EOS tokens."""
    notes: list[str] = []
    template: str | None
    if family in GO_TEMPLATES:
        template = GO_TEMPLATES[family].replace("@EOS@", eos_token or "")
        notes.append(f"TEMPLATE renders the {family} format the model was trained on")
    else:
        template = None
        notes.append("the training chat template is not a known family: no TEMPLATE written; recent Ollama "
                     "servers fall back to tokenizer.chat_template in the GGUF" if chat_template else
                     "no chat template known: no TEMPLATE written")
    stops: list[str] = []
    for tok in END_OF_TURN.get(family or "", ()):
        if vocab is None or tok in vocab or not tok.startswith("<"):
            stops.append(tok)
    if eos_token and eos_token not in stops:
        stops.append(eos_token)
    params: dict[str, Any] = {"stop": stops} if stops else {}
    if stops:
        notes.append("stops from the end-of-turn and EOS tokens: " + ", ".join(stops))
    return ModelfileSpec(from_, adapter, template, None, None, params, notes)


def parse_modelfile(text: str) -> dict[str, Any]:
    """Read a Modelfile the way Ollama's parser does (``modelfile_grammar``), ours or ``ollama show``'s:
    ``{"from", "template", "system", "license", "adapter", ..., "parameters": {key: [values]}}``, plus
    ``"messages"`` when there are MESSAGE lines. Raises ``ModelfileSyntaxError`` (a ``ValueError``)."""
    out: dict[str, Any] = {"parameters": {}}
    for name, value in parse_commands(text):
        if name == "model":
            out["from"] = value
        elif name == "message":
            role, _, content = value.partition(": ")
            out.setdefault("messages", []).append({"role": role, "content": content})
        elif name in ("template", "system", "license", "adapter", "draft", "renderer", "parser", "requires"):
            out[name] = value
        else:
            out["parameters"].setdefault(name, []).append(_typed(name, value))
    return out


def _typed(key: str, value: str) -> Any:
    """Numbers and booleans as such (Ollama types them by the option); ``stop`` is always text."""
    if key == "stop":
        return value
    if value in ("true", "false"):
        return value == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def from_ollama_model(model: Any, from_: str, *, adapter: str | None = None) -> ModelfileSpec:
    """``from_ollama_layers`` for a FOUNDATION ``OllamaModel`` (anything with ``read_layer_text``/``params``)."""
    return from_ollama_layers(from_, template=model.read_layer_text("template"), system=model.read_layer_text("system"),
                              license=model.read_layer_text("license"), params=model.params(), adapter=adapter)
