"""Architectures, initial weights, the numpy reference forward and the batch plan."""

from __future__ import annotations

import numpy as np
import pytest
from oracles import network

from kdbench.architectures import ARCHITECTURES, Conv2D, Dense, Flatten, MaxPool, resolve
from kdbench.initial_weights import init_weights
from kdbench.plan import learning_rates, make_plan, rng_for
from kdbench.spec import NetSpec


def test_cnn_small_shapes_and_parameter_count() -> None:
    arch = resolve("cnn-small", None, (28, 28, 1), 10)
    shapes = [out for *_, out in arch.walk()]
    assert shapes[0] == (26, 26, 32) and shapes[2] == (13, 13, 32) and shapes[5] == (5, 5, 64)
    # 3*3*1*32+32 + 3*3*32*64+64 + 1600*256+256 + 256*10+10
    assert arch.param_count() == 320 + 18_496 + 409_856 + 2_570


def test_every_named_architecture_fits_every_image_size() -> None:
    for name in ARCHITECTURES:
        for shape, classes in (((28, 28, 1), 10), ((32, 32, 3), 100)):
            arch = resolve(name, None, shape, classes)
            assert arch.walk()[-1][-1] == (classes,)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([Dense(units=10)], "dense needs a flat input"),
        ([Flatten(), Conv2D(filters=2, kernel=3), Dense(units=10)], "conv2d needs an image input"),
        ([Conv2D(filters=2, kernel=3, stride=2, padding="same")], "'same' needs stride 1"),
        ([MaxPool(size=8), Flatten(), Dense(units=10)], "does not fit input"),
        ([Flatten()], "last layer must be a dense"),
    ],
)
def test_bad_layer_stacks_are_refused(layers, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve(None, layers, (6, 6, 1), 10)


def test_initial_weights_are_deterministic_and_scaled() -> None:
    arch = resolve("mlp-1200x2", None, (28, 28, 1), 10)
    a = init_weights(arch, rng_for(3, "w"))
    b = init_weights(arch, rng_for(3, "w"))
    c = init_weights(arch, rng_for(4, "w"))
    assert set(a) == set(arch.param_shapes())
    for name, shape in arch.param_shapes().items():
        assert a[name].shape == shape and a[name].dtype == np.float32
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["1.kernel"], c["1.kernel"])
    # He normal before a ReLU: std sqrt(2 / fan_in).
    assert a["1.kernel"].std() == pytest.approx(np.sqrt(2 / 784), rel=0.02)
    # Glorot uniform on the logit layer: limit sqrt(6 / (fan_in + fan_out)).
    assert np.abs(a["7.kernel"]).max() <= np.sqrt(6 / (1200 + 10))
    assert all(not a[n].any() for n in a if n.endswith(".bias"))


def _naive_conv(x, k, b, stride, padding):
    kh = k.shape[0]
    if padding == "same":
        x = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kh // 2, kh // 2), (0, 0)))
    n, h, w, _ = x.shape
    oh, ow = (h - kh) // stride + 1, (w - kh) // stride + 1
    out = np.zeros((n, oh, ow, k.shape[3]))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kh, :]
            out[:, i, j, :] = np.tensordot(patch, k, axes=([1, 2, 3], [0, 1, 2]))
    return out + b


@pytest.mark.parametrize(("stride", "padding"), [(1, "valid"), (2, "valid"), (1, "same")])
def test_reference_conv_matches_a_naive_loop(stride: int, padding: str) -> None:
    rng = np.random.default_rng(0)
    x, k, b = rng.normal(size=(2, 7, 7, 3)), rng.normal(size=(3, 3, 3, 4)), rng.normal(size=4)
    np.testing.assert_allclose(
        network.conv2d(x, k, b, stride, padding),
        _naive_conv(x, k, b, stride, padding),
        rtol=1e-12,
    )


def test_reference_maxpool_floors_odd_sizes() -> None:
    x = np.arange(2 * 5 * 5 * 1, dtype=float).reshape(2, 5, 5, 1)
    out = network.maxpool(x, 2)
    assert out.shape == (2, 2, 2, 1)
    assert out[0, 0, 0, 0] == 6 and out[0, 1, 1, 0] == 18


def test_plan_is_deterministic_static_and_drops_the_ragged_batch() -> None:
    a = make_plan(103, 10, 3, rng_for(0, "plan"))
    b = make_plan(103, 10, 3, rng_for(0, "plan"))
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.indices.shape == (3, 10, 10) and a.indices.dtype == np.int32
    for epoch in a.indices:
        flat = epoch.ravel()
        assert len(set(flat.tolist())) == 100 and flat.max() < 103  # no repeats within an epoch
    assert not np.array_equal(a.indices[0], a.indices[1])  # a fresh order every epoch
    with pytest.raises(ValueError, match="larger than the training set"):
        make_plan(5, 10, 1, rng_for(0, "plan"))


def test_random_streams_are_independent_per_purpose() -> None:
    assert rng_for(0, "a").random() != rng_for(0, "b").random()
    assert rng_for(0, "a").random() == rng_for(0, "a").random()


def _net(schedule: dict) -> NetSpec:
    return NetSpec.model_validate(
        {
            "arch": "linear",
            "epochs": 4,
            "batch_size": 10,
            "optimizer": {"name": "sgd", "lr": 0.1},
            "schedule": schedule,
        }
    )


def test_learning_rate_schedules() -> None:
    plan = make_plan(50, 10, 4, rng_for(0, "plan"))  # 5 steps per epoch, 20 steps
    np.testing.assert_allclose(learning_rates(_net({"name": "constant"}), plan), 0.1)
    cosine = learning_rates(_net({"name": "cosine"}), plan)
    assert cosine[0] == pytest.approx(0.1) and cosine[10] == pytest.approx(0.05)
    assert np.all(np.diff(cosine) < 0) and cosine[-1] > 0
    step = learning_rates(_net({"name": "step", "every_epochs": 2, "gamma": 0.5}), plan)
    np.testing.assert_allclose(step, [0.1] * 10 + [0.05] * 10)


def test_multistep_schedule_follows_pytorchs_multisteplr() -> None:
    """RepDistiller's recipe: x0.1 at epochs 150, 180, 210 of 240, as
    torch.optim.lr_scheduler.MultiStepLR steps it once per epoch."""
    net = NetSpec.model_validate(
        {
            "arch": "mlp-16",
            "epochs": 8,
            "batch_size": 10,
            "optimizer": {"name": "sgd", "lr": 0.05},
            "schedule": {"name": "multistep", "milestones": [3, 5, 6]},
        }
    )
    plan = make_plan(20, 10, 8, rng_for(0, "plan"))
    lrs = learning_rates(net, plan)
    per_epoch = lrs.reshape(8, 2)
    assert (per_epoch[:, 0] == per_epoch[:, 1]).all()
    np.testing.assert_allclose(
        per_epoch[:, 0], 0.05 * np.array([1, 1, 1, 0.1, 0.1, 0.01, 0.001, 0.001])
    )


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"name": "multistep"}, "needs milestones"),
        ({"name": "multistep", "milestones": [5, 3]}, "increasing"),
        ({"name": "cosine", "milestones": [3]}, "multistep' only"),
    ],
)
def test_bad_multistep_schedules_are_refused(schedule: dict, message: str) -> None:
    net = {"arch": "mlp-16", "epochs": 8, "batch_size": 10, "optimizer": {"name": "sgd", "lr": 0.1}}
    with pytest.raises(ValueError, match=message):
        NetSpec.model_validate({**net, "schedule": schedule})
