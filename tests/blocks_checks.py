"""Small nets with batch norm, residual blocks, explicit padding and global
average pooling, and the checks every backend must pass on them (shared by
the parity tests and the oracle's finite-difference tests)."""

from __future__ import annotations

import numpy as np
from oracles import backward, network
from parity_checks import assert_close

from kdbench.architectures import (
    Architecture,
    BatchNorm,
    Conv2D,
    Dense,
    GlobalAvgPool,
    MaxPool,
    ReLU,
    Residual,
    resolve,
)
from kdbench.backends.base import Backend, LossConfig, Weights
from kdbench.initial_weights import init_weights
from kdbench.plan import rng_for

SGD = {"name": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4}
STEPS = 20
STATS_TOL = 1e-5
WEIGHTS_TOL = 1e-4


def _c(filters: int, kernel: int = 3, stride: int = 1, pad: int = 1, bias: bool = False) -> Conv2D:
    return Conv2D(filters=filters, kernel=kernel, stride=stride, padding=pad, bias=bias)


def block_nets() -> dict[str, Architecture]:
    """A post-activation ResNet stage with a strided projection shortcut (the
    padding trap: stride 2 and one zero per side on an even input), a
    pre-activation WRN block with an identity shortcut, and a VGG stage."""
    resnet = [
        _c(4),
        BatchNorm(),
        ReLU(),
        Residual(
            body=[_c(6, stride=2), BatchNorm(), ReLU(), _c(6), BatchNorm()],
            shortcut=[_c(6, kernel=1, stride=2, pad=0), BatchNorm()],
        ),
        ReLU(),
        Residual(body=[BatchNorm(), ReLU(), _c(6)]),
        BatchNorm(),
        ReLU(),
        GlobalAvgPool(),
        Dense(units=10),
    ]
    vgg = [
        _c(4, bias=True),
        BatchNorm(),
        ReLU(),
        MaxPool(size=2),
        _c(8, bias=True),
        BatchNorm(),
        ReLU(),
        GlobalAvgPool(),
        Dense(units=10),
    ]
    return {
        "resnet-block": _named(resolve(None, resnet, (8, 8, 3), 10), "resnet-block", "resnet"),
        "vgg-block": _named(resolve(None, vgg, (8, 8, 3), 10), "vgg-block", "vgg"),
    }


def _named(arch: Architecture, name: str, init: str) -> Architecture:
    return Architecture(name, arch.layers, arch.input_shape, arch.classes, init)


def trained_weights(arch: Architecture, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial weights with running statistics and BN parameters moved off
    their initial 0/1, so inference and training modes differ visibly."""
    w = init_weights(arch, rng_for(seed, "blocks"))
    rng = np.random.default_rng(seed + 1)
    for name in w:
        if name.endswith((".mean", ".shift")):
            w[name] = rng.normal(0.0, 0.3, size=w[name].shape).astype(np.float32)
        elif name.endswith((".var", ".scale")):
            w[name] = rng.uniform(0.5, 1.5, size=w[name].shape).astype(np.float32)
    return w


def data(arch: Architecture, n: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *arch.input_shape)).astype(np.float32)
    return x, rng.integers(0, arch.classes, size=n).astype(np.int32)


def check_inference(
    backend: Backend, arch: Architecture, built: Architecture | None = None
) -> None:
    """built: what the backend is given (a perturbed twin of arch, to show the check fails)."""
    w = trained_weights(arch)
    x, _ = data(arch)
    out = backend.forward(backend.build(built or arch, w), x)
    assert_close(out, network.forward(arch, w, x), 1e-5, f"{arch.name} inference logits")


def floored_errors(
    got: Weights, want: Weights, scale_of: list[str], names: list[str] | None = None
) -> dict[str, float]:
    """Each array's largest error relative to its own largest value, but to at
    least 1% of the largest value among scale_of. A conv bias right before a
    batch norm (VGG's) has a gradient of exactly 0 and stays at 0: its float32
    value is rounding noise, which a plain relative error would blow up."""
    floor = 1e-2 * max(float(np.abs(want[n]).max()) for n in scale_of)
    out = {}
    for name in names if names is not None else scale_of:
        a, b = np.asarray(got[name], np.float64), np.asarray(want[name], np.float64)
        out[name] = float(np.abs(a - b).max()) / max(float(np.abs(b).max()), floor, 1e-30)
    return out


def check_gradients(backend: Backend, arch: Architecture) -> None:
    """Training-mode loss and every gradient against the oracle; the model's
    running statistics untouched by loss_and_grads."""
    w = trained_weights(arch)
    x, y = data(arch, n=16)
    model = backend.build(arch, w)
    loss, grads = backend.loss_and_grads(model, x, y, LossConfig(method="none"))
    want_loss, want = backward.loss_and_grads(arch, w, x, y, "none")
    assert_close(np.array(loss), np.array(want_loss), 1e-5, f"{arch.name} training loss")
    assert set(grads) == set(arch.param_shapes())
    for name, err in floored_errors(grads, want, list(want)).items():
        assert err <= 1e-4, f"{arch.name} gradient {name}: relative error {err:.3g} > 0.0001"
    after = backend.get_weights(model)
    for name in arch.state_shapes():
        np.testing.assert_array_equal(after[name], w[name], err_msg=f"loss_and_grads moved {name}")


def oracle_run(
    arch: Architecture, w: dict, x: np.ndarray, y: np.ndarray, plan, lrs, optimizer: dict = SGD
) -> dict[str, np.ndarray]:
    """STEPS float64 SGD steps: parameters and running statistics at the end."""
    _, final = backward.train(arch, w, x, y, plan, lrs, optimizer, "none")
    return final


def backend_run(
    backend: Backend,
    arch: Architecture,
    w: dict,
    x: np.ndarray,
    y: np.ndarray,
    plan,
    lrs,
    optimizer: dict = SGD,
) -> dict[str, np.ndarray]:
    model = backend.build(arch, w)
    data_handle = backend.put_dataset(x, y)
    state = backend.init_train(model, optimizer, LossConfig(method="none"))
    for idx, lr in zip(plan, lrs, strict=True):
        state, _ = backend.train_step(state, data_handle, idx, float(lr))
    backend.sync(state)
    return backend.get_weights(backend.trained_model(state))


def plan_for(n: int, batch: int = 16, seed: int = 0) -> tuple[list[np.ndarray], list[float]]:
    rng = np.random.default_rng(seed)
    plan = [rng.permutation(n)[:batch].astype(np.int32) for _ in range(STEPS)]
    lrs = list(0.05 * 0.5 * (1 + np.cos(np.pi * np.arange(STEPS) / STEPS)))
    return plan, lrs


def check_training(
    backend: Backend, arch: Architecture, built: Architecture | None = None, optimizer: dict = SGD
) -> dict[str, np.ndarray]:
    """20 SGD steps (momentum, weight decay, cosine lr): every parameter and
    every running statistic against the float64 trajectory. Returns the
    backend's final weights for the cross-backend check."""
    w = trained_weights(arch)
    x, y = data(arch, n=64)
    plan, lrs = plan_for(len(x))
    got = backend_run(backend, built or arch, w, x, y, plan, lrs, optimizer)
    want = oracle_run(arch, w, x, y, plan, lrs, optimizer)
    assert set(got) == set(arch.weight_shapes())
    for name in arch.state_shapes():
        assert_close(got[name], want[name], STATS_TOL, f"{arch.name} running {name}")
    for name, err in floored_errors(got, want, list(arch.param_shapes())).items():
        assert err <= WEIGHTS_TOL, f"{arch.name} trained {name}: relative error {err:.3g}"
    return got


def check_augmented_training(backend: Backend, arch: Architecture) -> None:
    """Five steps with crops and flips applied inside the step: the batches
    against the numpy oracle exactly, the trained weights against float64
    training on those batches."""
    from oracles.augment import augment_batch

    from kdbench.backends.base import Augment
    from kdbench.plan import make_plan, with_crops

    w = trained_weights(arch)
    x, y = data(arch, n=64)
    aug = Augment(pad=2, flip=True, fill=(-1.0, 0.5, 2.0))
    plan = with_crops(make_plan(64, 16, 1, rng_for(0, "p")), 2, True, rng_for(0, "a"))
    steps = [(plan.indices[0, s], plan.crops[0, s]) for s in range(4)]
    handle = backend.put_dataset(x, y)
    for idx, crops in steps:
        got = backend.augmented_batch(handle, idx, aug, crops)
        np.testing.assert_array_equal(got, augment_batch(x[idx], aug, crops))
    state = backend.init_train(backend.build(arch, w), SGD, LossConfig("none"), augment=aug)
    for idx, crops in steps:
        state, _ = backend.train_step(state, handle, idx, 0.05, 1.0, crops)
    got_w = backend.get_weights(backend.trained_model(state))
    current = {k: v.astype(np.float64) for k, v in w.items()}
    from oracles.optimizers import ReferenceOptimizer

    opt = ReferenceOptimizer(SGD)
    for idx, crops in steps:
        xb = augment_batch(x[idx], aug, crops)
        _, grads = backward.loss_and_grads(arch, current, xb, y[idx], "none")
        stats = backward.running_stats(arch, current, xb)
        params = {k: current[k] for k in arch.param_shapes()}
        current = {**opt.step(params, grads, 0.05), **stats}
    errors = floored_errors(got_w, current, list(arch.param_shapes()), list(arch.weight_shapes()))
    for name, err in errors.items():
        assert err <= WEIGHTS_TOL, f"augmented {name}: relative error {err:.3g}"
