"""The PyTorch reference loop (benchmarks/reference/pytorch.py) computes kdbench's step.

A reference that computed a cheaper step would make every ratio a lie, so
the ratio tool checks the losses of each pair, and these tests pin that it
does: same weights, batches and learning rates give the same losses, and a
reference that drifts (its flatten order left unpermuted; on a ResNet, its
shortcut dropped, batch norm's eps wrong, the frozen teacher on batch
statistics) does not pass. The ResNet checks run a tiny pair (resnet14 ->
resnet8 on 8x8x3 synthetic images) through both phases; bf16 is held to
kdbench's bf16 step and shown to differ from the float32 step.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from reference_loops import (
    assert_same_inference,
    assert_same_steps,
    kdbench_logits,
    kdbench_losses,
    kdbench_phase_losses,
    load,
    mnist5k_cell,
    ratio_figures,
    reference_logits,
    reference_losses,
    reference_phase_losses,
    tiny_resnet_cell,
)

pytest.importorskip("torch", reason="torch is not installed")


# Float32 steps through the same kernels in the same order (measured: equal to
# the last bit on the tiny ResNet, 4e-7 on mnist5k's 20 steps).
RTOL = 1e-5
# bf16 against kdbench's bf16 step (measured over 5 steps: equal; 1e-5 over 10 on
# mnist5k; bfloat16's rounding of 2^-9 per value allows ~1e-2), and how far bf16
# must move the reference's losses from its own float32 ones to show it is on
# (measured over 5 steps: 5.5e-4 on the ResNet's distillation .. 1.2e-2).
BF16_RTOL = 1e-2
BF16_MOVES = 1e-4
STEPS = 10
BF16_STEPS = 5  # bfloat16 convolutions are slow on a CPU without native bf16


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.abs(b)))


@pytest.fixture(scope="module")
def cell():
    return mnist5k_cell()


@pytest.fixture(scope="module")
def resnet_cell():
    return tiny_resnet_cell()


@pytest.fixture(scope="module")
def resnet_distill(resnet_cell) -> np.ndarray:
    """kdbench's distillation steps on the tiny ResNet pair, float32."""
    return kdbench_phase_losses("pytorch", resnet_cell, "distill", STEPS)


def test_the_pytorch_reference_takes_kdbenchs_steps(cell) -> None:
    assert_same_steps("pytorch", cell)


def test_a_reference_with_the_flatten_order_wrong_is_caught(cell, monkeypatch) -> None:
    """The teacher's first dense rows unpermuted: still runs, different step."""
    module = load("pytorch")
    real = module.network

    def unpermuted(arch, weights):
        net = real(arch, weights)
        if any(layer.type == "conv2d" for layer in arch.layers):
            for index, layer in enumerate(arch.layers):
                if layer.type == "dense":
                    rows = np.ascontiguousarray(weights[f"{index}.kernel"].T)
                    net[index].weight.data.copy_(module.torch.from_numpy(rows))
                    break
        return net

    monkeypatch.setattr(module, "network", unpermuted)
    ours, theirs = kdbench_losses("pytorch", cell, 5), reference_losses(module, cell, 5)
    assert not np.allclose(theirs, ours, rtol=1e-5)
    # The inference check catches it too (the logits of the same images).
    ours, theirs = kdbench_logits("pytorch", cell, 64), reference_logits(module, cell, 64)
    assert not np.allclose(theirs, ours, rtol=1e-4, atol=1e-4 * np.abs(ours).max())


def test_the_pytorch_reference_infers_kdbenchs_logits(cell) -> None:
    assert_same_inference("pytorch", cell)


@pytest.mark.parametrize("phase", ["distill", "teacher", "teacher-inference"])
def test_the_ratio_tool_pairs_pytorch_blocks_and_checks_their_losses(phase: str) -> None:
    figures = ratio_figures("pytorch", phase)
    assert figures["compile_mode"] == "eager"
    assert figures["memory_format"] == "channels_last"


@pytest.mark.parametrize("phase", ["distill", "teacher"])
def test_the_pytorch_reference_takes_kdbenchs_resnet_steps(
    resnet_cell, resnet_distill, phase: str
) -> None:
    """Batch norm on batch statistics in the trained net (running ones updated),
    on running statistics in the frozen teacher; projection shortcuts; SGD with
    momentum and weight decay."""
    ours = (
        resnet_distill
        if phase == "distill"
        else kdbench_phase_losses("pytorch", resnet_cell, phase, STEPS)
    )
    theirs = reference_phase_losses(load("pytorch"), resnet_cell, phase, STEPS)
    assert theirs.dtype == np.float64 and theirs.shape == (STEPS,)
    np.testing.assert_allclose(theirs, ours, rtol=RTOL)
    assert ours[-1] < ours[0]  # it learns: the steps are real updates


def test_the_reference_decays_only_kernels_as_kdbench_does(resnet_cell) -> None:
    """optimizer decay = "kernels": no weight decay on biases and batch norm's
    scale and shift (a decay large enough to move the losses within 10 steps)."""
    sgd = {**resnet_cell.student_optimizer, "weight_decay": 0.05}
    kernels = replace(resnet_cell, student_optimizer={**sgd, "decay": "kernels"})
    ours = kdbench_phase_losses("pytorch", kernels, "distill", STEPS)
    theirs = reference_phase_losses(load("pytorch"), kernels, "distill", STEPS)
    np.testing.assert_allclose(theirs, ours, rtol=RTOL)
    every = replace(resnet_cell, student_optimizer={**sgd, "decay": "all"})
    decayed = reference_phase_losses(load("pytorch"), every, "distill", STEPS)
    assert max_rel(decayed, ours) > 100 * RTOL  # measured 2e-2


def _without_shortcut(module, monkeypatch) -> None:
    def forward(self, x):
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))

    monkeypatch.setattr(module.BasicBlock, "forward", forward)


def _wrong_eps(module, monkeypatch) -> None:
    real = module.network

    def network(arch, weights):
        net = real(arch, weights)
        for norm in net.modules():
            if isinstance(norm, module.nn.BatchNorm2d):
                norm.eps = 1e-3  # Keras's default, where the spec says 1e-5
        return net

    monkeypatch.setattr(module, "network", network)


def _teacher_training_mode(module, monkeypatch) -> None:
    real = module.setup

    def setup(*args, **kwargs):
        run = real(*args, **kwargs)
        run.teacher.train()  # the frozen teacher on batch statistics
        return run

    monkeypatch.setattr(module, "setup", setup)


@pytest.mark.parametrize(
    "perturb", [_without_shortcut, _wrong_eps, _teacher_training_mode], ids=lambda f: f.__name__
)
def test_a_resnet_reference_that_drifts_is_caught(
    resnet_cell, resnet_distill, perturb, monkeypatch
) -> None:
    module = load("pytorch")
    perturb(module, monkeypatch)
    theirs = reference_phase_losses(module, resnet_cell, "distill", STEPS)
    assert max_rel(theirs, resnet_distill) > 10 * RTOL  # measured 1.4e-3 (eps) .. 0.23


@pytest.mark.parametrize(("net", "phase"), [("mnist5k", "distill"), ("mnist5k", "teacher"),
                                            ("resnet", "distill"), ("resnet", "teacher")])  # fmt: skip
def test_the_bf16_reference_takes_kdbenchs_bf16_steps(cell, resnet_cell, net, phase) -> None:
    """torch.autocast bfloat16 on float32 master weights, the loss in float32:
    kdbench's bf16 step, and not the float32 one."""
    case = cell if net == "mnist5k" else resnet_cell
    module = load("pytorch")
    ours = kdbench_phase_losses("pytorch", case, phase, BF16_STEPS, precision="bf16")
    theirs = reference_phase_losses(module, case, phase, BF16_STEPS, precision="bf16")
    np.testing.assert_allclose(theirs, ours, rtol=BF16_RTOL)
    float32 = reference_phase_losses(module, case, phase, BF16_STEPS)
    assert max_rel(theirs, float32) > BF16_MOVES


def test_the_reference_refuses_a_precision_it_does_not_run(cell) -> None:
    with pytest.raises(ValueError, match="tf32"):
        reference_phase_losses(load("pytorch"), cell, "distill", 1, precision="tf32")
