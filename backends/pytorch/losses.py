"""The distillation losses in torch, in log space (oracle: tests/oracles/methods.py).

KL is summed over classes and averaged over the batch ('batchmean'); torch's
reduction='mean' would also divide by the class count. The loss is a weighted
sum of the method's terms (kdbench.methods); every term but ce is also
multiplied by kd_scale, the harness's warm-up factor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from kdbench.backends.base import LossConfig

DKD_MASK = 1000.0  # mdistiller's: the target logit pushed out of the non-target softmax


def kd_term(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    kl = F.kl_div(
        F.log_softmax(student / t, dim=-1),
        F.log_softmax(teacher / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return (t * t) * kl


def ensemble_logits(
    members: Sequence[torch.Tensor], weights: Sequence[float], t: float
) -> torch.Tensor:
    """T * log(sum_k w_k softmax(t_k / T)), in log space: softened by T, the
    weighted mean of the members' softened outputs (kdbench.methods). Members
    weighted zero drop out (log 0), as in the JAX and TensorFlow backends."""
    logs = [
        F.log_softmax(m / t, dim=-1) + math.log(w)
        for m, w in zip(members, weights, strict=True)
        if w != 0.0
    ]
    return t * torch.logsumexp(torch.stack(logs), dim=0)


def tckd_term(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, t: float
) -> torch.Tensor:
    """KL of the binary (target, rest) split, each side's log(1 - p) as the
    logsumexp of its non-target log-probabilities (no cancellation in 1 - p)."""
    target = F.one_hot(labels, student.shape[-1]).bool()

    def split(logits: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits / t, dim=-1)
        gt = logp.gather(1, labels[:, None])
        rest = torch.logsumexp(logp.masked_fill(target, float("-inf")), dim=-1, keepdim=True)
        return torch.cat([gt, rest], dim=1)

    kl = F.kl_div(split(student), split(teacher), reduction="batchmean", log_target=True)
    return (t * t) * kl


def nckd_term(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, t: float
) -> torch.Tensor:
    mask = F.one_hot(labels, student.shape[-1]).to(student.dtype) * DKD_MASK
    kl = F.kl_div(
        F.log_softmax(student / t - mask, dim=-1),
        F.log_softmax(teacher / t - mask, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return (t * t) * kl


def hint_term(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    connectors: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """FitNet: MSE of connector(student feature) against the teacher's, summed over pairs."""
    total = student[0].new_zeros(())
    for k, (fs, ft) in enumerate(zip(student, teacher, strict=True)):
        mapped = F.linear(fs, connectors[f"hint{k}.kernel"].t(), connectors[f"hint{k}.bias"])
        total = total + F.mse_loss(mapped, ft)
    return total


def attention_map(f: torch.Tensor, p: float) -> torch.Tensor:
    """mean over channels of |f|^p, flattened and L2-normalised per sample (NHWC features)."""
    a = f.abs().pow(p).mean(dim=-1).flatten(1)
    return F.normalize(a, dim=1)


def at_term(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], p: float
) -> torch.Tensor:
    total = student[0].new_zeros(())
    for fs, ft in zip(student, teacher, strict=True):
        total = total + (attention_map(fs, p) - attention_map(ft, p)).pow(2).mean()
    return total


def distill_loss(
    config: LossConfig,
    student: torch.Tensor,
    labels: torch.Tensor,
    teacher: torch.Tensor | None = None,
    student_feats: Sequence[torch.Tensor] = (),
    teacher_feats: Sequence[torch.Tensor] = (),
    connectors: Mapping[str, torch.Tensor] | None = None,
    kd_scale: float = 1.0,
) -> torch.Tensor:
    total: torch.Tensor | None = None
    for term, weight in config.terms().items():
        if term == "ce":
            value = F.cross_entropy(student, labels)
        else:
            if teacher is None:
                raise ValueError(f"method {config.method!r} needs teacher logits")
            if term == "kd":
                value = kd_term(student, teacher, config.temperature)
            elif term == "hard":
                value = F.cross_entropy(student, teacher.argmax(dim=-1))
            elif term == "tckd":
                value = tckd_term(student, teacher, labels, config.temperature)
            elif term == "nckd":
                value = nckd_term(student, teacher, labels, config.temperature)
            elif term == "hint":
                value = hint_term(student_feats, teacher_feats, connectors or {})
            elif term == "at":
                value = at_term(student_feats, teacher_feats, config.at_p)
            else:
                raise ValueError(f"unknown loss term {term!r}")
            weight = weight * kd_scale
        total = weight * value if total is None else total + weight * value
    assert total is not None, "a loss needs at least one term"
    return total
