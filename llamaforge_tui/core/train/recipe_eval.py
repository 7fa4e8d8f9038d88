"""The recipe's evaluation steps: the masked eval loss during the run, and the base vs tuned summary after the
last step. A mixin of ``TrainingRecipe`` (``trainer``), kept apart so the loop reads in one screen; it uses the
recipe's model, loss function, batches, device and distributed state."""

from __future__ import annotations

from typing import Any

from llamaforge_tui.core.train import distributed as dist
from llamaforge_tui.core.train.events import EvalLogged, EvalSummary


class RecipeEvaluation:
    """Evaluation for a recipe that has ``model``, ``loss_fn``, ``eval_batches``, ``stream``, ``device``,
    ``pad_id``, ``dist``, ``step``, ``emit``, ``say`` and ``_autocast``."""

    model: Any
    loss_fn: Any
    eval_batches: list[Any]
    stream: Any
    device: Any
    pad_id: int
    dist: Any
    step: int
    last_eval_step: int
    last_eval_totals: tuple[float, int]

    def _masked_loss(self, batches: list[Any]) -> tuple[float, int]:
        """Summed loss and label count over ``batches`` (core.train.eval_loss), each rank its share, summed."""
        from llamaforge_tui.core.train.eval_loss import masked_loss

        self.model.eval()
        try:
            module = self.loss_fn.module if self.dist.enabled else self.loss_fn
            part = masked_loss(module, batches, self.device, self.pad_id, autocast=self._autocast,
                               rank=self.dist.rank, world_size=self.dist.world_size)
        finally:
            self.model.train()
        total, count = dist.all_reduce_sum([part.loss_sum, part.tokens], self.device, self.dist)
        return total, int(count)

    def evaluate(self) -> float:
        """Mean loss over the eval split (each rank takes its share)."""
        total, count = self._masked_loss(self.eval_batches)
        eval_loss = total / max(count, 1)
        self.last_eval_step, self.last_eval_totals = self.step, (total, count)
        self.emit(EvalLogged(step=self.step, eval_loss=eval_loss, eval_tokens=int(count)))
        return eval_loss

    def eval_summary(self) -> None:
        """Base vs tuned after the last step: the same masked loss with the adapter switched off, then on, on the
        eval split (its tuned loss is the evaluation just made) or, without one, on the training data."""
        from llamaforge_tui.core.train.eval_loss import perplexity

        split = "eval" if self.eval_batches else "train"
        batches = self.eval_batches or [self.stream[p] for p in range(self.stream.batches_per_epoch)]
        self.say(f"end-of-run evaluation: base vs tuned on the {split} data")
        with self.model.disable_adapter():
            base_sum, count = self._masked_loss(batches)
        tuned_sum, _ = self.last_eval_totals if split == "eval" else self._masked_loss(batches)
        base, tuned = (base_sum / count, tuned_sum / count) if count else (None, None)
        examples = sum(1 for b in batches for row in b.rows for seg in row if seg.n_targets)
        self.emit(EvalSummary(step=self.step, split=split, base_loss=base, tuned_loss=tuned,
                              base_perplexity=perplexity(base), tuned_perplexity=perplexity(tuned), tokens=count,
                              examples=examples))
