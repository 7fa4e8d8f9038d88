"""`llamaforge runs [--json]` and `runs show|delete|prune|compare`: the Runs tab's actions, headless.

RUN is a run folder or a run id under the runs dir. Deleting and pruning are refused while the run trains
(its lock is held), state what they free, and ask first unless ``--yes``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from llamaforge_tui.commands.common import add_json_flag, print_json, settings_from_args
from llamaforge_tui.core.errors import ConfigError, LlamaForgeError
from llamaforge_tui.core.fsutil import human_bytes
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.core.train import runs
from llamaforge_tui.core.train.run_cleanup import delete_run, plan_prune, plan_run_delete, prune_checkpoints
from llamaforge_tui.core.train.run_details import compare_runs, detail_lines, run_details


def register(subparsers: argparse._SubParsersAction) -> None:
    from llamaforge_tui.commands.train import run_runs

    parser = subparsers.add_parser("runs", help="list training runs; show, delete, prune or compare them",
                                   description="List training runs and their status. RUN is a run folder or a "
                                               "run id under the runs dir.")
    add_json_flag(parser)
    parser.set_defaults(func=run_runs)
    actions = parser.add_subparsers(dest="runs_action", metavar="ACTION")

    def sub(name: str, text: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return p

    p = sub("show", "a run's config, source, progress, losses, speed, checkpoints, exports, eval and size")
    p.add_argument("run", metavar="RUN")
    add_json_flag(p)
    p.set_defaults(func=run_show)
    p = sub("delete", "delete a run folder with its checkpoints and exports (asks first)")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--yes", action="store_true", help="do not ask")
    add_json_flag(p)
    p.set_defaults(func=run_delete)
    p = sub("prune", "delete old checkpoints: keep the last N, or only the final adapter")
    p.add_argument("run", metavar="RUN")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--keep", type=int, metavar="N", help="keep the newest N checkpoints")
    which.add_argument("--adapter-only", action="store_true", help="keep only the final adapter")
    p.add_argument("--yes", action="store_true", help="do not ask")
    add_json_flag(p)
    p.set_defaults(func=run_prune)
    p = sub("compare", "loss curves and configs of two or more runs side by side")
    p.add_argument("runs", metavar="RUN", nargs="+")
    add_json_flag(p)
    p.set_defaults(func=run_compare)


def resolve(settings: Settings, text: str) -> Path:
    return runs.find_run(settings, text)


def _ask(question: str) -> bool:
    if not sys.stdin.isatty():
        raise LlamaForgeError("not asking without a terminal: pass --yes to go ahead")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def run_show(args: argparse.Namespace) -> int:
    details = run_details(resolve(settings_from_args(args), args.run))
    if args.json:
        print_json(details.to_dict())
        return 0
    rows = detail_lines(details)
    width = max(len(label) for label, _ in rows)
    for label, text in rows:
        print(f"{label:<{width}}  {text}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    run_dir = resolve(settings_from_args(args), args.run)
    plan = plan_run_delete(run_dir)
    if not args.json:
        print(f"{run_dir}: {human_bytes(plan.size_bytes)}, {plan.checkpoints} checkpoint(s), "
              f"{len(plan.exports)} export file(s)")
        for name in plan.registered:
            print(f"registered in Ollama as {name} (that model stays)")
    if not args.yes and not _ask(f"Delete {run_dir.name} and free {human_bytes(plan.size_bytes)}?"):
        print("kept")
        return 1
    freed = delete_run(run_dir)
    if args.json:
        print_json({"deleted": str(run_dir), "freed_bytes": freed})
    else:
        print(f"deleted {run_dir}: freed {human_bytes(freed)}")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    run_dir = resolve(settings_from_args(args), args.run)
    plan = plan_prune(run_dir, None if args.adapter_only else args.keep)
    if not plan.remove:
        if args.json:
            print_json({**plan.to_dict(), "freed_bytes": 0})
        else:
            print("nothing to prune")
        return 0
    if not args.json:
        steps = ", ".join(str(s) for s, _, _ in plan.remove)
        print(f"removes checkpoint(s) at step {steps}: {human_bytes(plan.freed_bytes)}; keeps "
              + (", ".join(f"step {s}" for s in plan.keep) or "only the final adapter"))
    if not args.yes and not _ask(f"Prune {run_dir.name}?"):
        print("kept")
        return 1
    freed = prune_checkpoints(plan)
    if args.json:
        print_json({**plan.to_dict(), "freed_bytes": freed})
    else:
        print(f"pruned {run_dir.name}: freed {human_bytes(freed)}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if len(args.runs) < 2:
        raise ConfigError("runs compare needs two runs or more")
    comparison = compare_runs([resolve(settings, r) for r in args.runs])
    if args.json:
        print_json(comparison.to_dict())
        return 0
    names = [r.run_id for r in comparison.runs]
    rows: list[list[Any]] = [["", *names]]
    rows.append(["status", *(r.summary.status for r in comparison.runs)])
    rows.append(["step", *(f"{r.summary.step}/{r.summary.total_steps}" for r in comparison.runs)])
    rows.append(["final loss", *(_loss(r.summary.final_loss) for r in comparison.runs)])
    rows.append(["eval loss", *(_loss(r.eval_loss) for r in comparison.runs)])
    for key in comparison.differing:
        rows.append([f"* {key}", *("-" if v is None else str(v) for v in comparison.values[key])])
    widths = [min(max(len(str(r[i])) for r in rows), 40) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c)[:w].ljust(w) for c, w in zip(r, widths)).rstrip())
    same = len(comparison.keys) - len(comparison.differing)
    print(f"\n* differs; {same} other config value(s) are the same in every run")
    return 0
