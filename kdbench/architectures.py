"""Framework-neutral network descriptions.

A network is a flat list of layers. Every backend builds the same list into
its own modules, so the three frameworks run one computation. Data is NHWC
and weights use the NHWC-native layouts (conv kernels HWIO, dense kernels
(in, out)); a backend with other native layouts (PyTorch) converts when it
loads weights, never the harness.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kdbench.cifar_architectures import CIFAR_ARCHITECTURES
from kdbench.layers import (
    PARAMETRIC,
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
    layer_params,
    layer_state,
    output_shape,
)

__all__ = [
    "ARCHITECTURES",
    "PARAMETRIC",
    "Architecture",
    "BatchNorm",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "GlobalAvgPool",
    "Layer",
    "Leaf",
    "MaxPool",
    "ReLU",
    "Residual",
    "output_shape",
    "resolve",
]


@dataclass(frozen=True)
class Leaf:
    """One non-nested layer anywhere in the net: its name prefix ("3." at the
    top level, "3.body.0." inside a residual block) and its shapes."""

    prefix: str
    layer: Layer
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


@dataclass(frozen=True)
class Architecture:
    """A resolved network: layers plus the shapes they were checked against.

    init names the initial-weight scheme (kdbench.initial_weights): "he" for
    kdbench's own nets, "resnet", "wrn" or "vgg" for the reference CIFAR nets.
    """

    name: str
    layers: tuple[Layer, ...]
    input_shape: tuple[int, int, int]
    classes: int
    init: str = "he"

    def leaves(self) -> Iterator[Leaf]:
        """Every non-nested layer in order, a residual block's body then its shortcut."""
        yield from _leaves(self.layers, self.input_shape, "")

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Trainable parameter names and neutral shapes, in layer order."""
        return {
            leaf.prefix + kind: shape
            for leaf in self.leaves()
            for kind, shape in layer_params(leaf.layer, leaf.in_shape).items()
        }

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """What the net keeps without training it (batch norm's running mean and
        variance, "3.mean" / "3.var"), in layer order."""
        return {
            leaf.prefix + kind: shape
            for leaf in self.leaves()
            for kind, shape in layer_state(leaf.layer, leaf.in_shape).items()
        }

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Everything a trained net is: its parameters, then its state."""
        return {**self.param_shapes(), **self.state_shapes()}

    def param_count(self) -> int:
        total = 0
        for shape in self.param_shapes().values():
            count = 1
            for dim in shape:
                count *= dim
            total += count
        return total

    def walk(self) -> list[tuple[int, Layer, tuple[int, ...], tuple[int, ...]]]:
        """Each top-level layer with its input and output shape (per sample)."""
        out: list[tuple[int, Layer, tuple[int, ...], tuple[int, ...]]] = []
        shape: tuple[int, ...] = self.input_shape
        for index, layer in enumerate(self.layers):
            new = output_shape(layer, shape)
            out.append((index, layer, shape, new))
            shape = new
        return out

    def next_is_relu(self, index: int) -> bool:
        return index + 1 < len(self.layers) and isinstance(self.layers[index + 1], ReLU)

    @property
    def has_batchnorm(self) -> bool:
        return any(isinstance(leaf.layer, BatchNorm) for leaf in self.leaves())


def _leaves(layers: tuple[Layer, ...] | list[Layer], shape: tuple[int, ...], prefix: str):
    for index, layer in enumerate(layers):
        out = output_shape(layer, shape)
        if isinstance(layer, Residual):
            yield from _leaves(layer.body, shape, f"{prefix}{index}.body.")
            yield from _leaves(layer.shortcut, shape, f"{prefix}{index}.shortcut.")
        else:
            yield Leaf(f"{prefix}{index}.", layer, shape, out)
        shape = out


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


ARCHITECTURES: dict[str, tuple[str, Callable[..., list[Layer]]]] = {
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
    **{name: (text, build) for name, (text, build, _) in CIFAR_ARCHITECTURES.items()},
}
# The initial-weight scheme of each named net (kdbench.initial_weights); "he" if absent.
INIT_SCHEMES = {name: scheme for name, (_, _, scheme) in CIFAR_ARCHITECTURES.items()}


def resolve(
    name: str | None,
    layers: list[Layer] | None,
    input_shape: tuple[int, int, int],
    classes: int,
    width: float = 1.0,
) -> Architecture:
    """A named or inline architecture, checked against the data's shapes.

    width scales a CIFAR net's channels (its name gains "-w<width>").

    Raises ValueError naming what is wrong; the spec layer turns it into a
    one-line error with the file and the field.
    """
    if name is not None:
        if name not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {name!r}; allowed: {', '.join(ARCHITECTURES)}")
        if width != 1.0:
            if name not in CIFAR_ARCHITECTURES:
                raise ValueError(f"width scales the CIFAR nets only, not {name!r}")
            built = ARCHITECTURES[name][1](classes, width)
        else:
            built = ARCHITECTURES[name][1](classes)
    elif layers is not None:
        built = list(layers)
        name = "inline"
    else:
        raise ValueError("give a named architecture or a list of layers")
    base = name
    if width != 1.0:
        name = f"{name}-w{width:g}"
    arch = Architecture(
        name=name,
        layers=tuple(built),
        input_shape=input_shape,
        classes=classes,
        init=INIT_SCHEMES.get(base, "he"),
    )
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
