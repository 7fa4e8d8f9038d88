"""The training loop: ``run(config, emit, stop_event) -> RunResult``, a plain PyTorch loop over a peft model.

The recipe follows torchtune's shape: ``setup`` (train_setup.py does the heavy lifting), ``train``,
``save_checkpoint``, ``cleanup``. The TUI worker, the CLI and the tests all call :func:`run` the same way;
every figure they show comes from the events it emits (and appends to ``<run>/events.jsonl``).

A step takes the next ``grad_accum x world_size`` micro-batches of the deterministic batch stream; rank r
takes every world_size-th of them. The loss is summed over tokens and divided by the step's total label
count (known on every rank without communication), so a DDP run matches a single process with the same
global batch, and micro-batches of different sizes weigh by their tokens, not equally.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamaforge_tui.core.train import attention as attention_mod
from llamaforge_tui.core.train import checkpoint as ckpt
from llamaforge_tui.core.train import compile as compile_mod
from llamaforge_tui.core.train import device as device_mod
from llamaforge_tui.core.train import distributed as dist
from llamaforge_tui.core.train import failures, runs
from llamaforge_tui.core.train import fused as fused_mod
from llamaforge_tui.core.train import lora_fused
from llamaforge_tui.core.train import setup as setup_mod
from llamaforge_tui.core.train.batching import BatchStream, plan_epoch, to_segments
from llamaforge_tui.core.errors import ConfigError, LlamaForgeError
from llamaforge_tui.core.train.events import (CheckpointSaved, Event, EventLog, LogLine,
                                        RunFailed, RunFinished, RunStarted, StepLogged)
from llamaforge_tui.core.settings import Settings
from llamaforge_tui.core.train.config import TrainConfig, pass_tokens_for
from llamaforge_tui.core.train.failures import TrainingFailed
from llamaforge_tui.core.train.loss import loss_module
from llamaforge_tui.core.train.recipe_eval import RecipeEvaluation
from llamaforge_tui.core.train.runtime import RunResult, long_lived_heap, peak_memory_bytes, seed_for

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)


class TrainingRecipe(RecipeEvaluation):
    """One run: built by :meth:`setup`, driven by :meth:`train`, torn down by :meth:`cleanup`."""

    def __init__(self, config: TrainConfig, emit: Callable[[Event], None], stop_event: threading.Event, *,
                 settings: Settings | None = None, resume_from: Path | None = None) -> None:
        self.config = config
        self._emit_cb = emit
        self.stop_event = stop_event
        self.settings = settings or Settings.load()
        self.resume_from = resume_from
        self.dist = dist.env_dist_info()
        self.events: EventLog | None = None
        self.lock: runs.RunLock | None = None
        self.run_dir: Path | None = None
        self.step = 0
        self.total_steps = 0
        self.last_loss: float | None = None
        self.last_saved_step = -1
        self.last_eval_step = -1
        self.last_eval_totals: tuple[float, int] = (0.0, 0)
        self.started = time.time()
        self.attention_changed: list = []  # model configs switched to the matmul attention, restored at cleanup

    # -- events ---------------------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        """Rank 0 records the event in events.jsonl, then hands it to the caller."""
        if not self.dist.is_main:
            return
        if self.events is not None:
            self.events.append(event)
        self._emit_cb(event)

    def say(self, message: str, level: str = "info") -> None:
        self.emit(LogLine(level=level, message=message))

    # -- setup ----------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.config
        cfg.require_inputs()
        self.device, self.device_reason = device_mod.choose_device(cfg.device, self.dist.local_rank,
                                                                   world_size=self.dist.world_size)
        dist.init_process_group(self.dist, self.device.type)
        self._open_run_dir()
        self.precision, self.precision_reason = device_mod.choose_precision(cfg.dtype, self.device)
        self.say(f"device {self.device} ({self.device_reason}); {self.precision.describe()} ({self.precision_reason})")
        if self.device.type == "mps":
            self.say(device_mod.mps_fallback_state())
        self.say(f"loading {cfg.model} ({self.precision.param_dtype} on {self.device})")
        bundle = setup_mod.load_model(cfg, self.settings, self.precision, self.device)
        self.source = bundle.description
        if self.dist.is_main:
            runs.write_source(self.run_dir, self.source)
        self.say(f"preparing {cfg.data}")
        data = setup_mod.prepare_data(cfg, bundle)
        self.data_stats = data.stats
        for warning in data.stats.get("warnings", []):
            self.say(str(warning), "warning")
        if data.stats.get("invalid_records"):
            self.say(f"skipped {data.stats['invalid_records']} invalid record(s); 'llamaforge data {cfg.data}' "
                     "lists them", "warning")
        self.pad_id = bundle.tokenizer.pad_token_id or 0
        segments = to_segments(data.train, cfg.max_seq_len)
        if not segments:
            raise ConfigError(f"{cfg.data}: no example has tokens to train on after truncation to {cfg.max_seq_len}")
        self.stream = BatchStream(segments, batch_size=cfg.batch_size, max_seq_len=cfg.max_seq_len,
                                  packing=cfg.packing, seed=cfg.seed)
        self.eval_batches = plan_epoch(to_segments(data.eval, cfg.max_seq_len), batch_size=cfg.batch_size,
                                       max_seq_len=cfg.max_seq_len, packing=cfg.packing, seed=cfg.seed, epoch=0)
        self.micro_per_step = cfg.grad_accum * self.dist.world_size
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.stream.batches_per_epoch
                                                             / self.micro_per_step))
        self._build_model(bundle.model)
        if self.resume_from is not None:
            self._resume()

    def _open_run_dir(self) -> None:
        cfg = self.config
        if self.resume_from is not None:
            run_dir = Path(self.resume_from).resolve()
            if run_dir.parent.name == ckpt.checkpoints_dir(Path("x")).name:  # given a checkpoint folder
                run_dir = run_dir.parent.parent
        else:
            if self.dist.enabled and not cfg.output_dir:
                raise ConfigError("distributed runs need an explicit output_dir (the CLI sets it)")
            run_dir = runs.resolve_run_dir(self.settings, cfg.output_dir, cfg.model)
            if self.dist.is_main and (run_dir / runs.EVENTS_FILE).exists():
                raise ConfigError(f"{run_dir} already holds a run; resume it with --resume, or pick another --out")
        self.run_dir = run_dir
        self.config = cfg = cfg.replace(output_dir=str(run_dir))
        if self.dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.lock = runs.RunLock(run_dir)
            self.lock.acquire()
            ckpt.sweep_partial(run_dir)
            runs.clear_stop(run_dir)
            cfg.to_file(run_dir / runs.CONFIG_FILE)
            self.events = EventLog(run_dir)
        dist.barrier(self.dist)

    def _build_model(self, base_model: Any) -> None:
        import torch

        cfg = self.config
        base_model.config.use_cache = False
        norms, mlps, note = fused_mod.fuse_modules(base_model, cfg.fused, self.device.type)  # before LoRA wraps
        self.fused_forms = norms + mlps
        self.say(note)
        torch.manual_seed(cfg.seed)  # LoRA's A matrices are random: same seed, same start, on every rank
        self.model = setup_mod.apply_lora(base_model, cfg)
        self.model.train()
        self.trainable_params, self.total_params = setup_mod.count_parameters(self.model)
        if self.precision.autocast is not None:
            setup_mod.keep_lora_inputs_narrow(self.model)
        # Only when asked (--fused on): under bf16 its rounding, no worse than peft's, still moved a trained Gemma
        # adapter enough that its F16 export missed the 99% top-1 verification gate (98.5%); not a default until
        # that is understood.
        lora_mlps = lora_fused.fuse_lora_mlps(self.model) if cfg.fused == "on" else 0
        if lora_mlps:
            self.say(f"fused LoRA MLPs: {lora_mlps} (gate and up as one matmul, act(gate) * up recomputed)")
        self.loss_fn = loss_module(self.model.get_base_model(), head_kernel=cfg.head_kernel)
        self.recompute = fused_mod.recompute_enabled(cfg.recompute, self.device.type, cfg.gradient_checkpointing)
        self.compiled_layers, note = compile_mod.compile_layers(self.model, cfg.compile, self.device.type,
                                                                recompute=self.recompute)
        self.pad_multiple = compile_mod.BUCKET if self.compiled_layers else 0
        self.say(note)
        self.say(self._choose_attention())
        self.pass_tokens = pass_tokens_for(cfg.pass_tokens, self.device.type)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.loss_fn = DistributedDataParallel(self.loss_fn, device_ids=ids)
        self.optimizer = setup_mod.make_optimizer(self.model, cfg)
        self.scheduler = setup_mod.make_scheduler(self.optimizer, cfg, self.total_steps)
        self.scaler = (torch.amp.GradScaler(self.device.type) if self.precision.autocast == "float16" else None)

    def _resume(self) -> None:
        assert self.run_dir is not None
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:
            self.say("no checkpoint found: starting from step 0", "warning")
            return
        state = ckpt.load_checkpoint(path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                     device=self.device)
        if int(state.get("world_size", 1)) * int(state.get("grad_accum", 1)) != self.micro_per_step:
            raise ConfigError(f"checkpoint {path.name} was made with {state.get('world_size')} process(es) x "
                              f"grad_accum {state.get('grad_accum')}; resume with the same global batch")
        self.step = self.last_saved_step = int(state["step"])
        if self.step >= self.total_steps:
            self.say(f"{path.name} is already at step {self.step} of {self.total_steps}: nothing left to train; "
                     "raise the steps (--steps N) to continue", "warning")
        self.last_loss = state.get("loss")
        self.say(f"resumed from {path.name}")

    # -- training -------------------------------------------------------------------------------------
    def _autocast(self) -> Any:
        import torch

        if self.precision.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, self.precision.autocast))

    def _stop_wanted(self) -> bool:
        local = self.stop_event.is_set() or (self.dist.is_main and runs.stop_requested(self.run_dir))
        return dist.broadcast_flag(local, self.device, self.dist)

    def _train_step(self) -> tuple[float, float, int, float]:
        """One optimizer step. Returns (loss, grad norm, non-padding tokens of the step on all ranks, lr used)."""
        import torch

        cfg = self.config
        start = self.step * self.micro_per_step
        positions = list(range(start, start + self.micro_per_step))
        batches = [self.stream[p] for p in positions]
        step_targets = sum(b.n_targets for b in batches)
        step_tokens = sum(b.n_tokens for b in batches)
        mine = [(p, b) for j, (p, b) in enumerate(zip(positions, batches)) if j % self.dist.world_size == self.dist.rank]
        scale = self.dist.world_size / step_targets
        local_sum = 0.0
        passes = [(position, part) for position, batch in mine for part in batch.split(self.pass_tokens)]
        for i, (position, part) in enumerate(passes):
            if i == 0 or passes[i - 1][0] != position:
                torch.manual_seed(seed_for(cfg.seed, position))
            tensors = part.tensors(self.device, self.pad_id, self.pad_multiple)
            sync = contextlib.nullcontext()
            # eager layers only (compiled ones got recompute regions when they were compiled)
            recompute = fused_mod.recompute_kept_outputs(
                self.recompute and self.fused_forms > 0 and not self.compiled_layers)
            if self.dist.enabled and i < len(passes) - 1:
                sync = self.loss_fn.no_sync()
            with sync:
                with self._autocast(), recompute:
                    loss_sum = self.loss_fn(**tensors)
                scaled = loss_sum * scale
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            local_sum += float(loss_sum.detach())
        loss = dist.all_reduce_sum([local_sum], self.device, self.dist)[0] / step_targets
        if not math.isfinite(loss):
            raise TrainingFailed("nan", failures.nan_reason(loss, "loss", self.step + 1, cfg, self.precision.param_dtype,
                                                            self.run_dir))
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(grad_norm) and self.scaler is None:
            raise TrainingFailed("nan", failures.nan_reason(grad_norm, "gradient norm", self.step + 1, cfg,
                                                            self.precision.param_dtype, self.run_dir))
        lr = float(self.optimizer.param_groups[0]["lr"])
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, step_tokens, lr

    def _choose_attention(self) -> str:
        """(Re)pick the attention path for the layers as they are now (``auto`` asks whether they are compiled);
        returns the note for the log."""
        attention_mod.restore_attention(self.attention_changed)
        self.attention_changed, note = attention_mod.use_matmul_attention(
            self.model, self.config.attention, self.device.type, compiled=bool(self.compiled_layers))
        return note

    def _maybe_compile_late(self, steps_done: int, seconds: float) -> None:
        note = compile_mod.late_compile_note(self.config.compile, self.device.type, steps_done, seconds,
                                             self.total_steps - self.step)
        if note and not self.compiled_layers:
            self.compiled_layers, result = compile_mod.compile_layers(self.model, "on", self.device.type,
                                                                      recompute=self.recompute)
            self.pad_multiple = compile_mod.BUCKET if self.compiled_layers else 0
            self.say(f"{note}; {result}; {self._choose_attention()}")

    def _train_step_guarded(self) -> tuple[float, float, int, float]:
        """The first step of compiled layers compiles them: if that fails, go back to eager and say so."""
        if not self.compiled_layers:
            return self._train_step()
        try:
            return self._train_step()
        except Exception as exc:
            if failures.is_oom(exc) or not compile_mod.is_compile_error(exc):
                raise
            compile_mod.uncompile_layers(self.model)
            self.compiled_layers, self.pad_multiple = 0, 0
            attention_note = self._choose_attention()
            self.optimizer.zero_grad(set_to_none=True)
            self.say(f"compile failed ({type(exc).__name__}); continuing with eager layers; {attention_note}",
                     "warning")
            return self._train_step()

    def train(self) -> RunResult:
        cfg = self.config
        self.emit(RunStarted(run_id=self.run_dir.name, run_dir=str(self.run_dir), config=cfg.to_dict(),
                             source=self.source, total_steps=self.total_steps,
                             trainable_params=self.trainable_params, total_params=self.total_params,
                             dataset=self.data_stats, resumed_from_step=self.step, world_size=self.dist.world_size,
                             device=str(self.device), backend=device_mod.backend_of(self.device),
                             device_reason=self.device_reason, precision=self.precision.describe(),
                             precision_reason=self.precision_reason))
        session_start, session_steps = time.perf_counter(), 0
        window_start, window_tokens = time.perf_counter(), 0
        stopped = False
        while self.step < self.total_steps:
            if self._stop_wanted():
                stopped = True
                break
            try:
                with device_mod.watch_mps_fallback(self.device if session_steps == 0 else "cpu", self.say):
                    loss, grad_norm, tokens, lr = self._train_step_guarded()
            except Exception as exc:
                if (missing := device_mod.mps_missing_op(exc)) is not None:
                    raise TrainingFailed("error", f"{missing}; {failures.checkpoint_hint(self.run_dir)}") from exc
                if failures.is_oom(exc):
                    self.optimizer.zero_grad(set_to_none=True)
                    raise TrainingFailed("oom", failures.oom_reason(exc, self.step + 1, self.config, self.device.type,
                                                                    self.run_dir)) from exc
                raise
            self.step += 1
            session_steps += 1
            self._maybe_compile_late(session_steps, time.perf_counter() - session_start)
            self.last_loss = loss
            window_tokens += tokens
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                now = time.perf_counter()
                per_step = (now - session_start) / session_steps
                self.emit(StepLogged(step=self.step, total_steps=self.total_steps,
                                     epoch=self.stream.epoch_of(self.step * self.micro_per_step), loss=loss,
                                     lr=lr, grad_norm=grad_norm,
                                     tokens_per_second=window_tokens / max(now - window_start, 1e-9),
                                     elapsed_seconds=now - session_start,
                                     eta_seconds=per_step * (self.total_steps - self.step),
                                     memory_bytes=peak_memory_bytes(self.device), tokens=window_tokens))
                window_start, window_tokens = time.perf_counter(), 0
            if self.eval_batches and cfg.eval_every and self.step % cfg.eval_every == 0:
                self.evaluate()
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < self.total_steps:
                self.save_checkpoint()
        return self._finish(stopped, time.perf_counter() - session_start)

    def _finish(self, stopped: bool, elapsed: float) -> RunResult:
        if self.eval_batches and not stopped and self.last_eval_step != self.step:
            self.evaluate()
        wanted = self.config.eval_at_end
        if not stopped and self.step > 0 and (bool(self.eval_batches) if wanted is None else wanted):
            self.eval_summary()
        if self.step > 0 and self.last_saved_step != self.step:
            self.save_checkpoint()
        adapter = None
        if self.dist.is_main and self.step > 0:
            adapter = ckpt.write_final_adapter(self.run_dir, self.model)
        dist.barrier(self.dist)
        if stopped:
            if self.dist.is_main:
                runs.clear_stop(self.run_dir)
            self.say(f"stopped at step {self.step}/{self.total_steps}")
        self.emit(RunFinished(step=self.step, total_steps=self.total_steps, stopped=stopped,
                              final_loss=self.last_loss, adapter_path=str(adapter) if adapter else None,
                              elapsed_seconds=elapsed))
        return RunResult(self.run_dir, "stopped" if stopped else "finished", self.step, self.total_steps,
                         self.last_loss, adapter)

    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes ``checkpoints/step-N`` (temp folder + rename); everyone waits for it."""
        path = None
        if self.dist.is_main:
            cfg = self.config
            state = {"step": self.step, "data_position": self.step * self.micro_per_step,
                     "total_steps": self.total_steps, "world_size": self.dist.world_size,
                     "grad_accum": cfg.grad_accum, "loss": self.last_loss, "seed": cfg.seed, "time": time.time()}
            path = ckpt.save_checkpoint(self.run_dir, self.step, model=self.model, optimizer=self.optimizer,
                                        scheduler=self.scheduler, state=state, keep=cfg.keep_checkpoints)
            self.emit(CheckpointSaved(step=self.step, path=str(path)))
        self.last_saved_step = self.step
        dist.barrier(self.dist)
        return path

    def cleanup(self) -> None:
        attention_mod.restore_attention(self.attention_changed)
        self.attention_changed = []
        if self.events is not None:
            self.events.close()
            self.events = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        dist.destroy_process_group()


def run(config: TrainConfig, emit: Callable[[Event], None], stop_event: threading.Event, *,
        resume_from: Path | None = None, settings: Settings | None = None) -> RunResult:
    """Train ``config`` to the end, to a stop request, or to a failure; never raises for OOM/NaN.

    Problems the user can act on (bad source, bad data, OOM, NaN) end in a ``RunFailed`` event and a
    failed :class:`RunResult`. Bugs keep their traceback (after a ``RunFailed`` is recorded). A
    ``KeyboardInterrupt`` (the CLI's second Ctrl-C) is recorded as an abort and re-raised.
    """
    recipe = TrainingRecipe(config, emit, stop_event, settings=settings, resume_from=resume_from)
    try:
        recipe.setup()
        with long_lived_heap():
            return recipe.train()
    except (TrainingFailed, LlamaForgeError) as exc:
        kind = exc.kind if isinstance(exc, TrainingFailed) else "error"
        if recipe.run_dir is None:
            raise
        _record_failure(recipe, kind, str(exc))
        return RunResult(recipe.run_dir, "failed", recipe.step, recipe.total_steps, recipe.last_loss,
                         reason=str(exc), kind=kind)
    except KeyboardInterrupt:
        _record_failure(recipe, "aborted", f"aborted at step {recipe.step}; {failures.checkpoint_hint(recipe.run_dir)}")
        raise
    except Exception as exc:
        _record_failure(recipe, "error", f"internal error: {type(exc).__name__}: {exc}")
        raise
    finally:
        recipe.cleanup()


def _record_failure(recipe: TrainingRecipe, kind: str, reason: str) -> None:
    latest = ckpt.latest_checkpoint(recipe.run_dir) if recipe.run_dir else None
    with contextlib.suppress(OSError, ValueError):
        recipe.emit(RunFailed(step=recipe.step, reason=reason, kind=kind,
                              last_checkpoint=str(latest) if latest else None))
