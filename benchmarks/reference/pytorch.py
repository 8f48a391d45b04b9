"""The distillation step as a PyTorch expert writes it, outside kdbench.

The yardstick of ``benchmarks/reference/ratio.py``: kdbench's PyTorch backend
must run the same step at least as fast (ratio >= 0.97). Nothing here comes
from kdbench's backend; only the shapes and the initial weights come from the
spec, so the two compute the same losses and the ratio tool can check that.

What an expert does, following PyTorch's performance tuning guide:
- native layers (``nn.Conv2d``, ``nn.MaxPool2d``, ``nn.Flatten``, ``nn.Linear``,
  ``nn.BatchNorm2d``, ``nn.ReLU(inplace=True)`` after a layer that makes a new
  tensor, as torchvision's nets have it) in an ``nn.Sequential``; conv nets in
  the channels_last memory format, and the NHWC images loaded the usual way,
  ``torch.from_numpy(x).permute(0, 3, 1, 2)`` (a channels-last view);
- the CIFAR ResNets as torchvision writes its ResNet: a ``BasicBlock`` module
  (conv3x3 without bias, ``BatchNorm2d``, in-place ReLU, conv3x3, ``BatchNorm2d``;
  ``out += identity`` with the identity or a ``downsample`` Sequential of a 1x1
  strided conv and ``BatchNorm2d``; the in-place ReLU after the sum inside the
  block), the head ``nn.AdaptiveAvgPool2d(1)``, ``nn.Flatten()``, ``nn.Linear``;
  batch norm with the spec's eps and momentum (PyTorch's own convention), the
  student in ``train()`` mode (batch statistics, running ones updated by torch),
  the frozen teacher in ``eval()`` mode on its running statistics;
- the batch gathered by tensor indexing on the device, the frozen teacher
  under ``torch.inference_mode()``;
- the loss from ``torch.nn.functional`` (``kl_div`` in log space, batchmean);
- ``optimizer.zero_grad(set_to_none=True)``, and ``torch.optim.Adam`` or
  ``SGD`` (momentum, nesterov, coupled L2 ``weight_decay`` on every parameter
  given, or only on the conv and linear weights) with the implementation
  PyTorch picks by default;
- bf16 as PyTorch's automatic mixed precision guide has it: the forwards under
  ``torch.autocast(device, dtype=torch.bfloat16)`` (convolutions and matmuls in
  bfloat16 on the float32 master weights, which the optimizer updates), the
  softmax and loss on ``logits.float()``; no gradient scaler (bfloat16 has
  float32's exponent range).
The learning rate of each step is the spec's schedule, written into the
param groups (what an ``LRScheduler.step()`` does), so both sides follow the
same schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Reference:
    x: torch.Tensor  # NCHW view with channels-last strides
    y: torch.Tensor
    teacher: nn.Module | None  # None: the phase trains on labels alone
    student: nn.Module
    optimizer: torch.optim.Optimizer
    method: str
    temperature: float
    alpha: float
    bf16: bool = False


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (the CIFAR ResNets' block): two 3x3
    convolutions with batch norm, the shortcut added in place, then the ReLU."""

    def __init__(
        self, conv1: nn.Conv2d, bn1: nn.BatchNorm2d, conv2: nn.Conv2d, bn2: nn.BatchNorm2d,
        downsample: nn.Module | None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = conv1, bn1, conv2, bn2
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class _Loader:
    """The neutral weights as the state_dict of the modules built, name by name;
    strict both ways (every neutral weight used, every parameter and running
    statistic given; torch keeps its own num_batches_tracked)."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights, self.state, self.used = weights, {}, set()

    def _put(self, neutral: str, key: str, value: np.ndarray | None = None) -> None:
        value = self.weights[neutral] if value is None else value
        self.state[key] = torch.from_numpy(np.ascontiguousarray(value))
        self.used.add(neutral)

    def conv(self, neutral: str, path: str, layer: Any, in_shape: tuple[int, ...]) -> nn.Conv2d:
        if layer.kernel == 1 and layer.stride > 1 and in_shape[-1] < 16:
            # oneDNN's strided 1x1 convolution on channels-last input with fewer
            # input channels than its channel block has wrong weight gradients
            # (oneDNN issue 6035); the CIFAR nets at full width never have one.
            raise ValueError("a strided 1x1 conv on < 16 channels: see oneDNN issue 6035")
        self._put(
            f"{neutral}kernel",
            f"{path}weight",
            self.weights[f"{neutral}kernel"].transpose(3, 2, 0, 1),
        )
        if layer.bias:
            self._put(f"{neutral}bias", f"{path}bias")
        return nn.Conv2d(
            in_shape[-1], layer.filters, layer.kernel, layer.stride, layer.pad, bias=layer.bias
        )

    def norm(self, neutral: str, path: str, layer: Any, in_shape: tuple[int, ...]) -> nn.Module:
        for ours, torchs in (("scale", "weight"), ("shift", "bias"), ("mean", "running_mean"),
                             ("var", "running_var")):  # fmt: skip
            self._put(f"{neutral}{ours}", f"{path}{torchs}")
        norm = nn.BatchNorm2d if len(in_shape) == 3 else nn.BatchNorm1d
        return norm(in_shape[-1], eps=layer.eps, momentum=layer.momentum)

    def dense(self, neutral: str, path: str, in_dim: int, units: int, chw: Any) -> nn.Linear:
        kernel = self.weights[f"{neutral}kernel"]  # (in, out)
        if chw is not None:  # nn.Flatten's rows are in (C, H, W) order, the neutral (H, W, C)
            h, w, c = chw
            kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
        self._put(f"{neutral}kernel", f"{path}weight", kernel.T)
        self._put(f"{neutral}bias", f"{path}bias")
        return nn.Linear(in_dim, units)

    def load(self, model: nn.Module) -> nn.Module:
        if self.used != set(self.weights):
            raise ValueError(f"weights not loaded: {sorted(set(self.weights) - self.used)}")
        missing, unexpected = model.load_state_dict(self.state, strict=False)
        if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
            raise ValueError(f"state_dict mismatch: missing {missing}, unexpected {unexpected}")
        return model


def basic_block(
    loader: _Loader, block: Any, index: int, path: str, in_shape: tuple[int, ...]
) -> BasicBlock:
    """A neutral residual block of the CIFAR ResNets (body conv-bn-relu-conv-bn,
    shortcut empty or conv1x1-bn) as a BasicBlock; other blocks are refused."""
    kinds = [layer.type for layer in block.body], [layer.type for layer in block.shortcut]
    if kinds[0] != ["conv2d", "batchnorm", "relu", "conv2d", "batchnorm"] or kinds[1] not in (
        [], ["conv2d", "batchnorm"],
    ):  # fmt: skip
        raise TypeError(f"no native block for residual {kinds}")
    conv1, bn1, _, conv2, bn2 = block.body
    mid = (*in_shape[:-1], conv1.filters)  # a batch norm needs only the channel count
    body, short = f"{index}.body.", f"{index}.shortcut."
    downsample = None
    if block.shortcut:
        conv, norm = block.shortcut
        downsample = nn.Sequential(
            loader.conv(f"{short}0.", f"{path}downsample.0.", conv, in_shape),
            loader.norm(f"{short}1.", f"{path}downsample.1.", norm, mid),
        )
    return BasicBlock(
        loader.conv(f"{body}0.", f"{path}conv1.", conv1, in_shape),
        loader.norm(f"{body}1.", f"{path}bn1.", bn1, mid),
        loader.conv(f"{body}3.", f"{path}conv2.", conv2, mid),
        loader.norm(f"{body}4.", f"{path}bn2.", bn2, mid),
        downsample,
    )


def network(arch: Any, weights: dict[str, np.ndarray]) -> nn.Sequential:
    """Native layers for a neutral architecture, loaded with the neutral weights.

    A residual block and the ReLU after it are one BasicBlock, so module
    positions and neutral indices part after the first block; in a net without
    one they are the same.
    """
    loader = _Loader(weights)
    layers: list[nn.Module] = []
    chw: tuple[int, int, int] | None = None  # the shape before an nn.Flatten of an image
    walk = arch.walk()
    fused = False
    for index, layer, in_shape, _ in walk:
        kind, path, neutral = layer.type, f"{len(layers)}.", f"{index}."
        if fused:  # the ReLU after a residual block: inside the BasicBlock
            fused = False
            continue
        if kind == "conv2d":
            layers.append(loader.conv(neutral, path, layer, in_shape))
        elif kind == "batchnorm":
            layers.append(loader.norm(neutral, path, layer, in_shape))
        elif kind == "residual":
            if index + 1 == len(walk) or walk[index + 1][1].type != "relu":
                raise TypeError("no native block for a residual without a ReLU after it")
            layers.append(basic_block(loader, layer, index, path, in_shape))
            fused = True
        elif kind == "dense":
            layers.append(loader.dense(neutral, path, in_shape[-1], layer.units, chw))
            chw = None
        elif kind == "maxpool":
            layers.append(nn.MaxPool2d(layer.size))
        elif kind == "global_avgpool":
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        elif kind == "flatten":
            layers.append(nn.Flatten())
            chw = tuple(in_shape) if len(in_shape) == 3 else None  # type: ignore[assignment]
        elif kind == "relu":
            fresh = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.BatchNorm1d, nn.BatchNorm2d)
            layers.append(nn.ReLU(inplace=bool(layers) and isinstance(layers[-1], fresh)))
        elif kind == "dropout":
            layers.append(nn.Dropout(layer.rate))
        else:
            raise TypeError(f"no native layer for {layer!r}")
    model = loader.load(nn.Sequential(*layers))
    return model.to(memory_format=torch.channels_last)


def optimizer_for(model: nn.Module, config: dict[str, Any]) -> torch.optim.Optimizer:
    """decay "kernels": the usual two groups, weight decay on the conv and linear
    weights only (biases and batch norm's affine parameters, ndim 1, go without)."""
    params: Any = list(model.parameters())
    if config.get("decay", "all") == "kernels":
        params = [
            {"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
    elif config.get("decay", "all") != "all":
        raise ValueError(f"no reference weight decay {config['decay']!r}")
    if config["name"] == "adam":
        return torch.optim.Adam(
            params,
            lr=0.0,  # set before every step
            betas=(config["beta1"], config["beta2"]),
            eps=config["eps"],
            weight_decay=config["weight_decay"],
        )
    if config["name"] == "sgd":
        return torch.optim.SGD(
            params,
            lr=0.0,  # set before every step
            momentum=config["momentum"],
            nesterov=config["nesterov"],
            weight_decay=config["weight_decay"],
        )
    raise ValueError(f"no reference optimizer {config['name']!r}")


def setup(
    x: np.ndarray,
    y: np.ndarray,
    teacher_arch: Any,
    teacher_weights: dict[str, np.ndarray],
    student_arch: Any,
    student_weights: dict[str, np.ndarray],
    optimizer: dict[str, Any],
    loss: Any,
    *,
    seed: int = 0,
    precision: str = "float32",
) -> Reference:
    """The split, both networks and the optimizer, made once (the process's threads as set).

    teacher_arch None: no frozen teacher (the teacher's own training phase, labels alone).
    """
    if precision not in ("float32", "bf16"):
        raise ValueError(f"no {precision} reference loop")
    torch.manual_seed(seed)
    teacher = None
    if teacher_arch is not None:
        teacher = network(teacher_arch, teacher_weights).eval().requires_grad_(False)
    student = network(student_arch, student_weights).train()
    return Reference(
        x=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(0, 3, 1, 2),
        y=torch.from_numpy(y.astype(np.int64)),
        teacher=teacher,
        student=student,
        optimizer=optimizer_for(student, optimizer),
        method=loss.method,
        temperature=loss.temperature,
        alpha=loss.alpha,
        bf16=precision == "bf16",
    )


def loss_of(
    ref: Reference, logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None
) -> torch.Tensor:
    ce = F.cross_entropy(logits, labels)
    if ref.method == "none":
        return ce
    if teacher is None:
        raise ValueError(f"method {ref.method!r} needs a teacher")
    if ref.method == "soft":
        t = ref.temperature
        kl = F.kl_div(
            F.log_softmax(logits / t, dim=1),
            F.log_softmax(teacher / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return ref.alpha * t * t * kl + (1.0 - ref.alpha) * ce
    if ref.method == "hard":
        return ref.alpha * F.cross_entropy(logits, teacher.argmax(1)) + (1.0 - ref.alpha) * ce
    raise ValueError(f"no reference loss for method {ref.method!r}")


def train(ref: Reference, indices: np.ndarray, lrs: np.ndarray) -> np.ndarray:
    """One step per index row with its learning rate; the per-step losses (float64)."""
    batches = torch.from_numpy(indices.reshape(-1, indices.shape[-1]).astype(np.int64))
    device = ref.x.device.type
    losses = []
    for idx, lr in zip(batches, lrs.tolist(), strict=True):
        xb, yb = ref.x[idx], ref.y[idx]
        teacher_logits = None
        with torch.autocast(device, dtype=torch.bfloat16, enabled=ref.bf16):
            if ref.teacher is not None:
                with torch.inference_mode():
                    teacher_logits = ref.teacher(xb).float()
            logits = ref.student(xb)
        loss = loss_of(ref, logits.float(), yb, teacher_logits)
        ref.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in ref.optimizer.param_groups:
            group["lr"] = lr
        ref.optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses).numpy().astype(np.float64)


@dataclass
class Inference:
    x: torch.Tensor  # NCHW view with channels-last strides
    net: nn.Module  # in eval() mode
    bf16: bool = False


def setup_inference(
    x: np.ndarray, arch: Any, weights: dict[str, np.ndarray], *, precision: str = "float32"
) -> Inference:
    """The split and the network in eval() mode, for timed inference."""
    if precision not in ("float32", "bf16"):
        raise ValueError(f"no {precision} reference loop")
    data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(0, 3, 1, 2)
    net = network(arch, weights).eval().requires_grad_(False)
    return Inference(x=data, net=net, bf16=precision == "bf16")


def infer(ref: Inference, idx: np.ndarray, batches: int) -> np.ndarray:
    """The rows idx through the network, batches times; the last logits (float64).

    As the performance guide has it: ``torch.inference_mode()``, the
    channels-last batch, autocast under bf16."""
    rows = torch.from_numpy(idx.astype(np.int64))
    with (
        torch.inference_mode(),
        torch.autocast(ref.x.device.type, dtype=torch.bfloat16, enabled=ref.bf16),
    ):
        for _ in range(batches):
            logits = ref.net(ref.x[rows])
    return logits.float().numpy().astype(np.float64)
