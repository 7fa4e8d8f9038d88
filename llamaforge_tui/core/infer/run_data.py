"""What a run folder holds for trying it: its adapter (the final one, or the latest checkpoint's while it trains)
and its dataset's prompts with the replies they were trained towards (the eval split as training split it, else
the training data)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from llamaforge_tui.core.errors import ConfigError
from llamaforge_tui.core.infer.generation import ChatError

if TYPE_CHECKING:
    from llamaforge_tui.core.settings import Settings
    from llamaforge_tui.core.train.config import TrainConfig


@dataclass(frozen=True)
class ChatExample:
    """A prompt from a dataset (every turn before the last reply) and the reply it was trained towards."""

    messages: tuple[dict[str, str], ...]
    reference: str
    line: int = 0

    @property
    def prompt(self) -> str:
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")


class LoadedRun(Protocol):
    """What :func:`examples_for` reuses of a loaded run (a ``RunSession``)."""

    run_dir: Path

    def examples(self, limit: int | None = None) -> tuple[str, list[ChatExample]]: ...


def find_adapter(run_dir: Path) -> tuple[Path, str]:
    """The run's adapter: ``adapter/`` once training saved it, else the latest complete checkpoint's."""
    from llamaforge_tui.core.train import checkpoint, runs

    final = run_dir / runs.ADAPTER_DIR
    if (final / "adapter_config.json").is_file():
        return final, "final adapter"
    latest = checkpoint.latest_checkpoint(run_dir)
    if latest is not None and (latest / checkpoint.ADAPTER_SUBDIR / "adapter_config.json").is_file():
        return latest / checkpoint.ADAPTER_SUBDIR, f"checkpoint {latest.name}"
    raise ChatError(f"run {run_dir.name} has no adapter yet: it is saved at the end of training and at each "
                    "checkpoint (--save-every)")


def require_data(config: TrainConfig) -> None:
    if not config.data or not Path(config.data).expanduser().is_file():
        raise ConfigError(f"the run's training data {config.data or '(none)'} is gone")


def run_examples(config: TrainConfig, *, limit: int | None = None,
                 eval_lines: set[int] | None = None) -> tuple[str, list[ChatExample]]:
    """Conversations of the run's data cut before their last reply: those on ``eval_lines`` (the eval split) when
    given and not empty, else all of them (labelled ``train``)."""
    from llamaforge_tui.core.data.dataset import load_dataset
    from llamaforge_tui.core.data.records import Conversation

    require_data(config)
    loaded = load_dataset(config.data, format=config.data_format)
    split = "eval" if eval_lines else "train"
    out: list[ChatExample] = []
    for record in loaded.records:
        if not isinstance(record, Conversation) or (eval_lines and record.line not in eval_lines):
            continue
        msgs = record.as_dicts()
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=-1)
        if last < 1 or msgs[last - 1]["role"] != "user":
            continue
        out.append(ChatExample(tuple(msgs[:last]), msgs[last]["content"], record.line))
        if limit is not None and len(out) >= limit:
            break
    return split, out


def examples_for(run_dir: Path, settings: Settings | None = None, session: LoadedRun | None = None,
                 limit: int | None = None) -> tuple[str, list[ChatExample]]:
    """A run's prompts with references: its eval split (found exactly as training split it, which needs the
    run's tokenizer but not its weights) or, without one, its training data. Reuses ``session`` when it holds
    that run."""
    from llamaforge_tui.core.train.config import TrainConfig

    if session is not None and session.run_dir.resolve() == Path(run_dir).resolve():
        return session.examples(limit)
    config = TrainConfig.from_file(Path(run_dir) / "config.toml")
    if config.eval_split <= 0:
        return run_examples(config, limit=limit)
    from llamaforge_tui.core.model.loading import load_tokenizer
    from llamaforge_tui.core.train.setup import ModelBundle, prepare_data

    require_data(config)
    tok = load_tokenizer(config.model, settings, config.weights)
    bundle = ModelBundle(None, tok.tokenizer, tok.chat_template, tok.architecture, {}, tok.ollama_template)
    eval_lines = {ex.line for ex in prepare_data(config, bundle).eval}
    return run_examples(config, limit=limit, eval_lines=eval_lines)
