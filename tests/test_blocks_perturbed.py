"""Each batch-norm parity check fails when a framework's own default
convention is used instead of PyTorch's: Keras's eps (1e-3), Keras's default
momentum (0.99 kept, 0.01 of the new batch in PyTorch's terms), the biased
batch variance in the running statistics (Keras's and flax's), and
TensorFlow's 'SAME' padding at stride 2 (pads 0 before, 1 after).

The wrong conventions are given to the backend as a twin architecture (the
oracle keeps the right one) or patched into one backend's code. The same
checks pass unperturbed in tests/test_blocks_parity.py."""

from __future__ import annotations

import dataclasses

import pytest
from blocks_checks import block_nets, check_gradients, check_inference, check_training
from conftest import backend

from kdbench.architectures import Architecture, BatchNorm, Residual
from kdbench.backends.base import is_installed

pytestmark = [
    pytest.mark.torch,
    pytest.mark.skipif(not is_installed("pytorch"), reason="pytorch is not installed"),
]
NET = block_nets()["resnet-block"]


def _bn_twin(arch: Architecture, **changes: float) -> Architecture:
    def swap(layers):
        out = []
        for layer in layers:
            if isinstance(layer, BatchNorm):
                layer = layer.model_copy(update=changes)
            elif isinstance(layer, Residual):
                layer = layer.model_copy(
                    update={"body": swap(layer.body), "shortcut": swap(layer.shortcut)}
                )
            out.append(layer)
        return out

    return dataclasses.replace(arch, layers=tuple(swap(arch.layers)))


def test_keras_eps_fails_inference() -> None:
    with pytest.raises(AssertionError, match="inference logits"):
        check_inference(backend("pytorch"), NET, _bn_twin(NET, eps=1e-3))


def test_keras_momentum_fails_the_running_statistics() -> None:
    with pytest.raises(AssertionError, match="running"):
        check_training(backend("pytorch"), NET, _bn_twin(NET, momentum=0.01))


def test_a_biased_running_variance_fails(monkeypatch) -> None:
    """torch's own BatchNorm can only be unbiased: a module that replaces each
    step's running variance update with the biased one stands in for Keras/flax."""
    import torch

    real = torch.nn.functional.batch_norm

    def biased(
        x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5
    ):
        if training and running_var is not None:
            # Shift the running variance first, so that torch's own update,
            # (1 - m) * r + m * unbiased, lands on (1 - m) * r + m * biased.
            dims = [d for d in range(x.dim()) if d != 1]
            n = x.numel() // x.shape[1]
            with torch.no_grad():
                var = x.float().var(dim=dims, unbiased=False)
                running_var.sub_(momentum * var * (n / (n - 1) - 1) / (1 - momentum))
        return real(x, running_mean, running_var, weight, bias, training, momentum, eps)

    monkeypatch.setattr(torch.nn.functional, "batch_norm", biased)
    with pytest.raises(AssertionError, match="running .*var"):
        check_training(backend("pytorch"), NET)


def test_gradient_check_sees_inference_mode_batch_norm(monkeypatch) -> None:
    """A loss taken with the running statistics (the module left in eval mode)
    is not the training loss."""
    import torch

    def always_eval(self, mode=True):
        for module in self.modules():
            module.training = False
        return self

    monkeypatch.setattr(torch.nn.Module, "train", always_eval)
    with pytest.raises(AssertionError, match="training loss|gradient"):
        check_gradients(backend("pytorch"), NET)
