"""What a chat generation is made of: the conversation checks, the sampling settings (with the defaults an Ollama
model's PARAMETERs give) and the answer. Shared by the run session, the GGUF backend and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llamaforge_tui.core.errors import LlamaForgeError

Messages = list[dict[str, str]]


class ChatError(LlamaForgeError):
    """A chat target cannot be loaded, or a prompt cannot be answered (too long, no adapter, ...)."""


@dataclass(frozen=True)
class Generation:
    """One answer. ``finish`` is ``stop`` (a stop token or string), ``length`` (max tokens or the context) or
    ``cancelled`` (the stop event)."""

    text: str
    tokens: int
    seconds: float
    finish: str = "stop"
    prompt_tokens: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "tokens": self.tokens, "tokens_per_second": round(self.tokens_per_second, 3),
                "seconds": round(self.seconds, 4), "finish": self.finish, "prompt_tokens": self.prompt_tokens}


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampling defaults: the Ollama model's PARAMETERs where it has them, else greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    system: str = ""
    stop: tuple[str, ...] = ()

    @classmethod
    def from_ollama(cls, params: dict[str, Any], system: str | None = None) -> GenerationDefaults:
        """From an Ollama params layer (``{"temperature": 0.7, "stop": [...], "num_predict": 128}``)."""

        def num(key: str, default: float) -> float:
            value = params.get(key)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default

        stop = params.get("stop")
        stops = tuple(s for s in (stop if isinstance(stop, list) else [stop]) if isinstance(s, str) and s)
        predict = int(num("num_predict", 256))
        return cls(temperature=num("temperature", 0.8 if params else 0.0), top_p=num("top_p", 1.0),
                   max_tokens=predict if predict > 0 else 256, seed=int(num("seed", 0)), system=system or "",
                   stop=stops)


def check_messages(messages: Messages) -> None:
    if not messages:
        raise ChatError("nothing to answer: the conversation is empty")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise ChatError(f"not a chat message: {m!r} (expected role system/user/assistant and text content)")
    if messages[-1]["role"] != "user":
        raise ChatError("the conversation must end with a user message to be answered")


def check_sampling(max_tokens: int, temperature: float, top_p: float) -> None:
    if max_tokens < 1:
        raise ChatError(f"max tokens must be at least 1, got {max_tokens}")
    if temperature < 0:
        raise ChatError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ChatError(f"top-p must be in (0, 1], got {top_p}")
