"""Framework-neutral network descriptions.

A network is a flat list of layers. Every backend builds the same list into
its own modules, so the three frameworks run one computation. Data is NHWC
and weights use the NHWC-native layouts (conv kernels HWIO, dense kernels
(in, out)); a backend with other native layouts (PyTorch) converts when it
loads weights, never the harness.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Layer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Dense(_Layer):
    type: Literal["dense"] = "dense"
    units: int = Field(gt=0, le=1_000_000)


class Conv2D(_Layer):
    """A 2-D convolution; 'same' padding is only allowed at stride 1.

    At stride 1 and an odd kernel 'same' pads symmetrically in every
    framework; at larger strides TensorFlow pads asymmetrically while
    PyTorch cannot, so the two would compute different things.
    """

    type: Literal["conv2d"] = "conv2d"
    filters: int = Field(gt=0, le=100_000)
    kernel: int = Field(gt=0, le=15)
    stride: int = Field(1, gt=0, le=8)
    padding: Literal["valid", "same"] = "valid"


class MaxPool(_Layer):
    type: Literal["maxpool"] = "maxpool"
    size: int = Field(2, gt=0, le=8)


class Flatten(_Layer):
    type: Literal["flatten"] = "flatten"


class ReLU(_Layer):
    type: Literal["relu"] = "relu"


class Dropout(_Layer):
    type: Literal["dropout"] = "dropout"
    rate: float = Field(gt=0.0, lt=1.0)


Layer = Annotated[
    Union[Dense, Conv2D, MaxPool, Flatten, ReLU, Dropout],  # noqa: UP007 (pydantic needs the union)
    Field(discriminator="type"),
]

PARAMETRIC = (Dense, Conv2D)


@dataclass(frozen=True)
class Architecture:
    """A resolved network: layers plus the shapes they were checked against."""

    name: str
    layers: tuple[Layer, ...]
    input_shape: tuple[int, int, int]
    classes: int

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter names and neutral shapes, in layer order."""
        shapes: dict[str, tuple[int, ...]] = {}
        for index, layer, in_shape, _ in self.walk():
            if isinstance(layer, Dense):
                shapes[f"{index}.kernel"] = (in_shape[-1], layer.units)
                shapes[f"{index}.bias"] = (layer.units,)
            elif isinstance(layer, Conv2D):
                k = layer.kernel
                shapes[f"{index}.kernel"] = (k, k, in_shape[-1], layer.filters)
                shapes[f"{index}.bias"] = (layer.filters,)
        return shapes

    def param_count(self) -> int:
        total = 0
        for shape in self.param_shapes().values():
            count = 1
            for dim in shape:
                count *= dim
            total += count
        return total

    def walk(self) -> list[tuple[int, Layer, tuple[int, ...], tuple[int, ...]]]:
        """Each layer with its input and output shape (per sample)."""
        out: list[tuple[int, Layer, tuple[int, ...], tuple[int, ...]]] = []
        shape: tuple[int, ...] = self.input_shape
        for index, layer in enumerate(self.layers):
            new = output_shape(layer, shape)
            out.append((index, layer, shape, new))
            shape = new
        return out

    def next_is_relu(self, index: int) -> bool:
        return index + 1 < len(self.layers) and isinstance(self.layers[index + 1], ReLU)


def output_shape(layer: Layer, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-sample output shape; raises ValueError where the layer cannot apply."""
    if isinstance(layer, Dense):
        if len(shape) != 1:
            raise ValueError(f"dense needs a flat input, got shape {shape}: add a flatten layer")
        return (layer.units,)
    if isinstance(layer, Conv2D):
        if len(shape) != 3:
            raise ValueError(f"conv2d needs an image input (H, W, C), got shape {shape}")
        if layer.padding == "same" and (layer.stride != 1 or layer.kernel % 2 == 0):
            raise ValueError("conv2d padding 'same' needs stride 1 and an odd kernel")
        h, w, _ = shape
        if layer.padding == "same":
            return (h, w, layer.filters)
        oh = (h - layer.kernel) // layer.stride + 1
        ow = (w - layer.kernel) // layer.stride + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"conv2d kernel {layer.kernel} does not fit input {h}x{w}")
        return (oh, ow, layer.filters)
    if isinstance(layer, MaxPool):
        if len(shape) != 3:
            raise ValueError(f"maxpool needs an image input (H, W, C), got shape {shape}")
        h, w, c = shape
        if h < layer.size or w < layer.size:
            raise ValueError(f"maxpool size {layer.size} does not fit input {h}x{w}")
        return (h // layer.size, w // layer.size, c)
    if isinstance(layer, Flatten):
        size = 1
        for dim in shape:
            size *= dim
        return (size,)
    return shape


def _mlp(*hidden: int, dropout: float = 0.0) -> Callable[[int], list[Layer]]:
    def build(classes: int) -> list[Layer]:
        layers: list[Layer] = [Flatten()]
        for units in hidden:
            layers += [Dense(units=units), ReLU()]
            if dropout:
                layers.append(Dropout(rate=dropout))
        layers.append(Dense(units=classes))
        return layers

    return build


def _cnn_small(classes: int) -> list[Layer]:
    """The default teacher. No dropout: each framework draws its own dropout
    masks, so a teacher with dropout cannot train identically across them."""
    return [
        Conv2D(filters=32, kernel=3),
        ReLU(),
        MaxPool(size=2),
        Conv2D(filters=64, kernel=3),
        ReLU(),
        MaxPool(size=2),
        Flatten(),
        Dense(units=256),
        ReLU(),
        Dense(units=classes),
    ]


def _cnn_tiny(classes: int) -> list[Layer]:
    """A convolutional student whose blocks have cnn-small's spatial sizes
    (13x13 and 5x5 on 28x28 input), so feature methods can pair them."""
    return [
        Conv2D(filters=8, kernel=3),
        ReLU(),
        MaxPool(size=2),
        Conv2D(filters=16, kernel=3),
        ReLU(),
        MaxPool(size=2),
        Flatten(),
        Dense(units=classes),
    ]


def _cnn_mid(classes: int) -> list[Layer]:
    """Between cnn-small and cnn-tiny: a teacher assistant for the chain method."""
    return [
        Conv2D(filters=16, kernel=3),
        ReLU(),
        MaxPool(size=2),
        Conv2D(filters=32, kernel=3),
        ReLU(),
        MaxPool(size=2),
        Flatten(),
        Dense(units=64),
        ReLU(),
        Dense(units=classes),
    ]


ARCHITECTURES: dict[str, tuple[str, Callable[[int], list[Layer]]]] = {
    "cnn-small": (
        "conv3x3(32)-relu-pool2-conv3x3(64)-relu-pool2-dense(256)-relu-dense",
        _cnn_small,
    ),
    "cnn-mid": (
        "conv3x3(16)-relu-pool2-conv3x3(32)-relu-pool2-dense(64)-relu-dense: between the two",
        _cnn_mid,
    ),
    "cnn-tiny": (
        "conv3x3(8)-relu-pool2-conv3x3(16)-relu-pool2-dense: cnn-small's blocks, thinner",
        _cnn_tiny,
    ),
    "mlp-1200x2": (
        "Hinton's MLP teacher: 2x dense(1200)-relu-dropout(0.3)",
        _mlp(1200, 1200, dropout=0.3),
    ),
    "mlp-512x2": ("2x dense(512)-relu, no dropout", _mlp(512, 512)),
    "mlp-64": ("one hidden dense(64)-relu layer", _mlp(64)),
    "mlp-32": ("one hidden dense(32)-relu layer", _mlp(32)),
    "mlp-16": ("one hidden dense(16)-relu layer", _mlp(16)),
    "linear": ("softmax regression: flatten-dense", _mlp()),
}


def resolve(
    name: str | None,
    layers: list[Layer] | None,
    input_shape: tuple[int, int, int],
    classes: int,
) -> Architecture:
    """A named or inline architecture, checked against the data's shapes.

    Raises ValueError naming what is wrong; the spec layer turns it into a
    one-line error with the file and the field.
    """
    if name is not None:
        if name not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {name!r}; allowed: {', '.join(ARCHITECTURES)}")
        built = ARCHITECTURES[name][1](classes)
    elif layers is not None:
        built = list(layers)
        name = "inline"
    else:
        raise ValueError("give a named architecture or a list of layers")
    arch = Architecture(name=name, layers=tuple(built), input_shape=input_shape, classes=classes)
    shape: tuple[int, ...] = input_shape
    for index, layer in enumerate(arch.layers):
        try:
            shape = output_shape(layer, shape)
        except ValueError as exc:
            raise ValueError(f"layer {index} ({layer.type}): {exc}") from None
    if not arch.layers or not isinstance(arch.layers[-1], Dense):
        raise ValueError("the last layer must be a dense layer giving one logit per class")
    if shape != (classes,):
        raise ValueError(
            f"the last layer gives {shape[0]} outputs but the dataset has {classes} classes"
        )
    return arch
