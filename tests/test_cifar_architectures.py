"""The reference CIFAR nets: parameter counts, shapes, taps and initial weights.

Each count is checked against a closed form written from the reference code
(RepDistiller's models/resnet.py, wrn.py, vgg.py: bias-free convolutions
before batch norm, 1x1 projections where width or stride change, VGG convs
with bias).
"""

from __future__ import annotations

import numpy as np
import pytest

from kdbench.architectures import (
    BatchNorm,
    Conv2D,
    Dense,
    GlobalAvgPool,
    ReLU,
    Residual,
    resolve,
)
from kdbench.cifar_architectures import CIFAR_ARCHITECTURES
from kdbench.initial_weights import init_weights
from kdbench.methods import tap_shape, taps
from kdbench.plan import rng_for

CLASSES = 100


def _bn(c: int) -> int:
    return 2 * c


def resnet_count(depth: int, filters: tuple[int, ...]) -> int:
    n = (depth - 2) // 6
    total = 27 * filters[0] + _bn(filters[0])
    inplanes = filters[0]
    for stage, planes in enumerate(filters[1:]):
        for block in range(n):
            stride = 2 if stage and not block else 1
            total += 9 * inplanes * planes + _bn(planes) + 9 * planes * planes + _bn(planes)
            if stride != 1 or inplanes != planes:
                total += inplanes * planes + _bn(planes)
            inplanes = planes
    return total + filters[3] * CLASSES + CLASSES


def wrn_count(depth: int, k: int) -> int:
    n = (depth - 4) // 6
    widths = (16, 16 * k, 32 * k, 64 * k)
    total = 27 * 16
    inplanes = 16
    for planes in widths[1:]:
        for _ in range(n):
            total += _bn(inplanes) + 9 * inplanes * planes + _bn(planes) + 9 * planes * planes
            if inplanes != planes:
                total += inplanes * planes
            inplanes = planes
    return total + _bn(widths[3]) + widths[3] * CLASSES + CLASSES


def vgg_count(stages: list[list[int]]) -> int:
    total, cin = 0, 3
    for widths in stages:
        for cout in widths:
            total += 9 * cin * cout + cout + _bn(cout)
            cin = cout
    return total + 512 * CLASSES + CLASSES


EXPECTED = {
    **{f"resnet{d}": resnet_count(d, (16, 16, 32, 64)) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": resnet_count(8, (32, 64, 128, 256)),
    "resnet32x4": resnet_count(32, (32, 64, 128, 256)),
    "wrn-16-1": wrn_count(16, 1),
    "wrn-16-2": wrn_count(16, 2),
    "wrn-40-1": wrn_count(40, 1),
    "wrn-40-2": wrn_count(40, 2),
    "vgg8": vgg_count([[64], [128], [256], [512], [512]]),
    "vgg11": vgg_count([[64], [128], [256, 256], [512, 512], [512, 512]]),
    "vgg13": vgg_count([[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]),
}


def test_every_reference_net_is_listed() -> None:
    assert set(CIFAR_ARCHITECTURES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count_matches_the_reference(name: str) -> None:
    arch = resolve(name, None, (32, 32, 3), CLASSES)
    assert arch.param_count() == EXPECTED[name]


def test_resnet_stage_shapes_and_taps() -> None:
    arch = resolve("resnet20", None, (32, 32, 3), 10)
    found = taps(arch)
    assert [tap_shape(arch, found[f"stage{k}"]) for k in (1, 2, 3)] == [
        (32, 32, 16),
        (16, 16, 32),
        (8, 8, 64),
    ]
    assert tap_shape(arch, found["pre_logits"]) == (64,)
    wide = resolve("wrn-40-2", None, (32, 32, 3), 10)
    assert tap_shape(wide, taps(wide)["stage3"]) == (8, 8, 128)
    vgg = resolve("vgg8", None, (32, 32, 3), 10)
    assert [tap_shape(vgg, i) for t, i in taps(vgg).items() if t.startswith("stage")] == [
        (32, 32, 64),
        (16, 16, 128),
        (8, 8, 256),
        (4, 4, 512),  # the last two blocks share 4x4: no fourth pool on CIFAR
    ]


def test_running_statistics_are_state_not_parameters() -> None:
    arch = resolve("resnet8", None, (32, 32, 3), 10)
    params, state = arch.param_shapes(), arch.state_shapes()
    assert "0.kernel" in params and "0.bias" not in params  # bias-free conv before BN
    assert "1.scale" in params and "1.mean" in state and "1.var" in state
    assert "3.body.0.kernel" in params  # the first block's first conv
    assert "5.shortcut.0.kernel" in params  # stage 2's projection
    assert not set(params) & set(state)


def test_reference_initialisers() -> None:
    arch = resolve("resnet56", None, (32, 32, 3), CLASSES)
    w = init_weights(arch, rng_for(0, "init"))
    assert list(w) == list(arch.weight_shapes())
    kernel = w["3.body.3.kernel"]  # 3x3, 16 -> 16: Kaiming normal, fan_out = 9 * 16
    assert kernel.std() == pytest.approx(np.sqrt(2 / (9 * 16)), rel=0.05)
    assert all((w[n] == 1).all() for n in w if n.endswith((".scale", ".var")))
    assert all((w[n] == 0).all() for n in w if n.endswith((".shift", ".mean")))
    dense = [n for n in arch.param_shapes() if n.endswith(".kernel")][-1]
    bound = 1 / np.sqrt(64)  # PyTorch's default Linear init, bias included
    assert np.abs(w[dense]).max() <= bound and w[dense.replace("kernel", "bias")].any()
    vgg = init_weights(resolve("vgg8", None, (32, 32, 3), CLASSES), rng_for(0, "init"))
    assert vgg["19.kernel"].std() == pytest.approx(0.01, rel=0.05)
    assert not vgg["19.bias"].any() and not vgg["0.bias"].any()


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (
            [
                Conv2D(filters=4, kernel=3, stride=2, padding="same"),
                GlobalAvgPool(),
                Dense(units=10),
            ],
            "padding = 1",
        ),
        (
            [
                Residual(body=[Conv2D(filters=4, kernel=3, stride=2, padding=1)]),
                GlobalAvgPool(),
                Dense(units=10),
            ],
            "1x1 convolution",
        ),
        ([BatchNorm(), ReLU(), Dense(units=10)], "dense needs a flat input"),
        ([GlobalAvgPool(), GlobalAvgPool(), Dense(units=10)], "global_avgpool needs an image"),
    ],
)
def test_bad_blocks_are_refused(layers, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve(None, layers, (8, 8, 3), 10)


def test_specs_with_inline_convolutions_keep_their_hash() -> None:
    """Conv2D's later bias field is left out of the hash at its default: the
    quick spec (inline conv layers) hashes as it did before the field existed."""
    from kdbench.spec import load_spec

    assert load_spec("quick").content_hash == "4dcc976d7d81379e"
