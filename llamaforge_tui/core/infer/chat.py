"""Chat backends: one interface over a run (transformers + peft, adapter on and off), an exported GGUF (llama.cpp in
a child process, through ``core.export.llama_runner``) and an Ollama model (``/api/chat``, streamed).

Each backend builds the prompt the way its model is served: the run's training template (``session.py``), the
Modelfile's TEMPLATE for an export (the GGUF's own chat template when there is no Modelfile), the server's own
template for Ollama. Stop tokens come from the model (the run's tokenizer, llama.cpp's end-of-generation tokens,
the Modelfile's ``stop`` PARAMETERs), so an answer ends where Ollama's would.

    backend = open_backend(parse_target("RUN"), settings)      # blocking: loads the model
    answers = ask(backend, history, "question", options, compare=True, on_token=lambda side, text: ...)
    answers["tuned"], answers["base"]                         # session.Generation

Sides: ``tuned`` is the target itself (the run with its adapter, the GGUF, the Ollama model); ``base`` exists only
for runs (``compare``): the same loaded model with the adapter switched off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.infer.generation import (
    ChatError,
    Generation,
    GenerationDefaults,
    Messages,
    check_messages,
    check_sampling,
)
from llamaforge_tui.core.infer.session import RunSession
from llamaforge_tui.core.infer.targets import ChatTarget

if TYPE_CHECKING:
    from llamaforge_tui.core.settings import Settings

log = logging.getLogger(__name__)

SIDES = ("tuned", "base")
OnSideToken = Callable[[str, str], None]  # (side, text)


@dataclass(frozen=True)
class ChatOptions:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    system: str = ""

    @classmethod
    def from_defaults(cls, d: GenerationDefaults) -> ChatOptions:
        return cls(max_tokens=d.max_tokens, temperature=d.temperature, top_p=d.top_p, seed=d.seed, system=d.system)

    def check(self) -> ChatOptions:
        check_sampling(self.max_tokens, self.temperature, self.top_p)
        return self


class ChatBackend:
    """The common interface. ``answer`` is blocking, streams text to ``on_token`` and ends on ``stop_event``."""

    name = "?"
    can_compare = False

    def __init__(self, target: ChatTarget, defaults: GenerationDefaults | None = None) -> None:
        self.target = target
        self.defaults = defaults or GenerationDefaults()

    def answer(self, messages: Messages, options: ChatOptions, *, base: bool = False,
               on_token: Callable[[str], None] | None = None,
               stop_event: threading.Event | None = None) -> Generation:
        raise NotImplementedError

    def side_label(self, side: str) -> str:
        return f"{self.target.label} ({self.name})"

    def close(self) -> None:
        """Free the model (or the child process)."""


class RunBackend(ChatBackend):
    """A run's base + adapter in this process; ``base=True`` answers with the adapter switched off."""

    name = "transformers"
    can_compare = True

    def __init__(self, target: ChatTarget, session: RunSession) -> None:
        super().__init__(target, session.parameters)
        self.session = session

    def answer(self, messages: Messages, options: ChatOptions, *, base: bool = False,
               on_token: Callable[[str], None] | None = None,
               stop_event: threading.Event | None = None) -> Generation:
        ctx = self.session.adapter_disabled() if base else contextlib.nullcontext()
        with ctx:
            return self.session.generate(messages, max_tokens=options.max_tokens, temperature=options.temperature,
                                         top_p=options.top_p, seed=options.seed, on_token=on_token,
                                         stop_event=stop_event)

    def side_label(self, side: str) -> str:
        if side == "base":
            model = self.session.config.model
            shown = Path(model).name if "/" in model and not model.startswith(("ollama:", "hf:")) else model
            return f"base: {shown} (adapter off)"
        return f"tuned: {self.target.label} (adapter on)"

    def close(self) -> None:
        self.session.close()


class GgufBackend(ChatBackend):
    """An exported GGUF (+ adapter GGUF) in a llama.cpp child, prompted with its Modelfile's TEMPLATE."""

    name = "llama.cpp"

    def __init__(self, target: ChatTarget, settings: Settings | None = None, *, n_ctx: int = 4096,
                 stop_event: threading.Event | None = None) -> None:
        from llamaforge_tui.core.export import llama_runner

        modelfile = target.modelfile
        params = {k: (v if k == "stop" else v[-1]) for k, v in (modelfile.get("parameters") or {}).items() if v}
        super().__init__(target, GenerationDefaults.from_ollama(params, modelfile.get("system")))
        self.template: str | None = modelfile.get("template") or None
        self.jinja: Any = None
        if self.template is None:
            self.jinja = _gguf_jinja(target.path)
        llama_runner.require_llama_cpp("chat with a GGUF")
        extra = llama_runner.extra_buffers_setting(settings) if settings is not None else False
        if "num_ctx" in params:
            with contextlib.suppress(TypeError, ValueError):
                n_ctx = int(params["num_ctx"])
        self.runner = llama_runner.LlamaSession(target.path, lora_path=target.adapter, n_ctx=n_ctx,
                                                extra_buffers=extra, what=f"chat with {target.label}",
                                                stop_event=stop_event)

    def prompt(self, messages: Messages) -> tuple[str, bool]:
        """(prompt text, whether llama.cpp should add the BOS token itself)."""
        if self.template is not None:
            from llamaforge_tui.core.ollama.go_template import GoTemplateError
            from llamaforge_tui.core.ollama.template import render_ollama

            try:
                return render_ollama(self.template, list(messages), system=self.defaults.system or None), True
            except GoTemplateError as exc:
                raise ChatError(f"the Modelfile TEMPLATE failed to render: {exc}") from exc
        from llamaforge_tui.core.data.chat_templates import render_chat

        tokenizer, choice = self.jinja
        text = render_chat(tokenizer, choice, list(messages), add_generation_prompt=True)
        bos = getattr(tokenizer, "bos_token", None)
        return text, not (bos and text.startswith(bos))

    def answer(self, messages: Messages, options: ChatOptions, *, base: bool = False,
               on_token: Callable[[str], None] | None = None,
               stop_event: threading.Event | None = None) -> Generation:
        if base:
            raise ChatError("compare (base vs tuned) needs a run; an exported GGUF has no adapter to switch off")
        check_messages(messages)
        text, add_special = self.prompt(messages)
        start = time.perf_counter()
        out = self.runner.generate(text, max_tokens=options.max_tokens, temperature=options.temperature,
                                   top_p=options.top_p, seed=options.seed, stop=self.defaults.stop,
                                   on_token=on_token, stop_event=stop_event, add_special=add_special)
        seconds = time.perf_counter() - start
        n = len(out.ids)
        if out.tokens_per_second > 0:
            seconds = n / out.tokens_per_second
        return Generation(text=out.text, tokens=n, seconds=seconds, finish=out.finish_reason,
                          prompt_tokens=out.prompt_tokens)

    def close(self) -> None:
        self.runner.close()


def _gguf_jinja(path: Path | None) -> tuple[Any, Any]:
    """The GGUF's own chat template (or its family's), with the tokenizer built from the GGUF metadata."""
    from llamaforge_tui.core.data.chat_templates import resolve_chat_template
    from llamaforge_tui.core.model.loading import load_tokenizer

    bundle = load_tokenizer(str(path))
    return bundle.tokenizer, resolve_chat_template(bundle)


class OllamaBackend(ChatBackend):
    """A model on the Ollama server: ``/api/chat`` streamed (the server applies the model's TEMPLATE and stops)."""

    name = "ollama"

    def __init__(self, target: ChatTarget, settings: Settings | None = None, server: Any = None) -> None:
        from llamaforge_tui.core.ollama.client import OllamaServer
        from llamaforge_tui.core.ollama.modelfile import parse_modelfile

        self.server = server or OllamaServer(settings=settings)
        name = target.name or target.text.removeprefix("ollama:")
        shown = self.server.show(name)
        params: dict[str, Any] = {}
        with contextlib.suppress(ValueError, IndexError):
            parsed = parse_modelfile(shown.get("modelfile") or "").get("parameters") or {}
            params = {k: (v if k == "stop" else v[-1]) for k, v in parsed.items() if v}
        super().__init__(target, GenerationDefaults.from_ollama(params, shown.get("system")))
        self.model_name = name

    def answer(self, messages: Messages, options: ChatOptions, *, base: bool = False,
               on_token: Callable[[str], None] | None = None,
               stop_event: threading.Event | None = None) -> Generation:
        if base:
            raise ChatError("compare (base vs tuned) needs a run; an Ollama model has no adapter to switch off")
        check_messages(messages)
        opts = {"temperature": options.temperature, "top_p": options.top_p, "num_predict": options.max_tokens,
                "seed": options.seed}
        pieces: list[str] = []
        start = time.perf_counter()
        count: int | None = None
        duration: float | None = None
        finish = "cancelled"
        for chunk in self.server.chat_stream(self.model_name, messages, opts, stop_event):
            if chunk.content:
                pieces.append(chunk.content)
                if on_token is not None:
                    on_token(chunk.content)
            if chunk.done:
                count = chunk.eval_count
                duration = chunk.eval_duration / 1e9 if chunk.eval_duration else None
                finish = "length" if chunk.done_reason == "length" else "stop"
        seconds = duration or (time.perf_counter() - start)
        return Generation(text="".join(pieces), tokens=count if count is not None else len(pieces), seconds=seconds,
                          finish=finish)

    def close(self) -> None:
        with contextlib.suppress(LlamaForgeError):
            self.server.close()


def open_backend(target: ChatTarget, settings: Settings | None = None, *,
                 stop_event: threading.Event | None = None,
                 progress: Callable[[str], None] | None = None) -> ChatBackend:
    """Load what ``target`` needs (blocking: seconds for a run, a child process for a GGUF)."""
    if target.kind == "run":
        assert target.path is not None
        return RunBackend(target, RunSession.open(target.path, settings, stop_event=stop_event, progress=progress))
    if target.kind == "gguf":
        return GgufBackend(target, settings, stop_event=stop_event)
    if target.kind == "ollama":
        return OllamaBackend(target, settings)
    raise ChatError(f"unknown chat target kind {target.kind!r}")


# -- conversations ----------------------------------------------------------------------------------------------------
@dataclass
class ChatTurn:
    user: str
    answers: dict[str, Generation] = field(default_factory=dict)


@dataclass
class ChatHistory:
    """A multi-turn conversation. Each side keeps its own replies, so a compared base answers from the base's
    own earlier turns, not the tuned model's."""

    turns: list[ChatTurn] = field(default_factory=list)

    def messages(self, user: str, side: str, system: str = "") -> Messages:
        out: Messages = [{"role": "system", "content": system}] if system.strip() else []
        for turn in self.turns:
            reply = turn.answers.get(side) or turn.answers.get("tuned")
            if reply is None:
                continue
            out += [{"role": "user", "content": turn.user}, {"role": "assistant", "content": reply.text}]
        out.append({"role": "user", "content": user})
        return out

    def clear(self) -> None:
        self.turns.clear()

    def pop(self) -> ChatTurn | None:
        return self.turns.pop() if self.turns else None

    def records(self, side: str = "tuned", system: str = "") -> list[dict[str, Any]]:
        """The conversation as dataset records (``{"messages": [...]}``): one record holding every turn."""
        turns = [t for t in self.turns if side in t.answers]
        if not turns:
            return []
        msgs: Messages = [{"role": "system", "content": system}] if system.strip() else []
        for t in turns:
            msgs += [{"role": "user", "content": t.user}, {"role": "assistant", "content": t.answers[side].text}]
        return [{"messages": msgs}]


def ask(backend: ChatBackend, history: ChatHistory, user: str, options: ChatOptions, *, compare: bool = False,
        on_token: OnSideToken | None = None, stop_event: threading.Event | None = None,
        on_done: Callable[[str, Generation], None] | None = None) -> dict[str, Generation]:
    """Answer ``user`` on top of ``history`` (tuned, then base with ``compare``) and record the turn. A stopped
    generation keeps what it wrote."""
    if not user.strip():
        raise ChatError("nothing to send: the prompt is empty")
    options.check()
    if compare and not backend.can_compare:
        raise ChatError(f"--compare needs a run: {backend.target.label} is a {backend.target.kind} target with "
                        "no adapter to switch off")
    answers: dict[str, Generation] = {}
    for side in SIDES if compare else SIDES[:1]:
        if stop_event is not None and stop_event.is_set():
            break
        emit = (lambda text, _side=side: on_token(_side, text)) if on_token is not None else None
        answers[side] = backend.answer(history.messages(user, side, options.system), options, base=side == "base",
                                       on_token=emit, stop_event=stop_event)
        if on_done is not None:
            on_done(side, answers[side])
    if answers:
        history.turns.append(ChatTurn(user, answers))
    return answers


def save_transcript(path: Path | str, history: ChatHistory, *, side: str = "tuned", system: str = "") -> int:
    """Append the conversation to ``path`` as JSONL in the chat dataset format (``{"messages": [...]}``), so it
    can be trained on. The file is rewritten atomically. Returns the number of records written."""
    from llamaforge_tui.core.fsutil import atomic_write_text

    path = Path(path).expanduser()
    records = history.records(side, system)
    if not records:
        raise ChatError("nothing to save: no answered turn yet")
    existing = ""
    if path.exists():
        try:
            existing = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ChatError(f"cannot append to {path}: {exc}") from exc
        if existing and not existing.endswith("\n"):
            existing += "\n"
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, existing + lines)
    return len(records)


def with_system(options: ChatOptions, system: str | None) -> ChatOptions:
    return options if system is None else replace(options, system=system)
