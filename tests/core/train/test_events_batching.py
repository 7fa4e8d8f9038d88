"""BatchingEmit: a fast run's steps reach a consumer in batches; nothing is dropped or reordered, and
lifecycle events go at once."""

from __future__ import annotations

import threading

from llamaforge_tui.core.train.events import (
    BatchingEmit,
    CheckpointSaved,
    LogLine,
    RunFinished,
    RunStarted,
    StepLogged,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def step(n: int) -> StepLogged:
    return StepLogged(step=n, total_steps=100, epoch=0.0, loss=1.0, lr=1e-4, grad_norm=1.0, tokens=10,
                      tokens_per_second=100.0, elapsed_seconds=float(n), eta_seconds=1.0)


def test_fast_steps_are_batched_and_lifecycle_events_flush_at_once() -> None:
    clock, batches = Clock(), []
    emit = BatchingEmit(batches.append, interval=0.5, clock=clock, timer=False)
    started = RunStarted(run_id="r", run_dir="/tmp/r", config={}, source={}, total_steps=100, trainable_params=1,
                         total_params=2)
    emit(started)
    assert batches == [[started]]  # at once
    for n in range(1, 11):  # ten steps in 0.45 s: none sent yet, all buffered
        clock.now += 0.045
        emit(step(n))
    assert len(batches) == 1
    clock.now += 0.1  # 0.55 s since the last batch
    emit(step(11))
    assert [e.step for e in batches[-1]] == list(range(1, 12))
    emit(LogLine(level="info", message="saving"))
    saved = CheckpointSaved(step=11, path="/tmp/r/ckpt")
    emit(saved)  # a checkpoint flushes the buffered log line with it, in order
    assert batches[-1][-1] is saved and isinstance(batches[-1][0], LogLine)
    emit(step(12))
    finished = RunFinished(step=12, total_steps=100, stopped=False, final_loss=1.0, adapter_path="/tmp/r/adapter",
                           elapsed_seconds=1.0)
    emit(finished)
    flat = [e for b in batches for e in b]
    assert [e.step for e in flat if isinstance(e, StepLogged)] == list(range(1, 13))
    assert flat[0] is started and flat[-1] is finished


def test_slow_steps_are_sent_one_by_one() -> None:
    clock, batches = Clock(), []
    emit = BatchingEmit(batches.append, interval=0.5, clock=clock, timer=False)
    for n in range(1, 4):
        clock.now += 2.0
        emit(step(n))
    assert [[e.step for e in b] for b in batches] == [[1], [2], [3]]


def test_flush_sends_what_is_left_once() -> None:
    batches: list = []
    emit = BatchingEmit(batches.append, interval=10.0, clock=Clock(), timer=False)
    emit(step(1))  # the first event always goes (no batch yet)
    emit(step(2))
    emit(step(3))
    emit.flush()
    emit.flush()
    assert [[e.step for e in b] for b in batches] == [[1], [2, 3]]


def test_emits_from_two_threads_lose_nothing() -> None:
    batches: list = []
    emit = BatchingEmit(batches.append, interval=0.001)
    threads = [threading.Thread(target=lambda base=base: [emit(step(base + i)) for i in range(500)])
               for base in (0, 1000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    emit.flush()
    steps = [e.step for b in batches for e in b]
    assert sorted(steps) == list(range(500)) + list(range(1000, 1500))
    assert [s for s in steps if s < 1000] == list(range(500))  # each thread's own order kept


def test_a_buffered_step_is_sent_by_the_timer_when_no_event_follows() -> None:
    sent = threading.Event()
    batches: list = []

    def send(batch: list) -> None:
        batches.append(batch)
        if any(getattr(e, "step", 0) == 2 for e in batch):
            sent.set()

    emit = BatchingEmit(send, interval=0.2)
    emit(step(1))  # sent at once (the first)
    emit(step(2))  # buffered; then the run goes quiet (a long eval, say)
    assert [[e.step for e in b] for b in batches] == [[1]]
    assert sent.wait(5.0), "the timer never sent the buffered step"
    assert [[e.step for e in b] for b in batches] == [[1], [2]]
    emit.flush()
    assert len(batches) == 2  # nothing left to send
