"""The timed loops of a cell: a training phase, and inference over a split.

Every step is timed until the backend has synchronised the work behind its
outputs; the first warm-up steps are reported apart, each timed from its own
dispatch. Past the warm-up, a backend that can wait for one step without
waiting for the next (``Backend.waits_per_handle``: JAX, which dispatches
asynchronously) keeps one step in flight, as its experts' loops do: step n+1
is dispatched before the clock waits for step n, and a step's time runs from
the previous step's completion to its own. Waiting after every step would
charge JAX its host-side dispatch on top of the device's work (about 7% of a
5 ms CPU step, measured against the reference loop). The step stays in flight
across an epoch's end unless an evaluation reads the state there, and the
losses are read once the phase is done: draining the pipeline at every
epoch's end left the device idle for a dispatch and a read-back each time
(JAX's ratio to the reference loop on the default spec 0.966 with the
drains, 0.979 without, 192 pairs each). Steps that finish before they
return (PyTorch and TensorFlow on a CPU) are timed one by one.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kdbench.architectures import Architecture
from kdbench.backends.base import Backend
from kdbench.flops import forward_flops, phase_flops_per_step
from kdbench.harness.prepare import PreparedCell
from kdbench.harness.timing import efficiency, host_peak_rss, step_stats
from kdbench.methods import connector_forward_flops, warmup_factor
from kdbench.plan import BatchPlan, learning_rates
from kdbench.records.schema import Phase
from kdbench.spec import NetSpec

Emit = Callable[[dict[str, Any]], None]
EVAL_REPEATS = 10


def no_emit(event: dict[str, Any]) -> None:
    pass


class StepClock:
    """Each step's time, either synced step by step or with steps in flight.

    ``stepped(index, start, wait, sync)`` after dispatching step ``index``
    (dispatched at ``start``): ``wait`` is what shows that step done (its loss),
    ``sync`` everything to wait for when the step is timed alone. ``drain()``
    times the steps still in flight, in order; call it before anything else runs.

    depth: how many steps may be in flight before the oldest is waited for
    (1: training, where each step needs the last one's state anyway; None:
    all of them until drain(), for independent steps such as inference
    batches: the host dispatches them in one burst and then only waits, so
    its dispatch work never interrupts the device's threads between steps).
    """

    def __init__(
        self, backend: Backend, times: np.ndarray, warmup: int, depth: int | None = 1
    ) -> None:
        self.backend, self.times, self.warmup = backend, times, warmup
        self.in_flight = backend.waits_per_handle
        self.depth = depth
        self.pending: deque[tuple[int, Any]] = deque()
        self.mark = 0.0

    @property
    def timing(self) -> str:
        return "in_flight" if self.in_flight else "synced"

    def stepped(self, index: int, start: float, wait: Any, *sync: Any) -> None:
        if not self.in_flight or index < self.warmup:
            self.drain()
            self.backend.sync(*sync)
            self.times[index] = time.perf_counter() - start
            return
        if not self.pending:
            self.mark = start
        self.pending.append((index, wait))
        if self.depth is not None and len(self.pending) > self.depth:
            self._complete(self.pending.popleft())

    def drain(self, *sync: Any) -> None:
        while self.pending:
            pending = self.pending.popleft()
            self._complete(pending, *(sync if not self.pending else ()))

    def _complete(self, pending: tuple[int, Any], *also: Any) -> None:
        index, wait = pending
        self.backend.sync(wait, *also)
        now = time.perf_counter()
        self.times[index] = now - self.mark
        self.mark = now


@dataclass
class Cell:
    """One cell at run time: its prepared inputs and the backend that runs them."""

    prepared: PreparedCell
    backend: Backend
    emit: Emit = no_emit
    peak_flops: float | None = None  # the matrix-multiply probe's rate

    @property
    def warmup(self) -> int:
        return self.prepared.warmup


def train_phase(
    cell: Cell,
    phase: str,
    net: NetSpec,
    state: Any,
    data: Any,
    plan: BatchPlan,
    warmup_epochs: int = 0,
    flops_per_step: int | None = None,
    epoch_end: Callable[[int, Any], None] | None = None,
) -> tuple[Any, Phase]:
    """Train through the whole plan, timing every step from dispatch to sync.

    warmup_epochs ramps the distillation terms' weight up linearly (kdbench.methods);
    flops_per_step replaces the usual count where a method changes what a step runs;
    epoch_end(epoch, state) runs after every epoch (an evaluation), its time
    left out of the phase's wall time and reported apart."""
    backend = cell.backend
    lrs = learning_rates(net, plan)
    times = np.empty(plan.total_steps)
    clock = StepClock(backend, times, cell.warmup)
    handles: list[Any] = []  # every step's loss, read once the phase is done
    backend.reset_peak_memory()
    started = time.perf_counter()
    between = 0.0  # epoch_end's time
    step = 0
    for epoch in range(plan.epochs):
        scale = warmup_factor(epoch, warmup_epochs)
        for batch in range(plan.steps_per_epoch):
            t0 = time.perf_counter()
            crops = plan.step_crops(epoch, batch)
            if crops is None:
                state, loss = backend.train_step(
                    state, data, plan.indices[epoch, batch], lrs[step], scale
                )
            else:
                state, loss = backend.train_step(
                    state, data, plan.indices[epoch, batch], lrs[step], scale, crops
                )
            clock.stepped(step, t0, loss, state, loss)
            handles.append(loss)
            step += 1
        cell.emit({"phase": phase, "epoch": epoch + 1, "epochs": plan.epochs})
        if epoch_end is not None:  # it reads the state: the last step must be done
            clock.drain(state)
            t0 = time.perf_counter()
            epoch_end(epoch, state)
            between += time.perf_counter() - t0
    clock.drain(state)
    losses = backend.to_numpy(handles).astype(np.float64).reshape(plan.epochs, -1)
    loss0 = float(losses[0, 0])
    epoch_losses = [float(v) for v in losses.mean(axis=1)]
    wall = time.perf_counter() - started - between
    if not np.all(np.isfinite(epoch_losses)):
        raise FloatingPointError(f"{phase}: the training loss is not finite: {epoch_losses}")
    timing = step_stats(times, cell.warmup, plan.batch_size)
    if flops_per_step is None:
        loaded = cell.prepared.loaded
        t_arch, s_arch = loaded.teacher_arch, loaded.student_arch
        method = loaded.spec.distill.method
        connectors = connector_forward_flops(method, loaded.pairs, t_arch, s_arch)
        flops_per_step = phase_flops_per_step(phase, t_arch, s_arch, plan.batch_size, connectors)
    stats = Phase(
        steps=plan.total_steps,
        samples=plan.total_steps * plan.batch_size,
        epochs=plan.epochs,
        batch_size=plan.batch_size,
        wall_s=wall,
        loss_step0=loss0,
        loss_epochs=epoch_losses,
        **timing,
        **efficiency(flops_per_step, timing["step_time_median_s"], cell.peak_flops),
        device_peak_bytes=backend.peak_memory(),
        host_peak_rss_bytes=host_peak_rss(),
        step_times_s=[round(float(t), 9) for t in times],
        step_timing=clock.timing,
        epoch_eval_s=between if epoch_end is not None else None,
    )
    return state, stats


def predict_all(
    cell: Cell, model: Any, data: Any, n: int, batch: int
) -> tuple[np.ndarray, list[float]]:
    """Logits for a whole split, batch by batch, and each batch's synced time."""
    backend = cell.backend
    logits, times = [], []
    for start in range(0, n, batch):
        idx = np.arange(start, min(start + batch, n), dtype=np.int32)
        t0 = time.perf_counter()
        out = backend.predict(model, data, idx)
        backend.sync(out)
        times.append(time.perf_counter() - t0)
        logits.append(backend.to_numpy(out))
    return np.concatenate(logits), times


def eval_phase(cell: Cell, model: Any, arch: Architecture, data: Any, batch: int) -> Phase:
    """Inference speed: one warm-up batch, then EVAL_REPEATS timed batches.

    Where a backend keeps steps in flight (JAX), the timed batches are all
    dispatched before the first is waited for, as an expert's evaluation loop
    does (one in flight ran at 0.95 of the reference loop: the host's
    dispatch between batches interrupted XLA's threads); each batch's time
    is the interval between its completion and the one before.
    Accuracy comes from predict_all over the whole split; this times a fixed
    full batch so every framework runs one static shape.
    """
    backend = cell.backend
    idx = np.arange(batch, dtype=np.int32)
    backend.reset_peak_memory()
    times = np.empty(1 + EVAL_REPEATS)
    clock = StepClock(backend, times, 1, depth=None)  # the batches are independent
    for index in range(1 + EVAL_REPEATS):
        t0 = time.perf_counter()
        out = backend.predict(model, data, idx)
        clock.stepped(index, t0, out, out)
    clock.drain()
    timing = step_stats(times, 1, batch)
    return Phase(
        batch_size=batch,
        **timing,
        **efficiency(forward_flops(arch) * batch, timing["step_time_median_s"], cell.peak_flops),
        device_peak_bytes=backend.peak_memory(),
        step_times_s=[round(float(t), 9) for t in times],
        step_timing=clock.timing,
    )
