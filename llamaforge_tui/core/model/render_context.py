"""The model side of a dataset preview: tokenizer, chosen template, and the Ollama TEMPLATE check.

The CLI and the Dataset pane both need "render these records as model X sees them"; this builds that
once from a source string (``ollama:NAME``, ``hf:ORG/NAME``, a .gguf, a folder) or an Ollama model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.data.chat_templates import ChatTemplateChoice, resolve_chat_template
from llamaforge_tui.core.data.template_check import TemplateCheck, check_against_ollama

if TYPE_CHECKING:
    from llamaforge_tui.core.settings import Settings


@dataclass
class RenderContext:
    source: str
    tokenizer: Any  # transformers PreTrainedTokenizerFast
    template: ChatTemplateChoice
    architecture: str | None
    check: TemplateCheck
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "architecture": self.architecture,
                "template": {"name": self.template.name, "origin": self.template.origin,
                             "reason": self.template.reason},
                "ollama_template_check": self.check.to_dict()}


def source_text(model: Any) -> str:
    """A source string for a string or an OllamaModel (``ollama:name:tag``)."""
    if isinstance(model, str):
        return model
    return f"ollama:{model.full_name}"


def _system_layer(source: str, settings: Settings | None, model: Any) -> str | None:
    if model is not None and not isinstance(model, str):
        return model.read_layer_text("system")
    if not source.startswith("ollama:"):
        return None
    from llamaforge_tui.core.ollama.store import find_model
    from llamaforge_tui.core.model.sources import parse_source

    spec = parse_source(source)
    return find_model(settings, spec.name or "", summarize=False).read_layer_text("system")


def build_render_context(model: Any, settings: Settings | None, *, template_override: str | None = None,
                         weights: str = "gguf") -> RenderContext:
    """Load the tokenizer for ``model`` (a source string or an OllamaModel) and choose the template.

    Raises LlamaForgeError subclasses (SourceError, StoreError, GgufError...) for sources that cannot load.
    """
    from llamaforge_tui.core.model.loading import load_tokenizer

    source = source_text(model)
    bundle = load_tokenizer(source, settings, weights=weights)
    ollama_template = getattr(bundle, "ollama_template", None)
    if ollama_template is None and model is not None and not isinstance(model, str):
        ollama_template = model.read_layer_text("template")
    choice = resolve_chat_template(bundle, getattr(bundle, "architecture", None), override=template_override,
                                   ollama_template=ollama_template)
    system = _system_layer(source, settings, model) if ollama_template else None
    check = check_against_ollama(bundle.tokenizer, choice, ollama_template, system_layer=system)
    warnings = [w for w in (check.warning,) if w] + check.notes
    if check.status == "differ":
        warnings.append("to train exactly as Ollama renders, choose the chat template 'ollama' (its TEMPLATE layer)")
    if choice.origin == "fallback":
        warnings.append(f"no chat template fits this model ({choice.reason}); using the plain format")
    return RenderContext(source, bundle.tokenizer, choice, getattr(bundle, "architecture", None), check, warnings)
