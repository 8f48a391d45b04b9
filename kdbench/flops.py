"""FLOPs per step from one analytic formula, the same for every backend.

A multiply-add counts as 2 FLOPs; only dense and convolution layers are
counted (elementwise ops, batch norm, pooling, residual sums and the loss are negligible next to them
and are counted differently by every profiler). The backward pass counts as
twice the forward (gradients with respect to inputs and to weights), the
usual convention, so a training step is 3x the forward.
"""

from __future__ import annotations

from kdbench.architectures import Architecture, Conv2D, Dense


def forward_flops(arch: Architecture) -> int:
    """FLOPs of one sample's forward pass."""
    total = 0
    for leaf in arch.leaves():  # inside residual blocks too
        layer, in_shape = leaf.layer, leaf.in_shape
        if isinstance(layer, Dense):
            total += 2 * in_shape[-1] * layer.units
        elif isinstance(layer, Conv2D):
            oh, ow, cout = leaf.out_shape
            total += 2 * oh * ow * layer.kernel * layer.kernel * in_shape[-1] * cout
    return total


def train_flops(arch: Architecture) -> int:
    """One sample through forward and backward: 3x the forward."""
    return 3 * forward_flops(arch)


def phase_flops_per_step(
    phase: str,
    teacher: Architecture,
    student: Architecture,
    batch_size: int,
    connector_forward: int = 0,
) -> int:
    """FLOPs of one step of a phase: teacher training, scratch student,
    distillation (the frozen teacher's forward plus the student's training,
    and the training of the method's connectors: connector_forward per sample, x3)."""
    per_sample = {
        "teacher": train_flops(teacher),
        "scratch": train_flops(student),
        "distill": forward_flops(teacher) + train_flops(student) + 3 * connector_forward,
    }[phase]
    return per_sample * batch_size
