"""Each parity check fails when a backend is broken on purpose.

A check that cannot fail proves nothing. Every perturbation here is a bug a
real backend could have (flatten order, a missing T^2, a transposed kernel,
decoupled weight decay, an off-by-one batch, a learning rate one step late),
applied with monkeypatch. The PyTorch ones break its internals; the ones at
the backend contract (a gradient read back in the wrong layout, shifted
batches, a late or lost learning rate) run on every installed backend, so
a one-framework machine shows that the float64 oracle checks bite too.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import backend, backend_params
from parity_checks import (
    GRAD_TOL,
    TRAJECTORY_SAMPLES,
    TRAJECTORY_STEPS,
    assert_close,
    assert_trajectories_agree,
    assert_trajectory_matches_oracle,
    check_every_grad,
    check_forward,
    check_loss,
    oracle_trajectory,
    parity_architectures,
    run_updates,
    trajectory,
    trajectory_run,
)

from kdbench.backends.base import is_installed

if is_installed("pytorch"):
    import torch
    import torch.nn.functional as F

    import kdbench.backends.pytorch.backend as torch_backend
    import kdbench.backends.pytorch.model as torch_model
    from kdbench.backends.pytorch.losses import distill_loss

ARCHS = parity_architectures()


def needs_torch(test):
    """Marked torch and skipped where PyTorch is not installed."""
    skip = pytest.mark.skipif(not is_installed("pytorch"), reason="pytorch is not installed")
    return skip(pytest.mark.torch(test))


@pytest.fixture
def pt():
    return backend("pytorch")


@needs_torch
def test_forward_check_catches_channel_first_flatten(pt, monkeypatch) -> None:
    check_forward(pt, ARCHS["cnn-small"])
    monkeypatch.setattr(torch_model.FlattenNHWC, "forward", lambda self, x: x.flatten(1))
    with pytest.raises(AssertionError, match="logits"):
        check_forward(pt, ARCHS["cnn-small"])


@needs_torch
def test_loss_check_catches_missing_temperature_squared(pt, monkeypatch) -> None:
    def no_t2(config, student, labels, teacher=None, **kwargs):
        t = config.temperature
        return (
            distill_loss(config, student, labels, teacher, **kwargs) / (t * t)
            if teacher is not None
            else (distill_loss(config, student, labels, teacher, **kwargs))
        )

    monkeypatch.setattr(torch_backend, "distill_loss", no_t2)
    with pytest.raises(AssertionError, match="soft loss"):
        check_loss(pt, ARCHS["mlp-16"], "soft")


@needs_torch
@pytest.mark.filterwarnings("ignore:reduction. .mean. divides")
def test_loss_check_catches_kl_mean_over_classes(pt, monkeypatch) -> None:
    def kl_mean(config, student, labels, teacher=None, **kwargs):
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


@needs_torch
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
    # The float64 backward oracle catches it with no second framework.
    with pytest.raises(AssertionError, match="grad 0.kernel"):
        check_every_grad(pt, arch, "none")


@needs_torch
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


@needs_torch
def test_trajectory_check_catches_an_off_by_one_batch(pt, monkeypatch) -> None:
    arch = ARCHS["conv-same-stride"]
    clean = trajectory(pt, arch)
    original = torch_backend.PyTorchBackend.train_step

    def shifted(self, state, data, indices, lr):
        return original(self, state, data, (indices + 1) % len(data.y), lr)

    monkeypatch.setattr(torch_backend.PyTorchBackend, "train_step", shifted)
    with pytest.raises(AssertionError, match="step"):
        assert_trajectories_agree(trajectory(pt, arch), clean, "shifted")
    with pytest.raises(AssertionError, match="step 0 loss"):
        assert_trajectory_matches_oracle(
            *trajectory_run(pt, arch), *oracle_trajectory(arch), "shifted"
        )


# Bugs at the backend contract, so they break every backend the same way and
# show in a one-framework environment that the float64 oracle checks fail.


@pytest.fixture(params=backend_params())
def any_backend(request):
    return backend(request.param)


def test_oracle_gradient_check_catches_a_gradient_read_back_transposed(
    any_backend, monkeypatch
) -> None:
    """Conv kernel gradients handed back with H and W swapped (a layout bug
    in the read-back): the loss and the last (dense) layer stay right."""
    arch = ARCHS["conv-same-stride"]
    check_every_grad(any_backend, arch, "soft")
    original = type(any_backend).loss_and_grads

    def swapped(self, *args, **kwargs):
        loss, grads = original(self, *args, **kwargs)
        return loss, {k: g.transpose(1, 0, 2, 3) if g.ndim == 4 else g for k, g in grads.items()}

    monkeypatch.setattr(type(any_backend), "loss_and_grads", swapped)
    check_loss(any_backend, arch, "soft")  # the last-layer check cannot see it
    with pytest.raises(AssertionError, match="grad 0.kernel"):
        check_every_grad(any_backend, arch, "soft")


def _perturbed_train_step(monkeypatch, b, change) -> None:
    """train_step with (indices, lr) rewritten by change(step, indices, lr)."""
    original = type(b).train_step
    calls = [0]

    def perturbed(self, state, data, indices, lr):
        indices, lr = change(calls[0] % TRAJECTORY_STEPS, indices, lr)
        calls[0] += 1
        return original(self, state, data, indices, lr)

    monkeypatch.setattr(type(b), "train_step", perturbed)


def _against_oracle(b) -> None:
    arch = ARCHS["conv-same-stride"]
    assert_trajectory_matches_oracle(
        *trajectory_run(b, arch), *oracle_trajectory(arch), f"{b.name} perturbed"
    )


def test_oracle_trajectory_check_passes_unperturbed(any_backend) -> None:
    _against_oracle(any_backend)


def test_oracle_trajectory_check_catches_an_off_by_one_batch(any_backend, monkeypatch) -> None:
    def shift(step, indices, lr):
        return (indices + 1) % TRAJECTORY_SAMPLES, lr

    _perturbed_train_step(monkeypatch, any_backend, shift)
    with pytest.raises(AssertionError, match="step 0 loss"):
        _against_oracle(any_backend)


def test_oracle_trajectory_check_catches_a_learning_rate_one_step_late(
    any_backend, monkeypatch
) -> None:
    """Each step uses the previous step's lr (set after the update instead of
    before): a cosine schedule changes slowly, yet the losses part from step 2."""
    previous: list[float] = []

    def late(step, indices, lr):
        used = previous[-1] if step else lr
        previous.append(lr)
        return indices, used

    _perturbed_train_step(monkeypatch, any_backend, late)
    with pytest.raises(AssertionError, match=r"step [1-9]\d* loss"):
        _against_oracle(any_backend)


def test_oracle_trajectory_check_catches_a_lost_last_update(any_backend, monkeypatch) -> None:
    """The last step's update is lost (its lr is 0): every loss is still
    right, since a step's loss comes before its update; the final weights
    are not."""

    def last(step, indices, lr):
        return indices, 0.0 if step == TRAJECTORY_STEPS - 1 else lr

    _perturbed_train_step(monkeypatch, any_backend, last)
    with pytest.raises(AssertionError, match="weights .* after step"):
        _against_oracle(any_backend)
