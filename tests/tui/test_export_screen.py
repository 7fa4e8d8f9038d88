"""The Export view: options reach the core, progress and verification show, name clashes ask first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Checkbox, DataTable, Select, Static

from tests.tui.train_helpers import wait_for

from llamaforge_tui.core.gguf.file import GgufFile
from llamaforge_tui.core.export.exporter import ExportOptions, ExportProgress, ExportResult
from llamaforge_tui.core.ollama.register import NameClash
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.core.export.verify import Verification, VerificationSample
from llamaforge_tui.tui.app import Services, make_app
from llamaforge_tui.tui.screens.export_screen import ConfirmReplace, ExportScreen
from llamaforge_tui.tui.widgets.train_pane import TrainPane


async def _idle(pilot: Any, app: Any) -> None:
    """Wait for the export workers only (the app's GPU sampler never finishes)."""
    await wait_for(pilot, lambda: not any(w.group == "export" and not w.is_finished for w in app.workers), 30,
                   "the export worker")
    await pilot.pause(0.1)


def _verification(label: str, kl: float) -> Verification:
    return Verification(1.0, kl, kl * 5, 96, True, "float", [], VerificationSample("p [bold]x", "ans [red]", "ans [red]"),
                        label=label)


class FakeExport:
    def __init__(self, clash_first: bool = False) -> None:
        self.calls: list[ExportOptions] = []
        self.clash_first = clash_first

    def __call__(self, run_dir: Path, options: ExportOptions, settings: Any, *, progress: Any, stop_event: Any) -> ExportResult:
        self.calls.append(options)
        progress(ExportProgress("write", "writing blk.0", 50, 100))
        progress(ExportProgress("register", "uploading model.gguf"))
        if self.clash_first and not options.force:
            raise NameClash(options.name or "x")
        return ExportResult(run_dir / "m.gguf", options.out_type, 123, run_dir / "Modelfile",
                            registered_as="tuned:latest" if options.register else None,
                            verification=_verification(options.out_type, 2e-7), name="tuned",
                            create_command="ollama create tuned -f Modelfile")


async def test_export_runs_with_chosen_options_and_shows_results(tmp_path: Path) -> None:
    fake = FakeExport()
    app = make_app(Settings(), Services(extra={"export_run": fake}))
    async with app.run_test(size=(120, 40)) as pilot:
        app.push_screen(ExportScreen(tmp_path))
        await pilot.pause()
        screen = app.screen
        screen.query_one("#export-type", Select).value = "f16"
        screen.query_one("#export-register", Checkbox).value = True
        screen.query_one("#export-verify", Checkbox).value = True
        await pilot.click("#export-start")
        await _idle(pilot, app)
        assert fake.calls[0].out_type == "f16" and fake.calls[0].register and fake.calls[0].verify
        table = screen.query_one("#export-verification", DataTable)
        assert table.row_count == 1 and table.get_row_at(0)[2] == "2.00e-07"
        assert "generated: ans [red]" in str(screen.query_one("#export-sample", Static).render())
        assert "registered as tuned:latest" in str(screen.query_one("#export-registration", Static).render())


async def test_name_clash_asks_then_retries_with_force(tmp_path: Path) -> None:
    fake = FakeExport(clash_first=True)
    app = make_app(Settings(), Services(extra={"export_run": fake}))
    async with app.run_test(size=(120, 40)) as pilot:
        app.push_screen(ExportScreen(tmp_path))
        await pilot.pause()
        await pilot.press("ctrl+e")
        await _idle(pilot, app)
        assert isinstance(app.screen, ConfirmReplace)
        await pilot.press("y")
        await _idle(pilot, app)
        assert [c.force for c in fake.calls] == [False, True]
        assert isinstance(app.screen, ExportScreen)


async def test_compare_fills_the_table_with_each_choice(tmp_path: Path) -> None:
    def measure(run_dir: Path, choices: list[str], settings: Any, *, progress: Any, stop_event: Any) -> list[Verification]:
        return [_verification(c, 1e-4 * (i + 1)) for i, c in enumerate(choices)]

    app = make_app(Settings(), Services(extra={"measure_choices": measure}))
    async with app.run_test(size=(120, 40)) as pilot:
        app.push_screen(ExportScreen(tmp_path))
        await pilot.pause()
        await pilot.press("ctrl+k")
        await _idle(pilot, app)
        table = app.screen.query_one("#export-verification", DataTable)
        labels = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        assert labels == ["f16", "q8_0", "hybrid", "adapter", "q4_k_m"]


async def test_train_pane_export_request_opens_the_screen(tmp_path: Path) -> None:
    app = make_app(Settings())
    async with app.run_test(size=(120, 40)) as pilot:
        app.query_one(TrainPane).post_message(TrainPane.ExportRequested(tmp_path))
        await pilot.pause()
        await pilot.pause()
        assert isinstance(app.screen, ExportScreen) and app.screen.run_dir == tmp_path
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, ExportScreen)


async def test_a_gguf_quantized_run_explains_adapter_versus_merge(tmp_path: Path) -> None:
    import json

    quantized, dequantized = tmp_path / "q", tmp_path / "d"
    for folder, weights in ((quantized, "gguf-quantized"), (dequantized, "gguf")):
        folder.mkdir()
        (folder / "source.json").write_text(json.dumps({"weights": weights}))
    app = make_app(Settings(), Services(extra={"export_run": FakeExport()}))
    async with app.run_test(size=(120, 40)) as pilot:
        app.push_screen(ExportScreen(quantized))
        await pilot.pause()
        note = app.screen.query_one("#export-quantized-note", Static)
        assert note.display and "unchanged Ollama model" in str(note.render())
        assert app.screen.query_one("#export-adapter", Checkbox).value is True
        app.pop_screen()
        app.push_screen(ExportScreen(dequantized))
        await pilot.pause()
        assert not app.screen.query_one("#export-quantized-note", Static).display
        assert app.screen.query_one("#export-adapter", Checkbox).value is False


@pytest.mark.slow
async def test_a_llama_cpp_crash_during_verification_leaves_the_app_and_training_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real export of a tiny run, whose llama.cpp child dies with SIGSEGV: the app stays up, shows the one-line
    message, the export on disk is complete, and a training worker in the app goes on."""
    import threading

    from fixtures.export_runs import make_run, write_chat_jsonl
    from fixtures.tiny_models import session_factory

    from llamaforge_tui.core.export.llama_child import CRASH_ENV

    source = session_factory().get("llama").gguf("F32")
    run_dir = make_run(tmp_path / "run", str(source), weights="gguf", data=write_chat_jsonl(tmp_path / "qa.jsonl"))
    monkeypatch.setenv(CRASH_ENV, "logits")
    app = make_app(Settings())
    release = threading.Event()
    async with app.run_test(size=(120, 40)) as pilot:
        training = app.run_worker(lambda: release.wait(120), thread=True, group="training", name="stand-in run")
        app.push_screen(ExportScreen(run_dir))
        await pilot.pause()
        screen = app.screen
        screen.query_one("#export-type", Select).value = "q8_0"
        screen.query_one("#export-verify", Checkbox).value = True
        await pilot.press("ctrl+e")
        await _idle(pilot, app)
        status = str(screen.query_one("#export-status", Static).render())
        assert "llama.cpp crashed with SIGSEGV during verification" in status
        assert "untouched" in status and "GGML_NATIVE=OFF" in status
        assert app.is_running and app.screen is screen and screen.has_class("-failed")
        assert training.is_running  # the stand-in training run did not notice
        exported = list((run_dir / "export").glob("*-q8_0.gguf"))
        assert len(exported) == 1 and GgufFile(exported[0]).get("general.file_type") == 7
        release.set()


async def test_a_q8_0_verification_shows_its_parts_and_gates(tmp_path: Path) -> None:
    from llamaforge_tui.core.export.verify import Part

    def export(run_dir: Path, options: ExportOptions, settings: Any, *, progress: Any, stop_event: Any) -> ExportResult:
        v = _verification("q8_0", 3.0e-2)
        v.method, v.effect_kl, v.buffer_types = "parts", 7.2, ["CPU_Mapped"]
        v.parts = {"file": Part(0.97, 5.7e-3, 0.9, 0.1, True, "PyTorch on the q8_0 file's own weights"),
                   "reading": Part(1.0, 7.9e-6, 0.99, 1e-4, True, "llama.cpp F16 run of those weights"),
                   "kernel": Part(0.97, 1.0e-2, 0.9, 0.1, True, "llama.cpp q8_0 vs its own F16 run")}
        return ExportResult(run_dir / "m.gguf", "q8_0", 1, run_dir / "Modelfile", verification=v, name="t")

    for size in ((80, 24), (120, 40)):
        app = make_app(Settings(), Services(extra={"export_run": export}))
        async with app.run_test(size=size) as pilot:
            app.push_screen(ExportScreen(tmp_path))
            await pilot.pause()
            await pilot.press("ctrl+e")
            await _idle(pilot, app)
            table = app.screen.query_one("#export-verification", DataTable)
            rows = [table.get_row_at(i) for i in range(table.row_count)]
            assert [str(r[0]).strip() for r in rows] == ["q8_0", "file", "reading", "kernel"]
            assert rows[1][2] == "5.70e-03" and str(rows[3][5]) == "ok"
            parts = str(app.screen.query_one("#export-parts", Static).render())
            assert "gate top-1 >= 90%, mean KL <= 1.0e-01" in parts and "effect on these prompts: mean KL 7.20e+00" in parts
            assert "CPU_Mapped" in parts


async def test_an_adapter_on_a_quantized_source_shows_its_parts(tmp_path: Path) -> None:
    """The figures of ``verify.judge_adapter_parts`` (kernel noise, the adapter's own effect) with their gates."""
    from llamaforge_tui.core.export.verify import Part

    def export(run_dir: Path, options: ExportOptions, settings: Any, *, progress: Any, stop_event: Any) -> ExportResult:
        v = _verification("adapter", 1.9e-4)
        v.method, v.effect_kl, v.gate = "parts", 0.6, "quantized"
        v.parts = {"kernel": Part(0.986, 1.8e-4, 0.9, 0.1, True, "llama.cpp on the q8_0 source alone vs PyTorch"),
                   "adapter": Part(0.973, 3.3e-4, 0.85, 0.05, True, "the adapter's effect as llama.cpp computes it")}
        v.notes = ["adapter on q8_0: llama.cpp's arithmetic alone accounts for 1.78e-04 on the base"]
        return ExportResult(None, "adapter", 1, run_dir / "Modelfile", run_dir / "a.gguf", verification=v, name="t")

    for size in ((80, 24), (120, 40)):
        app = make_app(Settings(), Services(extra={"export_run": export}))
        async with app.run_test(size=size) as pilot:
            app.push_screen(ExportScreen(tmp_path))
            await pilot.pause()
            await pilot.press("ctrl+e")
            await _idle(pilot, app)
            table = app.screen.query_one("#export-verification", DataTable)
            rows = [table.get_row_at(i) for i in range(table.row_count)]
            assert [str(r[0]).strip() for r in rows] == ["adapter", "kernel", "adapter"]
            assert rows[2][2] == "3.30e-04" and str(rows[2][5]) == "ok"
            parts = str(app.screen.query_one("#export-parts", Static).render())
            assert "gate top-1 >= 85%, mean KL <= 5.0e-02" in parts and "mean KL 6.00e-01" in parts
            assert "adapter on q8_0" in parts
