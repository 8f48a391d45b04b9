"""The PyTorch reference loop (benchmarks/reference/pytorch.py) computes kdbench's step.

A reference that computed a cheaper step would make every ratio a lie, so
the ratio tool checks the losses of each pair, and these tests pin that it
does: same weights, batches and learning rates give the same losses, and a
reference that drifts (its flatten order left unpermuted) does not pass.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference_loops import (
    assert_same_steps,
    kdbench_losses,
    load,
    mnist5k_cell,
    ratio_figures,
    reference_losses,
)

pytest.importorskip("torch", reason="torch is not installed")


@pytest.fixture(scope="module")
def cell():
    return mnist5k_cell()


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


@pytest.mark.parametrize("phase", ["distill", "teacher"])
def test_the_ratio_tool_pairs_pytorch_blocks_and_checks_their_losses(phase: str) -> None:
    figures = ratio_figures("pytorch", phase)
    assert figures["compile_mode"] == "eager"
    assert figures["memory_format"] == "channels_last"
