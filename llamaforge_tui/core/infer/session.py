"""A trained run, loaded once for trying it: the base with its adapter, the tokenizer, the training chat template
and the model's stop tokens, with the adapter switchable off for a base-vs-tuned comparison on one model.

The run is loaded the way training loaded it (``core.model.loading`` with the run's SOURCE and ``--weights``, so a
``gguf-quantized`` run keeps its quantized blocks) and the adapter is attached with peft. Prompts are rendered with
the chat template the run trained with (``core.data.chat_templates``: the run's override, the model's own template,
or the Ollama TEMPLATE for runs trained with ``chat_template = "ollama"``) and tokenized as training tokenized them,
so the tuned model sees the format it learned.

API (used by the Chat backends and by evaluation)::

    session = RunSession.open(run, settings)          # run: a run folder, or a run id under the data dir
    session.generate(messages, max_tokens=256, temperature=0.0, top_p=1.0, seed=0,
                     on_token=print, stop_event=event) -> Generation(text, tokens, seconds, tokens_per_second, ...)
    with session.adapter_disabled():                  # the base model: same weights in memory, LoRA switched off
        session.generate(messages, ...)
    session.render(messages) -> str                   # the prompt text (ends with the assistant header)
    session.encode(messages) -> list[int]             # the prompt ids, exactly as training tokenized them
    session.examples() -> (split, [ChatExample])      # prompts + reference answers: the eval split, else training
    session.prepared_data() -> train/eval Examples    # encoded as training encoded them (loss/perplexity)
    session.parameters -> GenerationDefaults          # from the Ollama model's PARAMETERs when there are any
    session.close()

``generate`` is a blocking call with a callback and a stop event: greedy at temperature 0, otherwise temperature
and top-p sampling from a private, seeded ``torch.Generator`` (the global RNG, which a training thread may be using,
is never touched). ``on_token`` gets each new piece of text as it is decoded. It ends at a stop token or stop
string of the model, at ``max_tokens``, at the context length, or when ``stop_event`` is set.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.infer.decoding import (
    IncrementalDecoder,
    OnToken,
    StopStringFilter,
    next_token,
    stop_token_ids,
)
from llamaforge_tui.core.infer.generation import (
    ChatError,
    Generation,
    GenerationDefaults,
    Messages,
    check_messages,
    check_sampling,
)
from llamaforge_tui.core.infer.run_data import (
    ChatExample,
    find_adapter,
    require_data,
    run_examples,
)

if TYPE_CHECKING:
    from llamaforge_tui.core.data.chat_templates import ChatTemplateChoice
    from llamaforge_tui.core.settings import Settings
    from llamaforge_tui.core.train.config import TrainConfig
    from llamaforge_tui.core.train.setup import DataBundle

log = logging.getLogger(__name__)

# -- the session ----------------------------------------------------------------------------------------------------
@dataclass
class RunSession:
    """A run's base + adapter in memory. Build with :meth:`open`; not thread-safe (one generation at a time:
    ``lock`` is held by ``generate``)."""

    run_dir: Path
    config: TrainConfig
    model: Any  # peft PeftModel
    tokenizer: Any
    template: ChatTemplateChoice
    stop_ids: set[int]
    adapter_path: Path
    architecture: str | None = None
    description: dict[str, Any] = field(default_factory=dict)
    parameters: GenerationDefaults = field(default_factory=GenerationDefaults)
    context_length: int = 2048
    chat_template_source: Any = None  # the loaded bundle's chat template (for prepare_data)
    ollama_template: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    _adapter_on: bool = True

    # -- loading ----------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, run: str | Path, settings: Settings | None = None, *, device: str = "auto", dtype: str = "auto",
             stop_event: threading.Event | None = None, progress: Callable[[str], None] | None = None) -> RunSession:
        """Load ``run`` (a run folder or a run id under the runs dir) with its adapter: the final ``adapter/``, or
        the latest checkpoint's while the run is still training."""
        from llamaforge_tui.core.settings import Settings as _Settings
        from llamaforge_tui.core.train import runs
        from llamaforge_tui.core.train.config import TrainConfig

        settings = settings or _Settings()
        run_dir = runs.find_run(settings, run)
        config = TrainConfig.from_file(run_dir / runs.CONFIG_FILE)
        adapter, label = find_adapter(run_dir)
        source = runs.read_source(run_dir)
        say = progress or (lambda message: None)
        weights = f" ({config.weights} weights)" if source.get("gguf_path") or config.weights != "gguf" else ""
        say(f"loading {config.model}{weights} with the adapter of {run_dir.name} ({label})")
        from llamaforge_tui.core.model import loading

        loaded = loading.load_model(config.model, settings, weights=config.weights, dtype=dtype, device=device,
                                    stop_event=stop_event)
        if stop_event is not None and stop_event.is_set():
            raise ChatError("loading cancelled")
        return cls._attach(run_dir, config, loaded, adapter, source, settings)

    @classmethod
    def _attach(cls, run_dir: Path, config: TrainConfig, loaded: Any, adapter: Path, source: dict[str, Any],
                settings: Settings | None) -> RunSession:
        from peft import PeftModel

        from llamaforge_tui.core.data.chat_templates import resolve_chat_template

        tok = loaded.tokenizer
        description = loaded.description.to_dict() if hasattr(loaded.description, "to_dict") else dict(source)
        arch = description.get("architecture") or source.get("architecture")
        if isinstance(loaded.chat_template, str) and not getattr(tok, "chat_template", None):
            tok.chat_template = loaded.chat_template  # as train/setup.prepare_data does
        template = resolve_chat_template(tok, arch, override=config.chat_template,
                                         ollama_template=loaded.ollama_template)
        try:
            model = PeftModel.from_pretrained(loaded.model, str(adapter), is_trainable=False)
        except (ValueError, KeyError, OSError, RuntimeError) as exc:
            raise ChatError(f"cannot attach the adapter {adapter} to {config.model}: {exc}") from exc
        model.eval()
        defaults = _ollama_defaults(config.model, settings) if config.model.startswith("ollama:") else None
        hf_config = getattr(loaded.model, "config", None)
        context = int(getattr(hf_config, "max_position_embeddings", 0) or 2048)
        return cls(run_dir=run_dir, config=config, model=model, tokenizer=tok, template=template,
                   stop_ids=stop_token_ids(tok, loaded.model), adapter_path=adapter, architecture=arch,
                   description=description, parameters=defaults or GenerationDefaults(), context_length=context,
                   chat_template_source=loaded.chat_template, ollama_template=loaded.ollama_template)

    @functools.cached_property
    def _cache_kwarg(self) -> str:
        """``cache`` in transformers 5.2x, ``past_key_values`` before (the same KV cache under its old name)."""
        forward = self.model.get_base_model().forward
        return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"

    @property
    def label(self) -> str:
        return self.run_dir.name

    # -- the adapter switch -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def adapter_disabled(self) -> Iterator[None]:
        """The base model for the duration: peft's ``disable_adapter`` on the one loaded model (no second copy)."""
        with self.model.disable_adapter():
            self._adapter_on = False
            try:
                yield
            finally:
                self._adapter_on = True

    @property
    def adapter_on(self) -> bool:
        return self._adapter_on

    # -- prompts ----------------------------------------------------------------------------------------------------
    def render(self, messages: Messages) -> str:
        """The prompt text in the run's training format, ending where the assistant's reply begins."""
        from llamaforge_tui.core.data.chat_templates import render_chat

        check_messages(messages)
        return render_chat(self.tokenizer, self.template, list(messages), add_generation_prompt=True)

    def encode(self, messages: Messages) -> list[int]:
        """Prompt ids as training encoded its records: no special tokens added to the rendered text, except a BOS
        the tokenizer always adds (when the template did not write it)."""
        ids = list(self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"])
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is not None and (not ids or ids[0] != bos):
            probe = self.tokenizer("a", add_special_tokens=True)["input_ids"]
            if probe and probe[0] == bos:
                ids.insert(0, bos)
        return ids

    # -- generation -------------------------------------------------------------------------------------------------
    def generate(self, messages: Messages, *, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = 0, on_token: OnToken | None = None, stop_event: threading.Event | None = None,
                 stop: tuple[str, ...] = ()) -> Generation:
        """Answer the conversation ``messages`` (ending with a user turn) with the adapter as it is now set."""
        import torch

        check_sampling(max_tokens, temperature, top_p)
        ids = self.encode(messages)
        budget = min(max_tokens, self.context_length - len(ids))
        if budget <= 0:
            raise ChatError(f"the prompt is {len(ids)} tokens and the model's context is {self.context_length}; "
                            "clear the history (ctrl+l / /clear) or shorten the prompt")
        stops = tuple(dict.fromkeys((*self.parameters.stop, *stop)))
        generator = torch.Generator(device="cpu").manual_seed(int(seed or 0))
        decoder = IncrementalDecoder(self.tokenizer)
        out = StopStringFilter(stops, on_token)
        device = _device_of(self.model)
        finish, count = "length", 0
        with self.lock, torch.inference_mode():
            start = time.perf_counter()
            cache = None
            step_ids = torch.tensor([ids], dtype=torch.long, device=device)
            for _ in range(budget):
                if stop_event is not None and stop_event.is_set():
                    finish = "cancelled"
                    break
                result = self.model(input_ids=step_ids, use_cache=True, logits_to_keep=1,
                                    **{self._cache_kwarg: cache})
                cache = getattr(result, self._cache_kwarg, None)
                token = next_token(result.logits[0, -1].cpu(), temperature, top_p, generator)
                if token in self.stop_ids:
                    finish = "stop"
                    break
                count += 1
                out.feed(decoder.push(token))
                if out.done:
                    finish = "stop"
                    break
                step_ids = torch.tensor([[token]], dtype=torch.long, device=device)
            if not out.done:
                out.feed(decoder.flush())
            text = out.finish()
            seconds = time.perf_counter() - start
        return Generation(text=text, tokens=count, seconds=seconds, finish=finish, prompt_tokens=len(ids))

    # -- data -------------------------------------------------------------------------------------------------------
    def prepared_data(self) -> DataBundle:
        """The run's dataset encoded and split exactly as training did (same template, seed and eval split)."""
        from llamaforge_tui.core.train.setup import ModelBundle, prepare_data

        require_data(self.config)
        bundle = ModelBundle(self.model, self.tokenizer, self.chat_template_source, self.architecture,
                             self.description, self.ollama_template)
        return prepare_data(self.config, bundle)

    def examples(self, limit: int | None = None) -> tuple[str, list[ChatExample]]:
        """``("eval", ...)`` from the run's eval split, or ``("train", ...)`` when the run has none."""
        return run_examples(self.config, limit=limit, eval_lines=self._eval_lines())

    def _eval_lines(self) -> set[int] | None:
        if self.config.eval_split <= 0:
            return None
        return {ex.line for ex in self.prepared_data().eval}

    def close(self) -> None:
        """Drop the model (the memory returns once nothing else holds it)."""
        self.model = None
        with contextlib.suppress(ImportError):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


# -- helpers --------------------------------------------------------------------------------------------------------
def _device_of(model: Any) -> Any:
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _ollama_defaults(source: str, settings: Settings | None) -> GenerationDefaults | None:
    """The PARAMETERs (and SYSTEM) of the run's Ollama model, read from the store; None when unreadable."""
    from llamaforge_tui.core.model.basemodel import find_ollama_model
    from llamaforge_tui.core.model.sources import parse_source

    try:
        model = find_ollama_model(settings, parse_source(source).name or "", summarize=False, map_base=False)
        return GenerationDefaults.from_ollama(model.params(), model.read_layer_text("system"))
    except (LlamaForgeError, OSError) as exc:
        log.info("no Ollama parameters for %s: %s", source, exc)
        return None
