"""Each parity check fails when a backend is broken on purpose.

A check that cannot fail proves nothing. Every perturbation here is a bug a
real backend could have (flatten order, a missing T^2, a transposed kernel,
decoupled weight decay, an off-by-one batch), applied to the PyTorch
backend with monkeypatch; the same checks guard the other backends.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import backend
from parity_checks import (
    GRAD_TOL,
    assert_close,
    assert_trajectories_agree,
    check_forward,
    check_loss,
    parity_architectures,
    run_updates,
    trajectory,
)

torch = pytest.importorskip("torch")
import kdbench.backends.pytorch.backend as torch_backend  # noqa: E402
import kdbench.backends.pytorch.model as torch_model  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from kdbench.backends.pytorch.losses import distill_loss  # noqa: E402

pytestmark = pytest.mark.torch
ARCHS = parity_architectures()


@pytest.fixture
def pt():
    return backend("pytorch")


def test_forward_check_catches_channel_first_flatten(pt, monkeypatch) -> None:
    check_forward(pt, ARCHS["cnn-small"])
    monkeypatch.setattr(torch_model.FlattenNHWC, "forward", lambda self, x: x.flatten(1))
    with pytest.raises(AssertionError, match="logits"):
        check_forward(pt, ARCHS["cnn-small"])


def test_loss_check_catches_missing_temperature_squared(pt, monkeypatch) -> None:
    def no_t2(config, student, labels, teacher=None):
        t = config.temperature
        return (
            distill_loss(config, student, labels, teacher) / (t * t)
            if teacher is not None
            else (distill_loss(config, student, labels, teacher))
        )

    monkeypatch.setattr(torch_backend, "distill_loss", no_t2)
    with pytest.raises(AssertionError, match="soft loss"):
        check_loss(pt, ARCHS["mlp-16"], "soft")


@pytest.mark.filterwarnings("ignore:reduction. .mean. divides")
def test_loss_check_catches_kl_mean_over_classes(pt, monkeypatch) -> None:
    def kl_mean(config, student, labels, teacher=None):
        t = config.temperature
        kl = F.kl_div(
            F.log_softmax(student / t, -1),
            F.log_softmax(teacher / t, -1),
            reduction="mean",
            log_target=True,
        )
        return config.alpha * t * t * kl + (1 - config.alpha) * F.cross_entropy(student, labels)

    monkeypatch.setattr(torch_backend, "distill_loss", kl_mean)
    with pytest.raises(AssertionError, match="soft loss"):
        check_loss(pt, ARCHS["linear"], "soft")


def test_gradient_check_catches_a_transposed_kernel(pt, monkeypatch) -> None:
    arch = ARCHS["conv-same-stride"]
    clean = check_loss(pt, arch, "none")
    original = torch_model.from_torch_layout

    def swapped_hw(name: str, value: np.ndarray) -> np.ndarray:
        if value.ndim == 4:
            return value.transpose(3, 2, 1, 0)  # W, H instead of H, W
        return original(name, value)

    monkeypatch.setattr(torch_model, "from_torch_layout", swapped_hw)
    broken = check_loss(pt, arch, "none")  # the last (dense) layer is still right
    with pytest.raises(AssertionError, match="grad"):
        for param in clean:
            assert_close(broken[param], clean[param], GRAD_TOL, f"grad {param}")


@pytest.mark.parametrize(
    ("optimizer", "swap"),
    [
        (
            "adam",
            lambda params, c: torch.optim.AdamW(
                params,
                lr=0.0,
                betas=(c["beta1"], c["beta2"]),
                eps=c["eps"],
                weight_decay=c["weight_decay"],
            ),
        ),
        (
            "sgd-momentum",
            lambda params, c: torch.optim.SGD(
                params,
                lr=0.0,
                momentum=c["momentum"],
                dampening=0.1,
                weight_decay=c["weight_decay"],
            ),
        ),
    ],
)
def test_update_check_catches_other_optimizer_conventions(pt, monkeypatch, optimizer, swap) -> None:
    monkeypatch.setattr(torch_backend, "make_optimizer", swap)
    with pytest.raises(AssertionError, match="step"):
        run_updates(pt, ARCHS["mlp-16"], optimizer)


def test_trajectory_check_catches_an_off_by_one_batch(pt, monkeypatch) -> None:
    arch = ARCHS["conv-same-stride"]
    clean = trajectory(pt, arch)
    original = torch_backend.PyTorchBackend.train_step

    def shifted(self, state, data, indices, lr):
        return original(self, state, data, (indices + 1) % len(data.y), lr)

    monkeypatch.setattr(torch_backend.PyTorchBackend, "train_step", shifted)
    with pytest.raises(AssertionError, match="step"):
        assert_trajectories_agree(trajectory(pt, arch), clean, "shifted")
