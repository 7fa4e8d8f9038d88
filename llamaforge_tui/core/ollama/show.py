"""A model's Modelfile, TEMPLATE, SYSTEM, PARAMETERs, license and details: from the server, else from the store.

``/api/show`` is the authority when a server runs (it knows models we cannot read, such as cloud ones). With the
server down, the same facts come from the store's layers; ``source`` says which one answered, and the shape
(``models show --json`` in shared/CLI.md) is the same either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.errors import StoreError
from llamaforge_tui.core.ollama.client import OllamaServer, OllamaUnavailable
from llamaforge_tui.core.ollama.model import OllamaModel
from llamaforge_tui.core.ollama.modelfile import _param_value
from llamaforge_tui.core.ollama.store import find_model

if TYPE_CHECKING:
    from llamaforge_tui.core.settings import Settings


@dataclass(frozen=True)
class ModelShow:
    name: str
    source: str  # "server" | "store"
    modelfile: str
    template: str
    system: str
    parameters: str  # one "key value" per line, as the server gives it
    license: str
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # why the store answered (the server's error), shown beside the facts

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "modelfile": self.modelfile, "template": self.template,
                "system": self.system, "parameters": self.parameters, "license": self.license,
                "details": self.details, "note": self.note}


def _block(text: str) -> str:
    return '"""' + text + '"""'


def show_from_store(model: OllamaModel, note: str = "") -> ModelShow:
    """The facts as the store's layers hold them (Modelfile rebuilt the way ``ollama show --modelfile`` does)."""
    template = model.read_layer_text("template") or ""
    system = model.read_layer_text("system") or ""
    license_ = model.read_layer_text("license") or ""
    params = model.params()
    param_lines = [f"{key} {_param_value(item)}" for key, value in params.items()
                   for item in (value if isinstance(value, list) else [value])]
    lines = [f"# Modelfile rebuilt from the store's layers ({model.manifest_path})",
             f"FROM {model.gguf_path or model.full_name}"]
    if "adapter" in model.layers:
        lines.append(f"ADAPTER {model.layers['adapter']}")
    if template:
        lines.append(f"TEMPLATE {_block(template)}")
    if system:
        lines.append(f"SYSTEM {_block(system)}")
    lines += [f"PARAMETER {p}" for p in param_lines]
    messages = model.read_layer_text("messages")
    if messages:
        try:
            for message in json.loads(messages):
                lines.append(f"MESSAGE {message.get('role', '?')} {_block(str(message.get('content', '')))}")
        except (ValueError, AttributeError, TypeError):
            lines.append("# (a messages layer that is not a JSON list of messages)")
    if license_:
        lines.append(f"LICENSE {_block(license_)}")
    s = model.summary
    details: dict[str, Any] = {"format": "gguf" if model.gguf_path else (model.config.get("model_format") or "")}
    if s is not None:
        details.update(family=s.architecture or "", parameter_size=s.parameter_label,
                       quantization_level=s.quantization or "", context_length=s.context_length)
    details.update(status=model.status, size_bytes=model.size_bytes, manifest_path=str(model.manifest_path))
    if model.reason:
        details["reason"] = model.reason
    return ModelShow(name=model.full_name, source="store", modelfile="\n".join(lines) + "\n", template=template,
                     system=system, parameters="\n".join(param_lines), license=license_, details=details, note=note)


def show_model(name: str, settings: Settings | None = None, *, server: OllamaServer | None = None,
               store_model: OllamaModel | None = None) -> ModelShow:
    """From the server when one answers; else from the store (``StoreError`` when the store lacks it too).
    A server that answers with an error (an unknown model) is an error, not a reason to read the store."""
    server = server or OllamaServer(settings=settings, timeout=10.0)
    try:
        doc = server.show(name)
    except OllamaUnavailable as exc:
        try:
            model = store_model or find_model(settings, name)
        except StoreError as store_exc:
            raise StoreError(f"{store_exc}; and {exc}") from store_exc
        return show_from_store(model, note=str(exc))
    return ModelShow(name=name, source="server", modelfile=doc["modelfile"], template=doc["template"],
                     system=doc["system"], parameters=doc["parameters"], license=doc["license"],
                     details={**doc["details"], "capabilities": doc["capabilities"],
                              "modified_at": doc["modified_at"]})
