"""The neutral layers every backend builds, and the shape rule of each.

A layer list is data (pydantic models, so a spec can give one inline); a
residual block nests two such lists. Padding is explicit: a convolution pads
`padding` zeros on every side (or 'same' at stride 1 with an odd kernel, where
every framework pads k // 2 on both sides), never TensorFlow's asymmetric
'SAME' at stride 2, which pads (0, 1) where PyTorch pads (1, 1).

Batch normalisation follows PyTorch's convention, which the reference CIFAR
code uses: eps 1e-5, running statistics updated as
running = (1 - momentum) * running + momentum * batch with momentum 0.1 and the
unbiased batch variance (n / (n - 1)), the biased one for normalising. Keras
and flax default to momentum 0.99/0.9 in the other sense, eps 1e-3 and the
biased variance; every backend applies this convention instead.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Layer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Dense(_Layer):
    type: Literal["dense"] = "dense"
    units: int = Field(gt=0, le=1_000_000)


class Conv2D(_Layer):
    """A 2-D convolution. padding: 'valid', 'same' (stride 1, odd kernel only)
    or a number of zeros added on every side. bias: false for a convolution
    followed by batch normalisation, as the reference ResNets have it."""

    type: Literal["conv2d"] = "conv2d"
    filters: int = Field(gt=0, le=100_000)
    kernel: int = Field(gt=0, le=15)
    stride: int = Field(1, gt=0, le=8)
    padding: Literal["valid", "same"] | Annotated[int, Field(ge=0, le=8)] = "valid"
    bias: bool = True

    @property
    def pad(self) -> int:
        """Zeros added on each side of both spatial axes."""
        if self.padding == "valid":
            return 0
        if self.padding == "same":
            return self.kernel // 2
        return int(self.padding)


class MaxPool(_Layer):
    type: Literal["maxpool"] = "maxpool"
    size: int = Field(2, gt=0, le=8)


class GlobalAvgPool(_Layer):
    """The mean over the spatial axes: (H, W, C) -> (C,)."""

    type: Literal["global_avgpool"] = "global_avgpool"


class Flatten(_Layer):
    type: Literal["flatten"] = "flatten"


class ReLU(_Layer):
    type: Literal["relu"] = "relu"


class Dropout(_Layer):
    type: Literal["dropout"] = "dropout"
    rate: float = Field(gt=0.0, lt=1.0)


class BatchNorm(_Layer):
    """Batch normalisation over every axis but the channels (PyTorch's convention)."""

    type: Literal["batchnorm"] = "batchnorm"
    eps: float = Field(1e-5, gt=0.0, le=1.0)
    momentum: float = Field(0.1, gt=0.0, le=1.0, description="weight of the new batch")


class Residual(_Layer):
    """body(x) + shortcut(x); an empty shortcut is the identity. The ReLU
    after the sum, where a net has one, is the next layer of the outer list."""

    type: Literal["residual"] = "residual"
    # Tuples, so a net (and a module built from it) can be hashed; a spec's
    # TOML arrays are accepted as they are.
    body: tuple[Layer, ...] = Field(min_length=1, strict=False)
    shortcut: tuple[Layer, ...] = Field((), strict=False)


Layer = Annotated[
    Union[Dense, Conv2D, MaxPool, GlobalAvgPool, Flatten, ReLU, Dropout, BatchNorm, Residual],  # noqa: UP007 (pydantic needs the union)
    Field(discriminator="type"),
]
Residual.model_rebuild()

PARAMETRIC = (Dense, Conv2D, BatchNorm)


def layer_params(layer: Layer, in_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The trainable parameters of one (non-nested) layer, by leaf name."""
    if isinstance(layer, Dense):
        return {"kernel": (in_shape[-1], layer.units), "bias": (layer.units,)}
    if isinstance(layer, Conv2D):
        k = layer.kernel
        shapes = {"kernel": (k, k, in_shape[-1], layer.filters)}
        return shapes | ({"bias": (layer.filters,)} if layer.bias else {})
    if isinstance(layer, BatchNorm):
        return {"scale": (in_shape[-1],), "shift": (in_shape[-1],)}
    return {}


def layer_state(layer: Layer, in_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """What a layer keeps but does not train: batch norm's running statistics."""
    if isinstance(layer, BatchNorm):
        return {"mean": (in_shape[-1],), "var": (in_shape[-1],)}
    return {}


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
            raise ValueError(
                "conv2d padding 'same' needs stride 1 and an odd kernel; give the zeros "
                "per side as a number (padding = 1) instead"
            )
        h, w, _ = shape
        pad = layer.pad
        oh = (h + 2 * pad - layer.kernel) // layer.stride + 1
        ow = (w + 2 * pad - layer.kernel) // layer.stride + 1
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
    if isinstance(layer, GlobalAvgPool):
        if len(shape) != 3:
            raise ValueError(f"global_avgpool needs an image input (H, W, C), got shape {shape}")
        return (shape[-1],)
    if isinstance(layer, Flatten):
        size = 1
        for dim in shape:
            size *= dim
        return (size,)
    if isinstance(layer, Residual):
        body = chain_shape(layer.body, shape, "body")
        short = chain_shape(layer.shortcut, shape, "shortcut")
        if body != short:
            raise ValueError(
                f"residual body gives {body} but its shortcut gives {short}: "
                "give the shortcut a 1x1 convolution with the body's stride and filters"
            )
        return body
    return shape


def chain_shape(
    layers: tuple[Layer, ...] | list[Layer], shape: tuple[int, ...], where: str
) -> tuple[int, ...]:
    for index, layer in enumerate(layers):
        try:
            shape = output_shape(layer, shape)
        except ValueError as exc:
            raise ValueError(f"{where} layer {index} ({layer.type}): {exc}") from None
    return shape
