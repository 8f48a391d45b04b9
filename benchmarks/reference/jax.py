"""The distillation step as a JAX expert writes it, outside kdbench.

The yardstick of ``benchmarks/reference/ratio.py``: kdbench's JAX backend
must run the same step at least as fast (ratio >= 0.97). Nothing here comes
from kdbench's backend; only the shapes and the initial weights come from the
spec, so the two compute the same losses and the ratio tool can check that.

What an expert does, following Flax's NNX guides (NNX is the API Flax 0.12
presents first) and its "Performance considerations" guide:
- native NNX layers (``nnx.Conv``, ``nnx.Linear``, ``nnx.max_pool``,
  ``nnx.relu``) in an ``nnx.Sequential``; NHWC, HWIO and (in, out) are
  Flax's own layouts, so the neutral weights load untransposed and a flatten
  in (H, W, C) order is the neutral order;
- the guide's "functional training loop": ``nnx.split`` of (student,
  optimizer) once, a plain ``jax.jit`` step that ``nnx.merge``s them inside
  the trace and returns their new state, donated to the next step
  (``donate_argnums``), so no NNX graph traversal runs per step (``nnx.jit``
  does one on every call); the state crosses the jit boundary as plain
  nested dicts (``nnx.to_pure_dict``), which JAX flattens in C++, where an
  ``nnx.State`` of ``Variable`` nodes is flattened in Python on every call
  (about 40 us more per step here, measured);
- the split put on the device once, the batch gathered on the device inside
  the step (``x[idx]``), the frozen teacher under ``jax.lax.stop_gradient``;
- the loss from optax and ``jax.nn`` (log-space KL, batchmean, times T^2);
- ``nnx.Optimizer`` over ``optax.adam`` or ``optax.sgd`` wrapped in
  ``optax.inject_hyperparams``, the step's learning rate written into the
  optimizer state inside the step (one executable for the whole schedule);
  weight decay is PyTorch's coupled L2 (``optax.add_decayed_weights`` before
  the optimizer), Adam's eps outside the square root (optax's default).
One jitted call per step, as a user timing each step writes it (a
``jax.lax.scan`` over the epoch would also remove the per-call dispatch,
which the harness cannot). Nothing waits between steps: JAX dispatches
asynchronously and the losses are read at the end, as the PyTorch reference
does; the harness syncs every step to time it, which this loop does not pay
(about 8% of a 5 ms CPU step, measured). Dropout is refused in the
student: its masks come from an RNG stream that kdbench's would not match,
so the losses could not be compared.
"""

from __future__ import annotations

import os

# JAX would otherwise reserve 75% of a GPU.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from functools import partial  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

State = Any  # nnx.to_pure_dict of an nnx.State: nested dicts of arrays


@dataclass
class Reference:
    x: jax.Array  # NHWC float32, on the device
    y: jax.Array  # int32
    teacher: State | None  # frozen params, an argument of every step (never donated)
    state: State  # (student, optimizer), replaced by every step (its buffers are donated)
    step: Callable[..., tuple[State, jax.Array]]


def flatten(x: jax.Array) -> jax.Array:
    """NHWC -> (N, H*W*C): Flax's layout is the neutral one, so nothing is permuted."""
    return x.reshape(x.shape[0], -1)


def network(arch: Any, weights: dict[str, np.ndarray], *, train: bool) -> nnx.Sequential:
    """Native NNX layers for a neutral architecture, holding the neutral weights.

    Strict, like torch's load_state_dict: every weight is used, with its shape.
    """
    rngs = nnx.Rngs(0)  # the random init is overwritten below
    layers: list[Callable[..., Any]] = []
    loaded: set[str] = set()

    def load(module: Any, index: int) -> Any:
        for leaf in ("kernel", "bias"):
            value = np.asarray(weights[f"{index}.{leaf}"], dtype=np.float32)
            param = getattr(module, leaf)
            if param.shape != value.shape:
                raise ValueError(f"{index}.{leaf}: shape {value.shape}, layer wants {param.shape}")
            param[...] = value
            loaded.add(f"{index}.{leaf}")
        return module

    for index, layer, in_shape, _ in arch.walk():
        kind = layer.type
        if kind == "conv2d":
            conv = nnx.Conv(
                in_shape[-1],
                layer.filters,
                (layer.kernel, layer.kernel),
                strides=layer.stride,
                padding=layer.padding.upper(),
                rngs=rngs,
            )
            layers.append(load(conv, index))
        elif kind == "dense":
            layers.append(load(nnx.Linear(in_shape[-1], layer.units, rngs=rngs), index))
        elif kind == "maxpool":
            size = (layer.size, layer.size)
            layers.append(partial(nnx.max_pool, window_shape=size, strides=size))
        elif kind == "flatten":
            layers.append(flatten)
        elif kind == "relu":
            layers.append(nnx.relu)
        elif kind == "dropout":
            if train:
                raise ValueError(
                    f"{arch.name}: dropout in the trained network; its masks would not be "
                    "kdbench's, so the reference could not check its losses"
                )
            continue  # the identity at inference
        else:
            raise TypeError(f"no native layer for {layer!r}")
    if loaded != set(weights):
        raise ValueError(f"weights not used by {arch.name}: {sorted(set(weights) - loaded)}")
    return nnx.Sequential(*layers)


def optimizer_for(config: dict[str, Any]) -> optax.GradientTransformation:
    """The optax chain for the spec's optimizer; learning_rate is injected per step."""
    wd = config["weight_decay"]

    def with_decay(tx: optax.GradientTransformation) -> optax.GradientTransformation:
        return optax.chain(optax.add_decayed_weights(wd), tx) if wd else tx

    if config["name"] == "adam":
        b1, b2, eps = config["beta1"], config["beta2"], config["eps"]
        return optax.inject_hyperparams(
            lambda learning_rate: with_decay(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))
        )(learning_rate=0.0)  # set before every step
    if config["name"] == "sgd":
        momentum, nesterov = config["momentum"] or None, config["nesterov"]
        return optax.inject_hyperparams(
            lambda learning_rate: with_decay(
                optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)
            )
        )(learning_rate=0.0)  # set before every step
    raise ValueError(f"no reference optimizer {config['name']!r}")


def loss_of(
    loss: Any, logits: jax.Array, labels: jax.Array, teacher: jax.Array | None
) -> jax.Array:
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    if loss.method == "none":
        return ce
    if teacher is None:
        raise ValueError(f"method {loss.method!r} needs a teacher")
    if loss.method == "soft":
        t = loss.temperature
        kl = optax.losses.kl_divergence_with_log_targets(
            jax.nn.log_softmax(logits / t), jax.nn.log_softmax(teacher / t)
        ).mean()  # summed over classes, averaged over the batch: batchmean
        return loss.alpha * t * t * kl + (1.0 - loss.alpha) * ce
    if loss.method == "hard":
        pseudo = optax.softmax_cross_entropy_with_integer_labels(logits, teacher.argmax(-1))
        return loss.alpha * pseudo.mean() + (1.0 - loss.alpha) * ce
    raise ValueError(f"no reference loss for method {loss.method!r}")


def setup(
    x: np.ndarray,
    y: np.ndarray,
    teacher_arch: Any,
    teacher_weights: dict[str, np.ndarray] | None,
    student_arch: Any,
    student_weights: dict[str, np.ndarray],
    optimizer: dict[str, Any],
    loss: Any,
    *,
    seed: int = 0,
    precision: str = "float32",
) -> Reference:
    """The split on the device, both networks, the optimizer and the jitted step, made once.

    teacher_arch None: no frozen teacher (the teacher's own training phase,
    labels alone). seed is unused (no dropout runs); it is here so every
    reference takes the same arguments.
    """
    if precision != "float32":
        raise ValueError(f"no {precision} reference loop yet")
    del seed
    teacher_def, teacher_state = None, None
    if teacher_arch is not None:
        teacher_def, params = nnx.split(network(teacher_arch, teacher_weights, train=False))
        teacher_state = nnx.to_pure_dict(params)
    student = network(student_arch, student_weights, train=True)
    opt = nnx.Optimizer(student, optimizer_for(optimizer), wrt=nnx.Param)
    graphdef, nnx_state = nnx.split((student, opt))

    def train_step(
        state: State, teacher_state: State | None, x: jax.Array, y: jax.Array, idx: Any, lr: Any
    ) -> tuple[State, jax.Array]:
        student, opt = nnx.merge(graphdef, state)
        xb, yb = x[idx], y[idx]
        teacher_logits = None
        if teacher_def is not None:
            teacher_logits = jax.lax.stop_gradient(nnx.merge(teacher_def, teacher_state)(xb))

        def objective(model: nnx.Sequential) -> jax.Array:
            return loss_of(loss, model(xb), yb, teacher_logits)

        value, grads = nnx.value_and_grad(objective)(student)
        opt.opt_state.hyperparams["learning_rate"][...] = lr
        opt.update(student, grads)
        return nnx.to_pure_dict(nnx.state((student, opt))), value

    return Reference(
        x=jax.device_put(np.ascontiguousarray(x, dtype=np.float32)),
        y=jax.device_put(np.ascontiguousarray(y, dtype=np.int32)),
        teacher=teacher_state,
        state=nnx.to_pure_dict(nnx_state),
        step=jax.jit(train_step, donate_argnums=0),
    )


def train(ref: Reference, indices: np.ndarray, lrs: np.ndarray) -> np.ndarray:
    """One step per index row with its learning rate; the per-step losses (float64).

    A second call continues from where the first stopped.
    """
    rows = indices.reshape(-1, indices.shape[-1]).astype(np.int32)
    step, x, y, teacher, state = ref.step, ref.x, ref.y, ref.teacher, ref.state
    losses = []
    for idx, lr in zip(rows, lrs.astype(np.float32), strict=True):
        state, loss = step(state, teacher, x, y, idx, lr)
        losses.append(loss)
    ref.state = state
    return np.stack(jax.device_get(losses)).astype(np.float64)
