"""The Modelfile written beside an export, and the same content as an ``/api/create`` request.

Missing stop tokens are the most common reason a fine-tune rambles in Ollama. So for an Ollama source the
TEMPLATE, SYSTEM, PARAMETER (every ``stop``) and LICENSE layers are copied verbatim; for any other source a
Go TEMPLATE is written that renders exactly the text the model was trained on (the Jinja family templates
of ``chat_templates.py``), with stops from the end-of-turn and EOS tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from llamaforge_tui.core.gguf.writer import ExportError

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
        lines += [f"# {n}" for n in self.notes]
        lines.append(f"FROM {self.from_}")
        if self.adapter:
            lines.append(f"ADAPTER {self.adapter}")
        if self.template is not None:
            lines.append(f"TEMPLATE {_quote_block(self.template, 'TEMPLATE')}")
        if self.system is not None:
            lines.append(f"SYSTEM {_quote_block(self.system, 'SYSTEM')}")
        for key, value in self.parameters.items():
            for item in value if isinstance(value, list) else [value]:
                lines.append(f"PARAMETER {key} {_param_value(item)}")
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


def _quote_block(text: str, what: str) -> str:
    if '"""' in text:
        raise ExportError(f'the {what} contains """, which a Modelfile cannot quote; register through the API instead')
    return '"""' + text + '"""'


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


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
    """A small reader for the Modelfiles this module writes (tests and the ``ollama create`` hint use it)."""
    out: dict[str, Any] = {"parameters": {}}
    i, n = 0, len(text)
    while i < n:
        end = text.find("\n", i)
        line = text[i: end if end >= 0 else n]
        if not line.strip() or line.lstrip().startswith("#"):
            i = (end + 1) if end >= 0 else n
            continue
        cmd, _, rest = line.partition(" ")
        cmd = cmd.upper()
        if rest.startswith('"""'):
            start = i + len(cmd) + 1 + 3
            stop = text.index('"""', start)
            value: Any = text[start:stop]
            nl = text.find("\n", stop + 3)
            i = nl + 1 if nl >= 0 else n
        else:
            value = rest
            i = (end + 1) if end >= 0 else n
        if cmd == "PARAMETER":
            key, _, raw = str(value).partition(" ")
            try:
                val = json.loads(raw)
            except json.JSONDecodeError:
                val = raw
            out["parameters"].setdefault(key, []).append(val)
        else:
            out[cmd.lower()] = value
    return out


def from_ollama_model(model: Any, from_: str, *, adapter: str | None = None) -> ModelfileSpec:
    """``from_ollama_layers`` for a FOUNDATION ``OllamaModel`` (anything with ``read_layer_text``/``params``)."""
    return from_ollama_layers(from_, template=model.read_layer_text("template"), system=model.read_layer_text("system"),
                              license=model.read_layer_text("license"), params=model.params(), adapter=adapter)
