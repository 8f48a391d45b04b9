"""The analytic FLOP formula, cross-checked against PyTorch's and XLA's counters."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import backend, backend_params
from parity_checks import parity_architectures

from kdbench.architectures import Conv2D, Dense, resolve
from kdbench.flops import forward_flops, phase_flops_per_step, train_flops

ARCHS = parity_architectures()


def test_formula_by_hand() -> None:
    arch = resolve("cnn-small", None, (28, 28, 1), 10)
    conv1 = 2 * 26 * 26 * 3 * 3 * 1 * 32
    conv2 = 2 * 11 * 11 * 3 * 3 * 32 * 64
    dense = 2 * 1600 * 256 + 2 * 256 * 10
    assert forward_flops(arch) == conv1 + conv2 + dense
    assert train_flops(arch) == 3 * forward_flops(arch)
    student = resolve("mlp-64", None, (28, 28, 1), 10)
    assert phase_flops_per_step("distill", arch, student, 64) == 64 * (
        forward_flops(arch) + 3 * forward_flops(student)
    )
    assert phase_flops_per_step("teacher", arch, student, 2) == 6 * forward_flops(arch)


def _first_layer_flops(arch) -> int:
    """The first parametric layer needs no gradient for its input."""
    for _, layer, in_shape, out_shape in arch.walk():
        if isinstance(layer, Dense):
            return 2 * in_shape[-1] * layer.units
        if isinstance(layer, Conv2D):
            return 2 * int(np.prod(out_shape)) * layer.kernel**2 * in_shape[-1]
    return 0


@pytest.mark.torch
@pytest.mark.parametrize("name", list(ARCHS))
def test_matches_torch_flop_counter(name: str) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    from kdbench.backends.pytorch.model import build_module

    arch = ARCHS[name]
    module = build_module(arch)
    x = torch.randn(4, arch.input_shape[2], *arch.input_shape[:2])
    with FlopCounterMode(display=False) as forward:
        module(x)
    assert forward.get_total_flops() == 4 * forward_flops(arch)
    with FlopCounterMode(display=False) as step:
        module(x).sum().backward()
    # PyTorch skips the input gradient of the first layer; the formula's
    # "backward = 2 x forward" convention counts it.
    assert step.get_total_flops() == 4 * (train_flops(arch) - _first_layer_flops(arch))


@pytest.mark.jax
@pytest.mark.parametrize("name", ["cnn-small", "mlp-64", "mlp-1200x2"])
def test_close_to_xla_cost_analysis(name: str) -> None:
    """XLA also counts elementwise ops, bias adds and pooling, so it reads a
    little higher; the matmul/conv FLOPs the formula counts dominate.

    Valid padding only: with 'same' padding XLA skips the taps that land in
    the padding, while the formula (like PyTorch's counter) counts them.
    """
    pytest.importorskip("jax")
    from parity_checks import weights

    arch = ARCHS[name]
    b = backend("jax")
    x = np.zeros((8, *arch.input_shape), np.float32)
    cost = b.forward_cost_analysis(b.build(arch, weights(arch)), x)
    assert 1.0 <= cost / (8 * forward_flops(arch)) < 1.1


@pytest.mark.parametrize("name", backend_params())
def test_matmul_probe_runs_a_real_product(name: str) -> None:
    from kdbench.harness.probe import matmul_probe

    b = backend(name)
    out = b.to_numpy(b.matmul_probe(64, "float32")())
    assert out.shape == (64, 64) and np.all(np.isfinite(out)) and out.std() > 1.0
    probe = matmul_probe(b, gpu=False)
    assert probe.n == 1024 and probe.flops_per_s["float32"] > 1e8
