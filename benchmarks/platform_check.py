"""What LlamaForge picks on this machine, and a short run proving that the chosen device trains and resumes.

    python benchmarks/platform_check.py [--device auto] [--dtype auto] [--steps 6] [--json]

It prints the device and precision it would use with the reasons, the memory pool the estimate checks, what the
gauges sample (NVML, AMD SMI or the Apple GPU), and then trains a tiny random Llama (built offline, no download)
for ``--steps`` steps twice: once straight through, once stopped halfway and resumed from the checkpoint; it
prints both loss curves and whether they match. On a Mac or an AMD GPU this is the check the test suite (which
runs on a CPU-only Linux machine) cannot make. Exit status 0 when the run finished and resumed with the same
losses (to 1e-6 relative, since GPU kernels need not be bit-identical between runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llamaforge_tui.core.gpu_samplers import AutoGpuSampler  # noqa: E402
from llamaforge_tui.core.model.memory import device_memory  # noqa: E402
from llamaforge_tui.core.settings import Settings  # noqa: E402
from llamaforge_tui.core.system import GpuUnavailable  # noqa: E402
from llamaforge_tui.core.train import trainer  # noqa: E402
from llamaforge_tui.core.train.config import TrainConfig  # noqa: E402
from llamaforge_tui.core.train.device import describe_plan, plan_device, probe  # noqa: E402
from llamaforge_tui.core.train.events import Event, LogLine, RunStarted, StepLogged  # noqa: E402


def _train(cfg: TrainConfig, runs: str, stop_at: int | None = None, resume: Path | None = None,
           ) -> tuple[trainer.RunResult, list[Event]]:
    events: list[Event] = []
    stop = threading.Event()

    def emit(event: Event) -> None:
        events.append(event)
        if stop_at is not None and isinstance(event, StepLogged) and event.step == stop_at:
            stop.set()

    return trainer.run(cfg, emit, stop, resume_from=resume, settings=Settings(runs_dir=runs)), events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    report: dict = {"accelerators": probe().__dict__, "plan": plan_device(args.device, args.dtype)}
    if "error" in report["plan"]:
        print(describe_plan(report["plan"]))
        return 1
    free, total, label = device_memory(report["plan"]["device"])
    report["memory_pool"] = {"label": label, "free_bytes": free, "total_bytes": total}
    gpus = AutoGpuSampler()()
    report["gauges"] = ({"unavailable": gpus.reason, "details": gpus.details} if isinstance(gpus, GpuUnavailable)
                        else [g.__dict__ for g in gpus])

    from tests.fixtures.train_models import make_tiny_llama, write_qa_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        model, data = make_tiny_llama(base / "model"), write_qa_jsonl(base / "qa.jsonl", repeat=2)
        common = {"model": str(model), "data": str(data), "max_steps": args.steps, "batch_size": 1, "grad_accum": 2,
                  "lora_dropout": 0.1, "learning_rate": 3e-3, "save_every": 0, "device": args.device,
                  "dtype": args.dtype, "seed": 0}
        start = time.perf_counter()
        full, full_events = _train(TrainConfig(**common, output_dir=str(base / "full")), str(base / "runs"))
        seconds = time.perf_counter() - start
        half = max(1, args.steps // 2)
        part, first = _train(TrainConfig(**common, output_dir=str(base / "part")), str(base / "runs"), stop_at=half)
        resumed, second = _train(TrainConfig(**common, output_dir=str(base / "part")), str(base / "runs"),
                                 resume=base / "part")
    curve = {e.step: e.loss for e in full_events if isinstance(e, StepLogged)}
    joined = {e.step: e.loss for e in first + second if isinstance(e, StepLogged)}
    started = next(e for e in full_events if isinstance(e, RunStarted))
    worst = max((abs(joined[s] - curve[s]) / max(abs(curve[s]), 1e-12) for s in curve if s in joined), default=None)
    report["run"] = {
        "status": [full.status, part.status, resumed.status], "seconds": round(seconds, 2),
        "device": started.device, "backend": started.backend, "device_reason": started.device_reason,
        "precision": started.precision, "precision_reason": started.precision_reason,
        "losses": curve, "resumed_losses": joined, "identical": curve == joined, "worst_relative_difference": worst,
        "log": [e.message for e in full_events if isinstance(e, LogLine)][:4],
        "failure": full.reason or part.reason or resumed.reason,
    }
    ok = (full.status, part.status, resumed.status) == ("finished", "stopped", "finished") and worst is not None \
        and worst <= 1e-6 and set(joined) == set(curve)
    report["ok"] = ok
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(describe_plan(report["plan"]))
        print(f"memory pool: {label}, free {free}, total {total}")
        print(f"gauges: {report['gauges']}")
        run = report["run"]
        print(f"run: {run['status']} in {run['seconds']} s on {run['device']} ({run['backend']}), {run['precision']}")
        for step in sorted(curve):
            print(f"  step {step}: {curve[step]:.6f}  resumed {joined.get(step, float('nan')):.6f}")
        print(f"identical: {run['identical']}; worst relative difference {worst}; ok: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
