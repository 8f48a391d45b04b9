"""The CIFAR networks of the distillation literature, as neutral layer lists.

Named and shaped as RepDistiller's models/ defines them (resnet.py, wrn.py,
vgg.py; the nets of the CRD and DKD tables): every convolution 3x3 with one
zero of padding per side or a 1x1 projection, convolutions followed by batch
norm carry no bias (VGG's do), stride-2 downsampling inside the first block
of a stage. A test checks every parameter count against a closed form written
from the reference code. Their stage taps (kdbench.methods.taps) are named
stage<k>: the output of the k-th stage, as RepDistiller's feature list gives it.
"""

from __future__ import annotations

from collections.abc import Callable

from kdbench.layers import (
    BatchNorm,
    Conv2D,
    Dense,
    GlobalAvgPool,
    Layer,
    MaxPool,
    ReLU,
    Residual,
)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _conv3(filters: int, stride: int = 1, bias: bool = False) -> Conv2D:
    return Conv2D(filters=filters, kernel=3, stride=stride, padding=1, bias=bias)


def _resnet(depth: int, filters: tuple[int, int, int, int]) -> Callable[..., list[Layer]]:
    """CIFAR ResNet with basic blocks: depth 6n + 2, three stages of n blocks."""
    if (depth - 2) % 6:
        raise ValueError(f"a basic-block ResNet has depth 6n + 2, not {depth}")
    blocks = (depth - 2) // 6

    def build(classes: int, width: float = 1.0) -> list[Layer]:
        scaled = [_scaled(f, width) for f in filters]
        layers: list[Layer] = [_conv3(scaled[0]), BatchNorm(), ReLU()]
        inplanes = scaled[0]
        for stage, planes in enumerate(scaled[1:]):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                shortcut: list[Layer] = []
                if stride != 1 or inplanes != planes:
                    shortcut = [
                        Conv2D(filters=planes, kernel=1, stride=stride, bias=False),
                        BatchNorm(),
                    ]
                body: list[Layer] = [
                    _conv3(planes, stride),
                    BatchNorm(),
                    ReLU(),
                    _conv3(planes),
                    BatchNorm(),
                ]
                layers += [Residual(body=body, shortcut=shortcut), ReLU()]
                inplanes = planes
        return [*layers, GlobalAvgPool(), Dense(units=classes)]

    return build


def _wrn(depth: int, widen: int) -> Callable[..., list[Layer]]:
    """Wide ResNet (pre-activation blocks): depth 6n + 4, widths 16, 16k, 32k, 64k.

    Where a block changes width, its batch norm and ReLU come before the split
    (both the body and the 1x1 shortcut read the activated input); where it
    keeps width, the shortcut is the raw input, as in the reference."""
    if (depth - 4) % 6:
        raise ValueError(f"a wide ResNet has depth 6n + 4, not {depth}")
    blocks = (depth - 4) // 6

    def build(classes: int, width: float = 1.0) -> list[Layer]:
        widths = [_scaled(c, width) for c in (16, 16 * widen, 32 * widen, 64 * widen)]
        layers: list[Layer] = [_conv3(widths[0])]
        inplanes = widths[0]
        for stage, planes in enumerate(widths[1:]):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                tail: list[Layer] = [_conv3(planes, stride), BatchNorm(), ReLU(), _conv3(planes)]
                if inplanes == planes:
                    layers.append(Residual(body=[BatchNorm(), ReLU(), *tail]))
                else:
                    projection = Conv2D(filters=planes, kernel=1, stride=stride, bias=False)
                    layers += [
                        BatchNorm(),
                        ReLU(),
                        Residual(body=tail, shortcut=[projection]),
                    ]
                inplanes = planes
        return [*layers, BatchNorm(), ReLU(), GlobalAvgPool(), Dense(units=classes)]

    return build


_VGG_STAGES = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
}


def _vgg(stages: tuple[tuple[int, ...], ...]) -> Callable[..., list[Layer]]:
    """VGG with batch norm, the CIFAR variant: five conv stages, max-pool after the
    first three (the fourth pool only runs on 64x64 input in the reference, so
    never on CIFAR), global average pooling, one dense layer."""

    def build(classes: int, width: float = 1.0) -> list[Layer]:
        layers: list[Layer] = []
        for stage, channels in enumerate(stages):
            for c in channels:
                layers += [_conv3(_scaled(c, width), bias=True), BatchNorm(), ReLU()]
            if stage < 3:
                layers.append(MaxPool(size=2))
        return [*layers, GlobalAvgPool(), Dense(units=classes)]

    return build


_RESNET_FILTERS = (16, 16, 32, 64)
_RESNET_X4 = (32, 64, 128, 256)

CIFAR_ARCHITECTURES: dict[str, tuple[str, Callable[..., list[Layer]], str]] = {
    **{
        f"resnet{d}": (
            f"CIFAR ResNet-{d}: {(d - 2) // 6} basic blocks per stage, widths 16/32/64",
            _resnet(d, _RESNET_FILTERS),
            "resnet",
        )
        for d in (8, 14, 20, 32, 44, 56, 110)
    },
    "resnet8x4": (
        "ResNet-8 at 4x width: 32 stem, stages 64/128/256",
        _resnet(8, _RESNET_X4),
        "resnet",
    ),
    "resnet32x4": (
        "ResNet-32 at 4x width: 32 stem, stages 64/128/256",
        _resnet(32, _RESNET_X4),
        "resnet",
    ),
    **{
        f"wrn-{d}-{k}": (f"wide ResNet depth {d}, widen {k} (pre-activation)", _wrn(d, k), "wrn")
        for d, k in ((16, 1), (16, 2), (40, 1), (40, 2))
    },
    **{
        name: (
            f"{name.upper()} with batch norm, CIFAR variant (GAP, one dense)",
            _vgg(stages),
            "vgg",
        )
        for name, stages in _VGG_STAGES.items()
    },
}
