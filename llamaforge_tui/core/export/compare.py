"""The KL of each export choice, measured against one reference, for the Export view's comparison table.

For a 4-bit result the choices behave very differently (FORMATS.md §6: adapter on the source 1.4e-4, merged then
requantized to Q4_K_M 0.1), so the user picks with numbers measured on their own run.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llamaforge_tui.core.errors import LlamaForgeError
from llamaforge_tui.core.export.exporter import (
    ExportCancelled,
    ExportOptions,
    ExportProgress,
    export_run,
    load_run,
    verify_adapter,
    verify_merged,
)
from llamaforge_tui.core.export.verify import Verification


def measure_choices(run_dir: Path | str, choices: list[str], settings: Any = None, *,
                    progress: Callable[[ExportProgress], None] | None = None,
                    stop_event: threading.Event | None = None) -> list[Verification]:
    """Export each choice to a scratch folder and verify it against one reference: the KL of each option,
    so the user picks with numbers (4-bit: adapter vs hybrid vs requantized)."""
    from llamaforge_tui.core.export.reference import build_reference

    emit = progress or (lambda p: None)
    run = load_run(run_dir, settings)
    ref = build_reference(run.source, run.config, run.adapter_dir, settings, lambda m: emit(ExportProgress("verify", m)))
    rows: list[Verification] = []
    scratch = Path(tempfile.mkdtemp(prefix=".lf-compare-", dir=run.run_dir))
    try:
        for choice in choices:
            if stop_event is not None and stop_event.is_set():
                raise ExportCancelled("comparison stopped")
            emit(ExportProgress("verify", f"measuring {choice}"))
            opts = ExportOptions(out_type="q8_0" if choice == "adapter" else choice, adapter=choice == "adapter",
                                 out_dir=scratch / choice, name="compare")
            try:
                res = export_run(run.run_dir, opts, settings, stop_event=stop_event)
            except ExportCancelled:
                raise
            except LlamaForgeError as exc:  # e.g. K-quants without llama.cpp, hybrid on an HF source
                nan = float("nan")
                rows.append(Verification(0.0, nan, nan, 0, False, "n/a", [str(exc)], label=f"{choice} (unavailable)"))
                continue
            if choice == "adapter":
                v = verify_adapter(run, ref, res.adapter_path, emit, sample=False)
            else:
                v = verify_merged(run, ref, res.gguf_path, choice, choice, emit, sample=False)
            v.label = f"{choice} ({res.size_bytes / 1e6:.0f} MB)"
            rows.append(v)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows
