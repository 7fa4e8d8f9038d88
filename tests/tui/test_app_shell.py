from llamaforge_tui.core.settings import Settings
from llamaforge_tui.tui.app import make_app
from textual.widgets import TabbedContent


async def test_single_keys_switch_panes() -> None:
    app = make_app(Settings())
    async with app.run_test(size=(80, 24)) as pilot:
        tabs = app.query_one("#panes", TabbedContent)
        assert tabs.active == "models"
        for key, pane in (("2", "cache"), ("3", "dataset"), ("4", "train"), ("1", "models")):
            await pilot.press(key)
            assert tabs.active == pane
