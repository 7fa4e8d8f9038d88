"""Text from files with undecodable bytes (a model folder named ``m\\xff``) is shown as plain, escaped text in
the TUI: no crash when the screen is drawn, at either size."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from fixtures.ollama_store import StoreBuilder
from llamaforge_tui.core.settings import Settings
from tests.tui.test_models_pane import make_app, wait_for_scan


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_undecodable_model_names_are_shown_escaped(tmp_path: Path, size: tuple[int, int]) -> None:
    root = tmp_path / "store"
    b = StoreBuilder(root)
    doc = json.dumps(b.manifest([b.text_layer("template", "{{ .Prompt }} [b]x[/b]")])).encode()
    folder = os.path.join(os.fsencode(root), b"manifests", b"registry.ollama.ai", b"library", b"m\xff[bold]")
    os.makedirs(folder)
    with open(os.path.join(folder, b"latest"), "wb") as fh:
        fh.write(doc)
    app = make_app(Settings(models_dirs=[str(root)]))
    async with app.run_test(size=size) as pilot:
        pane = await wait_for_scan(app, pilot)
        table = pane.query_one("#models-table", DataTable)
        assert table.row_count == 1
        assert str(table.get_row_at(0)[0]).startswith("m\\xff[bold]")
        await pilot.press("enter")
        await pilot.pause()
        details = str(app.query_one("#models-details", Static).render())
        assert "m\\xff[bold]:latest" in details
        app.save_screenshot(str(tmp_path / "shot.svg"))  # draws every widget: must not raise
    assert "m\\xff[bold]" in (tmp_path / "shot.svg").read_text(encoding="utf-8").replace("&#160;", " ")
