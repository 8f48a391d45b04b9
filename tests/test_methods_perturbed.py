"""Each method parity check fails when the method is broken on purpose.

Bugs a real implementation could have, applied to the PyTorch backend with
monkeypatch: attention maps left unnormalised, DKD's target class left in the
non-target softmax, FitNet's connector applied transposed, the warm-up factor
ignored, the warm-up applied to the label term too, the connectors left out
of the optimizer, an ensemble averaging logits instead of probabilities,
summing its members' KD losses instead of matching their mean or ignoring its
members' weights, and the offline table taken in training mode. The same checks hold every backend (test_methods_parity.py).
"""

from __future__ import annotations

import pytest
from conftest import backend
from method_checks import (
    CASES,
    assert_trajectories_match,
    check_method_grads,
    check_teacher_table,
    method_trajectory,
    oracle_method_trajectory,
)

from kdbench.backends.base import is_installed

pytestmark = [
    pytest.mark.torch,
    pytest.mark.skipif(not is_installed("pytorch"), reason="pytorch is not installed"),
]


@pytest.fixture
def losses():
    import kdbench.backends.pytorch.losses as module

    return module


def test_checks_pass_unperturbed() -> None:
    for case in ("at", "dkd", "fitnet-square"):
        check_method_grads(backend("pytorch"), CASES[case])


def test_at_without_normalisation_fails(losses, monkeypatch) -> None:
    monkeypatch.setattr(
        losses, "attention_map", lambda f, p: f.abs().pow(p).mean(dim=-1).flatten(1)
    )
    with pytest.raises(AssertionError, match="at loss"):
        check_method_grads(backend("pytorch"), CASES["at"])


def test_dkd_with_the_target_class_in_the_non_target_softmax_fails(losses, monkeypatch) -> None:
    monkeypatch.setattr(losses, "DKD_MASK", 0.0)
    with pytest.raises(AssertionError, match="dkd loss"):
        check_method_grads(backend("pytorch"), CASES["dkd"])


def test_fitnet_connector_transposed_fails(losses, monkeypatch) -> None:
    import torch.nn.functional as F

    def transposed(student, teacher, connectors):
        total = student[0].new_zeros(())
        for k, (fs, ft) in enumerate(zip(student, teacher, strict=True)):
            mapped = F.linear(fs, connectors[f"hint{k}.kernel"], connectors[f"hint{k}.bias"])
            total = total + F.mse_loss(mapped, ft)
        return total

    monkeypatch.setattr(losses, "hint_term", transposed)
    with pytest.raises(AssertionError, match="fitnet-square loss"):
        check_method_grads(backend("pytorch"), CASES["fitnet-square"])


def test_warm_up_ignored_fails(losses, monkeypatch) -> None:
    real = losses.distill_loss
    monkeypatch.setattr(losses, "distill_loss", lambda *a, **k: real(*a, **{**k, "kd_scale": 1.0}))
    import kdbench.backends.pytorch.backend as torch_backend

    monkeypatch.setattr(torch_backend, "distill_loss", losses.distill_loss)
    with pytest.raises(AssertionError, match="dkd loss"):
        check_method_grads(backend("pytorch"), CASES["dkd"], kd_scale=0.5)


def test_warm_up_on_the_label_term_too_fails(losses, monkeypatch) -> None:
    real = losses.distill_loss

    def scaled_all(config, student, labels, *args, kd_scale=1.0, **kwargs):
        return kd_scale * real(config, student, labels, *args, kd_scale=1.0, **kwargs)

    import kdbench.backends.pytorch.backend as torch_backend

    monkeypatch.setattr(torch_backend, "distill_loss", scaled_all)
    with pytest.raises(AssertionError, match="soft loss"):
        check_method_grads(backend("pytorch"), CASES["soft"], kd_scale=0.5)


def test_connectors_left_out_of_the_optimizer_fail(monkeypatch) -> None:
    import kdbench.backends.pytorch.backend as torch_backend

    real = torch_backend.make_optimizer

    def student_only(named, config):  # (neutral name, parameter) pairs; FitNet's are "hint<k>.*"
        return real([(n, p) for n, p in named if not n.startswith("hint")], config)

    monkeypatch.setattr(torch_backend, "make_optimizer", student_only)
    case = CASES["fitnet-conv"]
    with pytest.raises(AssertionError, match=r"fitnet: step 1 loss"):
        assert_trajectories_match(
            method_trajectory(backend("pytorch"), case), oracle_method_trajectory(case), "fitnet"
        )


def test_ensemble_averaging_logits_instead_of_probabilities_fails(losses, monkeypatch) -> None:
    import kdbench.backends.pytorch.backend as torch_backend

    monkeypatch.setattr(
        torch_backend,
        "ensemble_logits",
        lambda members, weights, t: sum(w * m for m, w in zip(members, weights, strict=True)),
    )
    with pytest.raises(AssertionError, match="ensemble loss"):
        check_method_grads(backend("pytorch"), CASES["ensemble"])


def test_ensemble_summing_the_members_kd_losses_fails(losses, monkeypatch) -> None:
    """Sum over members of KL(member || student) instead of KL(mean of members || student)."""
    import torch.nn.functional as F

    import kdbench.backends.pytorch.backend as torch_backend

    seen: dict = {}

    def keep(members, weights, t):
        seen["members"] = members
        return losses.ensemble_logits(members, weights, t)

    def summed(config, student, labels, teacher=None, *args, kd_scale=1.0, **kwargs):
        terms = config.terms()
        total = terms["ce"] * F.cross_entropy(student, labels)
        for member in seen.pop("members"):
            total = total + kd_scale * terms["kd"] * losses.kd_term(
                student, member, config.temperature
            )
        return total

    monkeypatch.setattr(torch_backend, "ensemble_logits", keep)
    monkeypatch.setattr(torch_backend, "distill_loss", summed)
    with pytest.raises(AssertionError, match="ensemble loss"):
        check_method_grads(backend("pytorch"), CASES["ensemble"])


def test_ensemble_ignoring_the_members_weights_fails(losses, monkeypatch) -> None:
    import kdbench.backends.pytorch.backend as torch_backend

    real = losses.ensemble_logits
    monkeypatch.setattr(
        torch_backend,
        "ensemble_logits",
        lambda members, weights, t: real(members, [1 / len(members)] * len(members), t),
    )
    with pytest.raises(AssertionError, match="ensemble loss"):
        check_method_grads(backend("pytorch"), CASES["ensemble"])


def test_offline_table_in_training_mode_fails(monkeypatch) -> None:
    import kdbench.backends.pytorch.backend as torch_backend

    pt = backend("pytorch")
    real = torch_backend.PyTorchBackend.teacher_table

    def in_training_mode(self, model, data, batch_size):
        model.module.eval = lambda: model.module.train()  # the table's eval() does nothing
        try:
            return real(self, model, data, batch_size)
        finally:
            del model.module.eval

    monkeypatch.setattr(torch_backend.PyTorchBackend, "teacher_table", in_training_mode)
    with pytest.raises(AssertionError, match="offline teacher table"):
        check_teacher_table(pt)
