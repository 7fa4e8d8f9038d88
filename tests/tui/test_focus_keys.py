"""Esc leaves a text field (so the number keys and pane keys act again), and Tab runs through every field."""

from __future__ import annotations

from textual.widgets import Input, Select, TabbedContent

from llamaforge_tui.core.settings import Settings
from llamaforge_tui.tui.app import Services, make_app
from llamaforge_tui.tui.widgets.run_form import FIELDS


def _app():  # noqa: ANN202
    return make_app(Settings(), Services(extra={"train_run": lambda *a, **k: None}))


async def test_esc_in_the_dataset_path_field_then_4_switches_to_train() -> None:
    app = _app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        await pilot.pause()
        await pilot.press("o")  # the Dataset pane's "open": the path field
        path = app.query_one("#dataset-path", Input)
        assert app.focused is path
        await pilot.press("x", "escape")
        await pilot.pause()
        assert not isinstance(app.focused, Input)
        await pilot.press("4")
        await pilot.pause()
        assert app.query_one("#panes", TabbedContent).active == "train"
        assert path.value == "x"  # the 4 switched panes; it was not typed into the path


async def test_esc_in_any_field_returns_to_its_pane() -> None:
    app = _app()
    async with app.run_test(size=(120, 40)) as pilot:
        for key, field_id, target in (("3", "#dataset-template", "#dataset-records"),
                                      ("2", "#cache-download-input", "#cache-table"),
                                      ("4", "#in-learning_rate", "#train-start")):
            await pilot.press(key)
            await pilot.pause()
            field = app.query_one(field_id)
            field.focus()
            await pilot.pause()
            await pilot.press("escape")
            await pilot.pause()
            assert app.focused is app.query_one(target), (field_id, app.focused)


async def test_tab_runs_through_every_field_of_the_train_form_and_the_dataset_inputs() -> None:
    app = _app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        await pilot.pause()
        app.query_one("#in-model").focus()
        await pilot.pause()
        seen = []
        for _ in range(len(FIELDS) + 2):
            seen.append(app.focused.id)
            await pilot.press("tab")
            await pilot.pause()
        form_fields = [f"in-{name}" for name, _, _ in FIELDS]
        assert seen[:len(form_fields)] == form_fields
        assert all(isinstance(app.query_one(f"#{f}"), (Input, Select)) for f in form_fields)

        await pilot.press("3")
        await pilot.pause()
        app.query_one("#dataset-path").focus()
        await pilot.pause()
        seen = []
        for _ in range(5):
            seen.append(app.focused.id)
            await pilot.press("tab")
            await pilot.pause()
        assert seen == ["dataset-path", "dataset-model", "dataset-format", "dataset-template", "dataset-max-len"]
