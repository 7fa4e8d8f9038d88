"""An evaluation as plain text rows (metric, base, tuned, change), for the CLI's table, the Train pane's table and
the Runs list's column: one set of number formats everywhere. Strings only, no renderables.

Works on the ``eval.json`` object (``EvalResult.to_dict()``) and on the trainer's end-of-run ``EvalSummary``
(loss and perplexity only), turned into the same shape by :func:`from_summary`.
"""

from __future__ import annotations

from typing import Any

# metric key -> (label, kind): kind picks the number format and how a change is written.
ROWS = (("loss", "loss", "loss"), ("perplexity", "perplexity", "ppl"), ("exact_match", "exact match", "pct"),
        ("token_f1", "token F1", "pct"), ("rouge_l", "ROUGE-L", "pct"),
        ("general_loss", "general loss", "loss"), ("general_perplexity", "general perplexity", "ppl"))


def from_summary(event: Any) -> dict[str, Any]:
    """An ``EvalSummary`` event as an eval.json-shaped dict (no generation scores, no samples)."""
    return {"run": "", "path": "", "split": event.split, "examples": event.examples, "generated": 0, "skipped": 0,
            "base": {"loss": event.base_loss, "perplexity": event.base_perplexity},
            "tuned": {"loss": event.tuned_loss, "perplexity": event.tuned_perplexity},
            "samples": [], "created": event.time, "end_of_run": True}


def format_number(value: float | None, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"{value * 100:.1f}%"
    if kind == "ppl":
        return f"{value:,.2f}"
    return f"{value:.4f}"


def format_change(base: float | None, tuned: float | None, kind: str) -> str:
    """Tuned minus base; percentages as points, perplexity as a ratio (its differences span orders of magnitude)."""
    if base is None or tuned is None:
        return ""
    delta = tuned - base
    if kind == "pct":
        return f"{delta * 100:+.1f} pts"
    if kind == "ppl":
        return f"x{tuned / base:.3g}" if base > 0 else ""
    return f"{delta:+.4f}"


def table_rows(data: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, base, tuned, change) for the metrics that were measured (loss always)."""
    rows = []
    for key, label, kind in ROWS:
        base, tuned = data["base"].get(key), data["tuned"].get(key)
        if base is None and tuned is None and key != "loss":
            continue
        rows.append((label, format_number(base, kind), format_number(tuned, kind), format_change(base, tuned, kind)))
    return rows


def aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as lines: the first column left-aligned, the others right-aligned, two spaces apart."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in rows]


def split_text(data: dict[str, Any]) -> str:
    return "eval split" if data.get("split") == "eval" else "training data (memorization)"


def headline(data: dict[str, Any] | None) -> str:
    """A few characters for a list column: exact match base -> tuned when answers were scored, else the loss."""
    if not data:
        return "-"
    base, tuned = data["base"], data["tuned"]
    if tuned.get("exact_match") is not None and base.get("exact_match") is not None:
        return f"EM {base['exact_match'] * 100:.0f}→{tuned['exact_match'] * 100:.0f}%"
    if tuned.get("loss") is not None and base.get("loss") is not None:
        return f"{base['loss']:.2f}→{tuned['loss']:.2f}"
    return "-"


def summary_line(event: Any) -> str:
    """An ``EvalSummary`` as one log line:
    ``eval at end, base -> tuned (held-out eval split, 12 examples, 340 tokens): loss 3.2101 -> 0.4512, ...``"""
    def pair(base: float | None, tuned: float | None, kind: str) -> str:
        return f"{format_number(base, kind)} -> {format_number(tuned, kind)}"

    what = "held-out eval split" if event.split == "eval" else "training data: memorization"
    return (f"eval at end, base -> tuned ({what}, {event.examples} examples, {event.tokens} tokens): loss "
            f"{pair(event.base_loss, event.tuned_loss, 'loss')}, perplexity "
            f"{pair(event.base_perplexity, event.tuned_perplexity, 'ppl')}")
