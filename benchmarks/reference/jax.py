"""The distillation step as a JAX expert writes it, outside kdbench.

The yardstick of ``benchmarks/reference/ratio.py``: kdbench's JAX backend
must run the same step at least as fast (ratio >= 0.97). Nothing here comes
from kdbench's backend; only the shapes (kdbench's neutral shape rule) and
the initial weights come from the spec, so the two compute the same losses
and the ratio tool can check that.

What an expert does, following Flax's NNX guides (NNX is the API Flax 0.12
presents first) and its "Performance considerations" guide:
- native NNX layers (``nnx.Conv``, ``nnx.Linear``, ``nnx.BatchNorm``,
  ``nnx.max_pool``, ``nnx.relu``) in an ``nnx.Sequential``; NHWC, HWIO and
  (in, out) are Flax's own layouts, so the neutral weights load untransposed
  and a flatten in (H, W, C) order is the neutral order;
- a ResNet as the CIFAR ResNet is written in NNX: a ``Residual``
  ``nnx.Module`` whose ``__call__`` is ``body(x) + shortcut(x)`` (the
  shortcut an ``nnx.Sequential`` of a 1x1 ``nnx.Conv`` and ``nnx.BatchNorm``
  where the block downsamples, the identity otherwise), the ReLU after the
  sum the next layer; convolutions before batch norm with ``use_bias=False``
  and PyTorch's explicit zero padding ``((p, p), (p, p))`` (never XLA's
  'SAME', which pads (0, 1) at stride 2); global average pooling as
  ``x.mean(axis=(1, 2))``;
- ``nnx.BatchNorm(momentum=1 - m, epsilon=eps)``: the spec's momentum is
  PyTorch's (the weight of the new batch), Flax's is the weight of the old
  average. The trained net runs in training mode (batch statistics, the
  running averages updated in place by the layer, carried through the loop
  as ``nnx.BatchStat`` state beside the params); the frozen teacher is put in
  inference mode with ``.eval()`` (``use_running_average=True``: its loaded
  running statistics). ``use_fast_variance=False``: Flax's documented switch
  to the numerically stable variance E[(x - mean)^2], PyTorch's and kdbench's;
  the default one-pass E[x^2] - E[x]^2 cancels in float32 and its error grows
  through a deep net's training (resnet56, measured: losses 8e-3 apart from
  kdbench's within 20 steps, where two passes stay within 3e-6) at no speed
  gain on CPU (measured 6.7 vs 6.4 s per 10 steps, noise). As Keras and Flax
  do, the running average takes the biased batch variance where PyTorch takes
  the unbiased one: the running variance (never the losses: training
  normalises with the batch's statistics, the frozen teacher with its loaded
  ones) ends n / (n - 1) apart from kdbench's on the new batch's share;
- mixed precision as Flax documents it (precision "bf16"): every layer with
  ``dtype=jnp.bfloat16`` and ``param_dtype=jnp.float32`` (float32 master
  weights, bfloat16 compute; ``nnx.BatchNorm`` reduces its statistics in
  float32), the input cast to bfloat16, the logits cast back to float32 for
  the softmax and the loss;
- the guide's "functional training loop": ``nnx.split`` of (student,
  optimizer) once, a plain ``jax.jit`` step that ``nnx.merge``s them inside
  the trace and returns their new state (params, batch statistics and
  optimizer state), donated to the next step (``donate_argnums``), so no NNX
  graph traversal runs per step (``nnx.jit`` does one on every call); the
  state crosses the jit boundary as plain nested dicts (``nnx.to_pure_dict``),
  which JAX flattens in C++, where an ``nnx.State`` of ``Variable`` nodes is
  flattened in Python on every call (about 40 us more per step here, measured);
- the split put on the device once, the batch gathered on the device inside
  the step (``x[idx]``), the frozen teacher under ``jax.lax.stop_gradient``;
- the loss from optax and ``jax.nn`` (log-space KL, batchmean, times T^2);
- ``nnx.Optimizer`` over ``optax.adam`` or ``optax.sgd`` wrapped in
  ``optax.inject_hyperparams``, the step's learning rate written into the
  optimizer state inside the step (one executable for the whole schedule);
  weight decay is PyTorch's coupled L2 (``optax.add_decayed_weights`` before
  the optimizer, masked to the kernels where the spec says decay =
  "kernels"), SGD's momentum buffer ``optax.trace`` (torch's), Adam's eps
  outside the square root (optax's default).
One jitted call per step (a ``jax.lax.scan`` over the epoch would also
remove the per-call dispatch, which a harness timing each step cannot).
Nothing waits between steps; the losses are read at the end. Dropout is
refused in the student: its masks would not be kdbench's, so the losses
could not be compared. Inference (``infer``) merges the net inside one
``jax.jit`` and dispatches every batch before reading the last.
"""

from __future__ import annotations

import os

# JAX would otherwise reserve 75% of a GPU.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from functools import partial  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from kdbench.layers import output_shape  # noqa: E402 (the neutral shape rule: in_features)

State = Any  # nnx.to_pure_dict of an nnx.State: nested dicts of arrays
DTYPES = {"float32": jnp.float32, "bf16": jnp.bfloat16}


@dataclass
class Reference:
    x: jax.Array  # NHWC float32, on the device
    y: jax.Array  # int32
    teacher: State | None  # frozen params and running stats, an argument of every step
    state: State  # (student, optimizer), replaced by every step (its buffers are donated)
    step: Callable[..., tuple[State, jax.Array]]


def flatten(x: jax.Array) -> jax.Array:
    """NHWC -> (N, H*W*C): Flax's layout is the neutral one, so nothing is permuted."""
    return x.reshape(x.shape[0], -1)


def global_avgpool(x: jax.Array) -> jax.Array:  # the CIFAR ResNet's head
    return x.mean(axis=(1, 2))


class Residual(nnx.Module):
    """A residual block: body(x) + shortcut(x), shortcut None the identity."""

    def __init__(self, body: nnx.Sequential, shortcut: nnx.Sequential | None) -> None:
        self.body, self.shortcut = body, shortcut

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


def conv(layer: Any, channels: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
    pad = layer.padding  # 'valid', 'same' (stride 1, odd kernel: XLA's SAME) or zeros a side
    return nnx.Conv(
        channels,
        layer.filters,
        (layer.kernel, layer.kernel),
        strides=layer.stride,
        padding=pad.upper() if isinstance(pad, str) else ((pad, pad), (pad, pad)),
        use_bias=layer.bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def batchnorm(layer: Any, channels: int, dtype: Any, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(
        channels,
        momentum=1.0 - layer.momentum,  # Flax's: the weight of the running average
        epsilon=layer.eps,
        use_fast_variance=False,  # two passes: see the module's docstring
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


# the NNX layer's attribute -> its neutral leaf name
NEUTRAL = {
    "conv2d": {"kernel": "kernel", "bias": "bias"},
    "dense": {"kernel": "kernel", "bias": "bias"},
    "batchnorm": {"scale": "scale", "bias": "shift", "mean": "mean", "var": "var"},
}


def identity(x: jax.Array) -> jax.Array:
    return x


def network(
    arch: Any, weights: dict[str, np.ndarray], *, train: bool, dtype: Any = jnp.float32
) -> nnx.Sequential:
    """Native NNX layers for a neutral architecture, holding the neutral weights
    (batch norm's running statistics included); training mode where train,
    else inference mode (``.eval()``). dtype: what the layers compute in.

    Loaded as Flax's checkpoint guide restores one: the net built abstract
    (``nnx.eval_shape``, no random init to run), its state filled, merged.
    Strict, like torch's load_state_dict: every weight is used, with its shape.
    """
    kinds: dict[str, str] = {}  # a parametric layer's neutral prefix ("3.body.0.") -> type

    def native(layer: Any, shape: tuple[int, ...], prefix: str, rngs: nnx.Rngs) -> Any:
        kind = layer.type
        if kind in NEUTRAL:
            kinds[prefix] = kind
        if kind == "conv2d":
            return conv(layer, shape[-1], dtype, rngs)
        if kind == "batchnorm":
            return batchnorm(layer, shape[-1], dtype, rngs)
        if kind == "dense":
            return nnx.Linear(
                shape[-1], layer.units, dtype=dtype, param_dtype=jnp.float32, rngs=rngs
            )
        if kind == "residual":
            body = sequential(layer.body, shape, f"{prefix}body.", rngs)
            short = sequential(layer.shortcut, shape, f"{prefix}shortcut.", rngs)
            return Residual(body, short if layer.shortcut else None)
        if kind == "maxpool":
            size = (layer.size, layer.size)
            return partial(nnx.max_pool, window_shape=size, strides=size)
        if kind == "global_avgpool":
            return global_avgpool
        if kind == "flatten":
            return flatten
        if kind == "relu":
            return nnx.relu
        if kind == "dropout":
            if train:
                raise ValueError(
                    f"{arch.name}: dropout in the trained network; its masks would not be "
                    "kdbench's, so the reference could not check its losses"
                )
            return identity  # at inference (keeps the layer indices the neutral ones)
        raise TypeError(f"no native layer for {layer!r}")

    def sequential(
        layers: Sequence[Any], shape: tuple[int, ...], prefix: str, rngs: nnx.Rngs
    ) -> nnx.Sequential:
        modules = []
        for index, layer in enumerate(layers):
            modules.append(native(layer, shape, f"{prefix}{index}.", rngs))
            shape = output_shape(layer, shape)
        return nnx.Sequential(*modules)

    abstract = nnx.eval_shape(
        lambda: sequential(arch.layers, tuple(arch.input_shape), "", nnx.Rngs(0))
    )
    graphdef, state = nnx.split(abstract)
    unused = dict(weights)
    filled = []
    for path, variable in nnx.to_flat_state(state):
        # ("layers", 3, "body", "layers", 0, "kernel") -> "3.body.0." and "kernel"
        parts = [str(part) for part in path if part != "layers"]
        prefix = "".join(f"{part}." for part in parts[:-1])
        name = prefix + NEUTRAL[kinds[prefix]][parts[-1]]
        if name not in unused:
            raise ValueError(f"{arch.name}: no weight {name}")
        value = np.asarray(unused.pop(name), dtype=np.float32)
        if variable.shape != value.shape:
            raise ValueError(f"{name}: shape {value.shape}, layer wants {variable.shape}")
        filled.append((path, variable.replace(jnp.asarray(value))))
    if unused:
        raise ValueError(f"weights not used by {arch.name}: {sorted(unused)}")
    net = nnx.merge(graphdef, nnx.from_flat_state(filled))
    if not train:
        net.eval()  # batch norm on its running statistics
    return net


def kernels(params: Any) -> Any:
    """True on the kernels (conv and dense) of a params tree: decay = "kernels"."""

    def is_kernel(path: tuple[Any, ...], _: Any) -> bool:
        return [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1] == "kernel"

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def optimizer_for(config: dict[str, Any]) -> optax.GradientTransformation:
    """The optax chain for the spec's optimizer; learning_rate is injected per step."""
    wd, which = config["weight_decay"], config.get("decay", "all")
    if which not in ("all", "kernels"):
        raise ValueError(f"no reference weight decay over {which!r}")
    mask = kernels if which == "kernels" else None

    def with_decay(tx: optax.GradientTransformation) -> optax.GradientTransformation:
        return optax.chain(optax.add_decayed_weights(wd, mask=mask), tx) if wd else tx

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
    labels alone). precision: "float32", or "bf16" (bfloat16 compute on
    float32 weights, float32 softmax and loss). seed is unused (no dropout
    runs); it is here so every reference takes the same arguments.
    """
    if precision not in DTYPES:
        raise ValueError(f"no {precision} reference loop")
    dtype = DTYPES[precision]
    del seed
    teacher_def, teacher_state = None, None
    if teacher_arch is not None:
        frozen = network(teacher_arch, teacher_weights, train=False, dtype=dtype)
        teacher_def, variables = nnx.split(frozen)  # params and running statistics
        teacher_state = nnx.to_pure_dict(variables)
    student = network(student_arch, student_weights, train=True, dtype=dtype)
    opt = nnx.Optimizer(student, optimizer_for(optimizer), wrt=nnx.Param)
    graphdef, nnx_state = nnx.split((student, opt))

    def train_step(
        state: State, teacher_state: State | None, x: jax.Array, y: jax.Array, idx: Any, lr: Any
    ) -> tuple[State, jax.Array]:
        student, opt = nnx.merge(graphdef, state)
        xb, yb = x[idx].astype(dtype), y[idx]
        teacher_logits = None
        if teacher_def is not None:
            logits = nnx.merge(teacher_def, teacher_state)(xb).astype(jnp.float32)
            teacher_logits = jax.lax.stop_gradient(logits)

        def objective(model: nnx.Sequential) -> jax.Array:
            return loss_of(loss, model(xb).astype(jnp.float32), yb, teacher_logits)

        # Gradients of the params; batch norm's updated running stats stay in the student.
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


@dataclass
class Inference:
    x: jax.Array  # NHWC float32, on the device
    state: State  # the network's params and running statistics, plain dicts
    forward: Callable[[State, jax.Array, Any], jax.Array]  # jitted (state, x, idx) -> logits


def setup_inference(
    x: np.ndarray, arch: Any, weights: dict[str, np.ndarray], *, precision: str = "float32"
) -> Inference:
    """The split and the jitted forward pass in inference mode (the functional form)."""
    if precision not in DTYPES:
        raise ValueError(f"no {precision} reference loop")
    dtype = DTYPES[precision]
    graphdef, variables = nnx.split(network(arch, weights, train=False, dtype=dtype))

    def forward(state: State, x: jax.Array, idx: Any) -> jax.Array:
        return nnx.merge(graphdef, state)(x[idx].astype(dtype)).astype(jnp.float32)

    data = jax.device_put(np.ascontiguousarray(x, dtype=np.float32))
    return Inference(data, nnx.to_pure_dict(variables), jax.jit(forward))


def infer(ref: Inference, idx: np.ndarray, batches: int) -> np.ndarray:
    """The rows idx through the network, batches times; the last logits (float64)."""
    rows = jax.device_put(idx.astype(np.int32))
    for _ in range(batches):
        logits = ref.forward(ref.state, ref.x, rows)
    return np.asarray(jax.device_get(logits), dtype=np.float64)
