"""The JAX reference loop (benchmarks/reference/jax.py) computes kdbench's step.

A reference that computed a cheaper step would make every ratio a lie, so
the ratio tool checks the losses of each pair, and these tests pin that it
does: same weights, batches and learning rates give the same losses (with
every optimizer variant kdbench's JAX backend supports; on a tiny CIFAR
ResNet with batch norm, distilling from a frozen teacher and training the
teacher itself; at bf16), and a reference that drifts (a flatten order, a
temperature scaling, a dropped shortcut, a teacher in training mode, a
batch norm eps or momentum wrong, bf16 ignored) does not pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reference_loops import (
    REFERENCE,
    assert_same_inference,
    assert_same_steps,
    kdbench_losses,
    load,
    mnist5k_cell,
    phase_inputs,
    ratio_figures,
    reference_losses,
)

pytest.importorskip("jax", reason="jax is not installed")
pytest.importorskip("flax.nnx", reason="flax is not installed")


@pytest.fixture(scope="module")
def cell():
    return mnist5k_cell()


def test_the_jax_reference_takes_kdbenchs_steps(cell) -> None:
    assert_same_steps("jax", cell)


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "adam", "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 1e-2},
        {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-3},
        {"name": "sgd", "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    ],
    ids=["adam-l2", "sgd-nesterov-l2", "sgd-plain"],
)
def test_the_reference_optimizers_are_kdbenchs(cell, optimizer: dict) -> None:
    """PyTorch's coupled L2, momentum buffer and Adam eps, as kdbench's optim.py has them."""
    ours = kdbench_losses("jax", cell, 6, optimizer)
    theirs = reference_losses(load("jax"), cell, 6, optimizer)
    np.testing.assert_allclose(theirs, ours, rtol=1e-5)


def chw_flatten(x):
    """The mistake a port from PyTorch makes: flatten NCHW order on NHWC data."""
    return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


def loss_with_t_unsquared(loss, logits, labels, teacher):
    """Hinton's loss without the T^2 on the distillation term."""
    import jax
    import optax

    t = loss.temperature
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    kl = optax.losses.kl_divergence_with_log_targets(
        jax.nn.log_softmax(logits / t), jax.nn.log_softmax(teacher / t)
    ).mean()
    return loss.alpha * t * kl + (1.0 - loss.alpha) * ce


@pytest.mark.parametrize(
    ("name", "wrong"),
    [("flatten", chw_flatten), ("loss_of", loss_with_t_unsquared)],
    ids=["teacher-flatten-chw", "temperature-unsquared"],
)
def test_a_reference_that_drifts_is_caught(cell, monkeypatch, name: str, wrong) -> None:
    """Still runs, different step: the teacher's flatten (its conv output has
    64 channels; the MLP student's 1-channel input flattens alike either way)
    or the loss's T scaling."""
    module = load("jax")
    monkeypatch.setattr(module, name, wrong)
    ours, theirs = kdbench_losses("jax", cell, 5), reference_losses(module, cell, 5)
    assert not np.allclose(theirs, ours, rtol=1e-5)


def test_dropout_in_the_trained_net_is_refused(cell) -> None:
    """Its masks could not be kdbench's, so the losses could not be checked."""
    from kdbench.architectures import Architecture, Dropout

    arch = cell.loaded.student_arch
    layers = (*arch.layers[:-1], Dropout(rate=0.5), arch.layers[-1])
    with_dropout = Architecture(arch.name, layers, arch.input_shape, arch.classes)
    with pytest.raises(ValueError, match="dropout"):
        load("jax").network(with_dropout, cell.student_weights, train=True)


def test_the_jax_reference_infers_kdbenchs_logits(cell) -> None:
    assert_same_inference("jax", cell)


@pytest.mark.parametrize("phase", ["distill", "teacher", "teacher-inference"])
def test_the_ratio_tool_pairs_jax_blocks_and_checks_their_losses(phase: str) -> None:
    assert ratio_figures("jax", phase)["compile_mode"] == "jax.jit"


def test_the_ratio_script_imports_the_frameworks_not_its_namesakes(tmp_path: Path) -> None:
    """Run as a script, benchmarks/reference/ heads sys.path, where jax.py would shadow jax."""
    proc = subprocess.run(
        [sys.executable, str(REFERENCE / "ratio.py"), "--backends", "jax", "--phases", "distill",
         "--specs", "no-such-spec", "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1  # a failed child fails the command
    (result,) = json.loads((tmp_path / "r.json").read_text())
    assert "no-such-spec" in result["error"], result[
        "error"
    ]  # got as far as the spec: jax imported


# --- a tiny CIFAR ResNet: batch norm, residual blocks, SGD with momentum and L2 ---

TINY_RESNET = """
name = "tiny-resnet"
[data]
dataset = "synthetic"
samples = 640
shape = [8, 8, 3]
classes = 10
[teacher]
arch = "resnet8"
width = 0.5
epochs = 2
batch_size = 32
optimizer = { name = "sgd", lr = 0.05, momentum = 0.9, weight_decay = 5e-4 }
[student]
arch = "resnet8"
width = 0.25
epochs = 2
batch_size = 32
optimizer = { name = "sgd", lr = 0.05, momentum = 0.9, weight_decay = 5e-4 }
[distill]
method = "soft"
"""
STEPS = 10
# float32 ResNets drift apart a little every step where their kernels differ;
# measured 8e-8 (distill) and 0 (teacher) over these 10 steps (resnet56 in
# ratio.py: 3e-4 after 40+ steps). The drifts below (the smallest: eps 1e-3
# for 1e-5, 1.4e-3) are far outside.
RESNET_RTOL = 1e-5
# bf16 without batch norm (mnist5k): the same bfloat16 kernels, measured 9e-8.
# With it (the ResNet): Flax's nnx.BatchNorm at dtype bfloat16 takes its scale,
# shift and the teacher's running statistics in bfloat16 where kdbench keeps
# them float32: measured 7.7e-4 (tests/test_bf16.py's loss tolerance is 2e-2).
BF16_RTOL = {"mnist5k": 1e-5, "tiny-resnet": 1e-2}
# bf16 moves the losses at least this far from float32's (measured 3.1e-3 on
# mnist5k, 8.9e-4 on the ResNet): a reference that ignored bf16 stays closer.
BF16_LEVEL = 1e-4


@pytest.fixture(scope="module")
def resnet_cell(tmp_path_factory):
    from kdbench.harness.prepare import prepare_cell
    from kdbench.spec import load_spec

    path = tmp_path_factory.mktemp("spec") / "tiny-resnet.toml"
    path.write_text(TINY_RESNET)
    return prepare_cell(load_spec(str(path)), seed=0)


def kdbench_phase(cell, phase: str, precision: str = "float32", optimizer: dict | None = None):
    """The phase's first STEPS through the backend: (losses, trained weights)."""
    from kdbench.backends.base import Settings, get_backend
    from kdbench.plan import learning_rates

    p = phase_inputs(cell, phase)
    backend = get_backend("jax")
    backend.setup(Settings(threads=1, precision=precision))
    data = backend.put_dataset(cell.data.x_train, cell.data.y_train)
    arch, weights = p["frozen"]
    teacher = backend.build(arch, weights, seed=cell.teacher_seed) if arch else None
    model = backend.build(p["arch"], p["weights"], seed=p["seed"])
    state = backend.init_train(model, optimizer or p["optimizer"], p["loss"], teacher)
    lrs = learning_rates(p["net"], p["plan"])[:STEPS]
    losses = []
    for idx, lr in zip(p["plan"].indices[0, :STEPS], lrs, strict=True):
        state, loss = backend.train_step(state, data, idx, float(lr))
        losses.append(float(backend.to_numpy(loss)))
    return np.array(losses), backend.get_weights(backend.trained_model(state))


def reference_phase(
    module, cell, phase: str, precision: str = "float32", optimizer: dict | None = None
):
    """The same steps through the reference loop: (losses, its Reference)."""
    from kdbench.plan import learning_rates

    p = phase_inputs(cell, phase)
    run = module.setup(cell.data.x_train, cell.data.y_train, *p["frozen"], p["arch"],
                       p["weights"], optimizer or p["optimizer"], p["loss"], seed=p["seed"],
                       precision=precision)  # fmt: skip
    lrs = learning_rates(p["net"], p["plan"])[:STEPS]
    return module.train(run, p["plan"].indices[0, :STEPS], lrs), run


def running_means(run) -> dict[str, np.ndarray]:
    """The trained net's batch norm running means under their neutral names
    ("3.body.1.mean"), from the reference's (student, optimizer) state."""
    import jax

    out = {}
    for path, value in jax.tree_util.tree_flatten_with_path(run.state[0])[0]:
        parts = [str(k.key) for k in path if k.key != "layers"]
        if parts[-1] == "mean":
            out[".".join(parts)] = np.asarray(value, dtype=np.float64)
    return out


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a / b - 1).max())


@pytest.fixture(scope="module")
def kdbench_resnet(resnet_cell):
    """kdbench's float32 losses and trained weights per phase, computed once."""
    return {phase: kdbench_phase(resnet_cell, phase) for phase in ("distill", "teacher")}


@pytest.mark.parametrize("phase", ["distill", "teacher"])
def test_the_reference_takes_kdbenchs_resnet_steps(resnet_cell, kdbench_resnet, phase) -> None:
    """Distilling from the frozen teacher (inference-mode batch norm), and the
    teacher's own phase (method none): the same losses, falling, and the
    trained net's running means kdbench's (momentum in PyTorch's sense)."""
    ours, weights = kdbench_resnet[phase]
    theirs, run = reference_phase(load("jax"), resnet_cell, phase)
    np.testing.assert_allclose(theirs, ours, rtol=RESNET_RTOL)
    assert ours[-1] < ours[0]
    means, start = running_means(run), phase_inputs(resnet_cell, phase)["weights"]
    assert len(means) == 9  # resnet8: the stem's, 2 a block, 1 a projection shortcut
    for name, mean in means.items():
        assert not np.allclose(mean, start[name])  # updated by the steps
        np.testing.assert_allclose(mean, weights[name], rtol=1e-4, atol=1e-6)


def drop_shortcut(self, x):
    """A block without its skip connection: a plain deep net."""
    return self.body(x)


def keras_eps_batchnorm(layer, channels, dtype, rngs):
    """Keras's epsilon (1e-3) where the spec says PyTorch's 1e-5."""
    from flax import nnx

    return nnx.BatchNorm(channels, momentum=1.0 - layer.momentum, epsilon=1e-3,
                         use_fast_variance=False, dtype=dtype, rngs=rngs)  # fmt: skip


def flax_momentum_batchnorm(layer, channels, dtype, rngs):
    """The spec's momentum (the new batch's weight) passed as Flax's (the old average's)."""
    from flax import nnx

    return nnx.BatchNorm(channels, momentum=layer.momentum, epsilon=layer.eps,
                         use_fast_variance=False, dtype=dtype, rngs=rngs)  # fmt: skip


@pytest.mark.parametrize("wrong", ["shortcut-dropped", "teacher-in-training-mode", "bn-eps"])
def test_a_resnet_reference_that_drifts_is_caught(
    resnet_cell, kdbench_resnet, monkeypatch, wrong: str
) -> None:
    module = load("jax")
    if wrong == "shortcut-dropped":
        monkeypatch.setattr(module.Residual, "__call__", drop_shortcut)
    elif wrong == "bn-eps":
        monkeypatch.setattr(module, "batchnorm", keras_eps_batchnorm)
    else:  # the frozen teacher normalising with the batch's statistics
        right = module.network
        monkeypatch.setattr(module, "network", lambda *a, train, **k: right(*a, train=True, **k))
    theirs, _ = reference_phase(module, resnet_cell, "distill")
    assert max_rel(theirs, kdbench_resnet["distill"][0]) > 10 * RESNET_RTOL


def test_batch_norm_momentum_in_flaxs_sense_is_caught(resnet_cell, kdbench_resnet, monkeypatch):
    """Unflipped, the losses cannot tell (training normalises with the batch's
    statistics); the running means can (measured 0.5 off)."""
    module = load("jax")
    monkeypatch.setattr(module, "batchnorm", flax_momentum_batchnorm)
    theirs, run = reference_phase(module, resnet_cell, "teacher")
    ours, weights = kdbench_resnet["teacher"]
    np.testing.assert_allclose(theirs, ours, rtol=RESNET_RTOL)
    means = running_means(run)
    assert max(np.abs(means[name] - weights[name]).max() for name in means) > 1e-2


def test_weight_decay_on_the_kernels_only_is_kdbenchs(resnet_cell) -> None:
    """decay = "kernels": no L2 on batch norm's scale and shift (nor biases); on
    the ResNet, whose scales start at 1, decaying them too is another step."""
    config = {"name": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 5e-2}
    kernels = {**config, "decay": "kernels"}
    ours, _ = kdbench_phase(resnet_cell, "teacher", optimizer=kernels)
    module = load("jax")
    theirs, _ = reference_phase(module, resnet_cell, "teacher", optimizer=kernels)
    np.testing.assert_allclose(theirs, ours, rtol=RESNET_RTOL)
    every, _ = reference_phase(module, resnet_cell, "teacher", optimizer={**config, "decay": "all"})
    assert max_rel(every, ours) > 10 * RESNET_RTOL


@pytest.mark.parametrize("which", ["mnist5k", "tiny-resnet"])
def test_the_bf16_reference_takes_kdbenchs_bf16_steps(
    cell, resnet_cell, kdbench_resnet, which: str
) -> None:
    """bfloat16 compute on float32 weights in both: the losses agree to bf16's
    tolerance, and they are not the float32 ones (a reference that ignored
    bf16 would give kdbench's float32 losses, to float32 noise)."""
    chosen = cell if which == "mnist5k" else resnet_cell
    module = load("jax")
    ours, _ = kdbench_phase(chosen, "distill", precision="bf16")
    theirs, run = reference_phase(module, chosen, "distill", precision="bf16")
    np.testing.assert_allclose(theirs, ours, rtol=BF16_RTOL[which])
    assert run.x.dtype == np.float32  # the split stays float32; the step casts the batch
    if which == "mnist5k":
        float32 = kdbench_phase(chosen, "distill")[0]
    else:
        float32 = kdbench_resnet["distill"][0]
    assert max_rel(theirs, float32) > BF16_LEVEL


def test_an_unknown_precision_is_refused(resnet_cell) -> None:
    with pytest.raises(ValueError, match="float16"):
        reference_phase(load("jax"), resnet_cell, "distill", precision="float16")
