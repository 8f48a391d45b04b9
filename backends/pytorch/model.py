"""Neutral architecture -> torch modules, and weights in both directions.

PyTorch indexes images NCHW with OIHW conv kernels and (out, in) linear
weights; the neutral layouts are NHWC, HWIO and (in, out). Data stays NHWC in
memory: a batch is viewed as NCHW with channels-last strides (no copy), and
the modules are channels-last too, the memory format PyTorch's performance
guide recommends for convolutions on CPU (oneDNN) and on tensor cores.
On the default spec, contiguous NCHW (what kdbench used before) against
channels-last, alternating, 3 rounds: median distillation step 10.8 -> 5.8 ms,
teacher training step 29.1 -> 17.8 ms, same accuracies to the last digit.
Flatten goes back to NHWC order so the dense layer after it sees features in
the neutral order; on a channels-last tensor that permute is a free view.

Batch norm is torch's own (BatchNorm2d on images, BatchNorm1d on flat
features), whose convention is the neutral one: eps and momentum from the
layer, the biased batch variance for normalising and the unbiased one for the
running variance. A residual block is one module at its top-level index
holding two Sequentials, body and shortcut, so the state_dict names are the
neutral ones with torch's leaf names ('3.body.1.scale' is '3.body.1.weight',
'3.body.1.mean' is '3.body.1.running_mean'). train() and eval() switch batch
norm between batch and running statistics: the backend puts a model in eval
mode for inference and for the frozen teacher, in train mode for the student.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from kdbench.architectures import (
    Architecture,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    Layer,
    MaxPool,
    ReLU,
    Residual,
    output_shape,
)
from kdbench.backends.base import Weights

MEMORY_FORMAT = "channels_last"  # recorded in the environment block


def as_nchw(x_nhwc: torch.Tensor) -> torch.Tensor:
    """An NHWC batch as the NCHW tensor torch's layers take: a channels-last view, no copy."""
    return x_nhwc.permute(0, 3, 1, 2)


class FlattenNHWC(nn.Module):
    """Flatten in (H, W, C) order, the order the neutral weights assume."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        return x.reshape(x.shape[0], -1)


class GlobalAvgPoolNCHW(nn.Module):
    """The mean over H and W: (N, C, H, W) -> (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class PointwiseStridedConv2d(nn.Conv2d):
    """A 1x1 convolution with stride s > 1 on fewer than 16 input channels. On
    the CPU it runs as the 1x1 stride-1 convolution of every s-th row and
    column of the (zero-padded) input: the same numbers, and what oneDNN does
    inside itself ("reduce to unit stride"), done here because oneDNN's own
    version is broken for channels-last input with fewer input channels than
    its channel block (8 with AVX2, 16 with AVX-512): the weight gradient comes
    out wrong at random and the heap gets corrupted (oneDNN issue 6035, open;
    seen here with torch 2.13 on an AVX2 CPU and 4 input channels: 10 of 20
    weight gradients wrong at 2 threads, an abort in free() at 1). The
    reference nets' projection shortcuts (16 or more channels in) and other
    devices keep the strided convolution itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        pad = self.padding
        if isinstance(pad, str):  # 'valid' (a 1x1 'same' at stride > 1 is refused by the spec)
            pad = (0, 0)
        if any(pad):
            x = F.pad(x, (pad[1], pad[1], pad[0], pad[0]))
        sh, sw = self.stride
        return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias)


class ResidualBlock(nn.Module):
    """body(x) + shortcut(x); an empty shortcut Sequential is the identity.
    Its parameters are named "<i>.body.<j>.*" and "<i>.shortcut.<j>.*", the
    neutral prefixes of Architecture.leaves()."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Sequential) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


# Layers whose output is a new tensor that their backward does not read.
# Batch norm's backward reads its input and saved statistics, not its output
# (torchvision's ResNets put an in-place ReLU after it); a residual block ends
# in an addition, whose backward reads nothing.
_FRESH = (
    nn.Conv2d,  # PointwiseStridedConv2d too
    nn.Linear,
    nn.MaxPool2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    GlobalAvgPoolNCHW,
    ResidualBlock,
)


def fresh_output(modules: list[nn.Module]) -> bool:
    """Whether the layer before makes a new tensor that no backward needs: then a
    ReLU may overwrite it (as torchvision's nets do), saving a pass over memory
    and a large allocation. Never after a view or an identity of the input, and
    never as the first layer of a residual branch (the other branch reads that
    input). A tapped output is cloned before an in-place ReLU (Tapped).

    Measured on the default spec's teacher inference (1,000 images): 176 -> 126 ms
    at the median of the published runs, faster in every seed, the same outputs.
    """
    return bool(modules) and isinstance(modules[-1], _FRESH)


def _build_layers(
    layers: list[Layer] | tuple[Layer, ...], shape: tuple[int, ...], nested: bool
) -> list[nn.Module]:
    modules: list[nn.Module] = []
    for layer in layers:
        in_shape = shape
        shape = output_shape(layer, shape)
        if isinstance(layer, Dense):
            modules.append(nn.Linear(in_shape[-1], layer.units))
        elif isinstance(layer, Conv2D):
            pointwise = layer.kernel == 1 and layer.stride > 1 and in_shape[-1] < 16
            conv = PointwiseStridedConv2d if pointwise else nn.Conv2d
            modules.append(
                conv(
                    in_shape[-1],
                    layer.filters,
                    layer.kernel,
                    stride=layer.stride,
                    padding=layer.padding,  # 'valid', 'same' or zeros per side
                    bias=layer.bias,
                )
            )
        elif isinstance(layer, MaxPool):
            modules.append(nn.MaxPool2d(layer.size))
        elif isinstance(layer, GlobalAvgPool):
            modules.append(GlobalAvgPoolNCHW())
        elif isinstance(layer, Flatten):
            modules.append(FlattenNHWC())
        elif isinstance(layer, ReLU):
            modules.append(nn.ReLU(inplace=fresh_output(modules)))
        elif isinstance(layer, BatchNorm):
            norm = nn.BatchNorm2d if len(in_shape) == 3 else nn.BatchNorm1d
            modules.append(norm(in_shape[-1], eps=layer.eps, momentum=layer.momentum))
        elif isinstance(layer, Dropout):
            if nested:
                raise ValueError("dropout inside a residual block is not supported")
            modules.append(nn.Dropout(layer.rate))
        elif isinstance(layer, Residual):
            body = nn.Sequential(*_build_layers(layer.body, in_shape, True))
            shortcut = nn.Sequential(*_build_layers(layer.shortcut, in_shape, True))
            modules.append(ResidualBlock(body, shortcut))
        else:  # pragma: no cover - the spec admits no other layer
            raise TypeError(f"no torch module for layer {layer!r}")
    return modules


def build_module(arch: Architecture) -> nn.Sequential:
    """The net as a Sequential whose index i is the neutral layer i (a residual
    block is one module there, so taps and names keep top-level indices)."""
    return nn.Sequential(*_build_layers(arch.layers, arch.input_shape, False))


class Tapped(nn.Module):
    """The net returning its logits and the outputs of the tapped layers (NHWC
    views of image features, the neutral layout the feature losses read).

    A tapped output that an in-place ReLU would overwrite next is cloned first."""

    def __init__(self, net: nn.Sequential, taps: tuple[int, ...]) -> None:
        super().__init__()
        self.net = net
        self.taps = taps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        found: dict[int, torch.Tensor] = {}
        layers = list(self.net)
        for index, layer in enumerate(layers):
            x = layer(x)
            if index in self.taps:
                after = layers[index + 1] if index + 1 < len(layers) else None
                keep = x.clone() if isinstance(after, nn.ReLU) and after.inplace else x
                found[index] = keep.permute(0, 2, 3, 1) if keep.dim() == 4 else keep
        return x, [found[i] for i in self.taps]


def to_torch_layout(name: str, value: np.ndarray) -> np.ndarray:
    if name.endswith(".kernel"):
        if value.ndim == 4:  # HWIO -> OIHW
            return value.transpose(3, 2, 0, 1)
        return value.T  # (in, out) -> (out, in)
    return value


def from_torch_layout(name: str, value: np.ndarray) -> np.ndarray:
    if name.endswith(".kernel"):
        if value.ndim == 4:  # OIHW -> HWIO
            return value.transpose(2, 3, 1, 0)
        return value.T
    return value


# A neutral leaf name -> the torch state_dict entry of the same module.
_TORCH_KIND = {
    "kernel": "weight",
    "bias": "bias",
    "scale": "weight",
    "shift": "bias",
    "mean": "running_mean",
    "var": "running_var",
}


def torch_name(name: str) -> str:
    """'3.kernel' -> '3.weight', '3.body.4.var' -> '3.body.4.running_var' (the
    Sequential indices and the block's body/shortcut are the neutral prefix)."""
    prefix, kind = name.rsplit(".", 1)
    return f"{prefix}.{_TORCH_KIND.get(kind, kind)}"  # an unknown kind: strict loading names it


def load_weights(module: nn.Module, weights: Weights) -> None:
    """Strict: every neutral name, nothing else. Batch norm's num_batches_tracked
    counter is torch's own (unused with a fixed momentum), kept as it is."""
    state = {
        torch_name(k): torch.from_numpy(np.ascontiguousarray(to_torch_layout(k, v)))
        for k, v in weights.items()
    }
    for key, value in module.state_dict().items():
        if key.endswith(".num_batches_tracked"):
            state.setdefault(key, value)
    module.load_state_dict(state, strict=True)


def read_weights(module: nn.Module, names: list[str]) -> Weights:
    state = module.state_dict()
    return {
        name: np.ascontiguousarray(
            from_torch_layout(name, state[torch_name(name)].detach().cpu().numpy())
        ).astype(np.float32)
        for name in names
    }


def read_grads(module: nn.Module, names: list[str]) -> Weights:
    params = dict(module.named_parameters())
    return {
        name: np.ascontiguousarray(
            from_torch_layout(name, params[torch_name(name)].grad.detach().cpu().numpy())
        )
        for name in names
    }


def neutral_parameters(module: nn.Module, names: list[str]) -> list[tuple[str, nn.Parameter]]:
    """The module's parameters in its own order, each with its neutral name
    (names: arch.param_shapes(), every one of them)."""
    neutral = {torch_name(name): name for name in names}
    named = [(neutral[key], p) for key, p in module.named_parameters()]
    if len(named) != len(neutral):
        raise ValueError(f"the module has {len(named)} parameters for {len(neutral)} names")
    return named


def running_stats(module: nn.Module) -> list[torch.Tensor]:
    """Batch norm's buffers (running mean, variance, batch counter); empty without it."""
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    return [b for m in norms for b in m.buffers(recurse=False)]


@contextlib.contextmanager
def running_stats_kept(module: nn.Module) -> Iterator[None]:
    """Restores the running statistics on exit: a training-mode forward that
    only measures (loss_and_grads) leaves the model as it found it."""
    buffers = running_stats(module)
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in zip(buffers, saved, strict=True):
                b.copy_(value)
