"""Batch norm, residual blocks, explicit padding and global average pooling
compute the same thing in every backend: inference with running statistics,
training-mode losses and gradients, and 20 SGD steps (parameters and running
statistics) against the float64 oracle (so each backend within 2e-4 of the
others; `python benchmarks/blocks_parity.py` prints them against PyTorch too).

The conventions that differ between frameworks by default (PyTorch's
momentum 0.1 against Keras/flax's 0.9 in the other sense, eps 1e-5 against
Keras's 1e-3, the unbiased running variance) are each shown to fail these
checks in test_blocks_perturbed.py.
"""

from __future__ import annotations

import pytest
from blocks_checks import (
    block_nets,
    check_gradients,
    check_inference,
    check_training,
)
from conftest import backend, backend_params

NETS = block_nets()
ALL = backend_params()


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("name", ALL)
def test_inference_uses_running_statistics(name: str, net: str) -> None:
    check_inference(backend(name), NETS[net])


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("name", ALL)
def test_training_loss_and_gradients(name: str, net: str) -> None:
    check_gradients(backend(name), NETS[net])


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("name", ALL)
def test_twenty_steps_match_the_oracle(name: str, net: str) -> None:
    check_training(backend(name), NETS[net])


@pytest.mark.parametrize("name", ALL)
def test_weight_decay_on_kernels_only(name: str) -> None:
    """optimizer.decay = "kernels": no decay on biases or batch norm (a strong
    decay, so a backend decaying everything is off by far more than the tolerance)."""
    sgd = {"name": "sgd", "momentum": 0.9, "nesterov": False}
    optimizer = {**sgd, "weight_decay": 0.05, "decay": "kernels"}
    check_training(backend(name), NETS["resnet-block"], optimizer=optimizer)
