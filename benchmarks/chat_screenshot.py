"""Screenshot of the Chat pane comparing base and fine-tuned, from a real tiny-model run (for the README).

Trains the tiny Llama of the test fixtures on a few made-up facts (seconds on a CPU), opens the app headless, picks
the run, turns compare on, fills the prompt from the run's examples (ctrl+n) and sends it. Writes
``assets/chat-compare.svg`` (Textual's ``save_screenshot``) and ``assets/chat-compare.txt`` (the same screen as
text). Run from the repository root: ``python benchmarks/chat_screenshot.py``.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def screen_text(app: object) -> str:
    from rich.console import Console

    width, height = app.size  # type: ignore[attr-defined]
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True,
                      color_system="truecolor", legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))  # type: ignore[attr-defined]
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


async def main(out_dir: Path) -> None:
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="lf-chat-shot-"))
    os.environ["LLAMAFORGE_DATA_DIR"] = str(work / "data")
    from llamaforge_tui.core.settings import Settings
    from llamaforge_tui.tui.app import make_app
    from llamaforge_tui.tui.widgets.chat_column import ChatColumn
    from llamaforge_tui.tui.widgets.chat_pane import ChatPane
    from tests.fixtures.chat_runs import train_fact_run

    run = train_fact_run(work, run_id="facts-demo")
    app = make_app(Settings(runs_dir=str(run.parent), models_dirs=[str(work / "no-ollama")]))
    async with app.run_test(size=(120, 30)) as pilot:

        async def until(check: object, timeout: float = 120) -> None:
            end = time.monotonic() + timeout
            while not check():  # type: ignore[operator]
                if time.monotonic() > end:
                    raise SystemExit("timed out")
                await pilot.pause(0.05)

        await pilot.press("5")
        pane = app.query_one(ChatPane)
        await until(lambda: bool(pane.targets))
        pane.choose(pane.targets[0])
        await until(lambda: pane.backend is not None)
        app.query_one("#chat-max-tokens").value = "48"
        await pilot.press("ctrl+b", "ctrl+n")
        await until(lambda: bool(app.query_one("#chat-prompt").value))
        await pilot.press("enter")
        base = app.query_one("#chat-base", ChatColumn)
        await until(lambda: not pane.generating and "tokens/s" in base.stats_text)
        await pilot.pause(0.3)
        app.save_screenshot("chat-compare.svg", str(out_dir))
        (out_dir / "chat-compare.txt").write_text(screen_text(app), encoding="utf-8")
    print(f"wrote {out_dir / 'chat-compare.svg'} and {out_dir / 'chat-compare.txt'}")


if __name__ == "__main__":
    asyncio.run(main(ROOT / "assets"))
