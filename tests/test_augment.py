"""Augmentation planned by the harness, applied on the device by every
backend: the same pixels in all three frameworks, and training on them."""

from __future__ import annotations

import numpy as np
import pytest
from blocks_checks import block_nets, check_augmented_training
from conftest import backend, backend_params, tiny_spec
from oracles.augment import augment_batch

from kdbench.backends.base import Augment
from kdbench.errors import KdbenchError
from kdbench.plan import make_plan, rng_for, with_crops
from kdbench.spec import load_spec

ALL = backend_params()


def test_crops_are_drawn_per_sample_and_step_from_their_own_stream() -> None:
    plan = make_plan(100, 10, 3, rng_for(0, "student-plan"))
    a = with_crops(plan, 4, True, rng_for(0, "student-augment"))
    b = with_crops(plan, 4, True, rng_for(0, "student-augment"))
    np.testing.assert_array_equal(a.indices, plan.indices)  # the batches stay as they were
    np.testing.assert_array_equal(a.crops, b.crops)
    assert a.crops.shape == (3, 10, 10, 3) and a.crops.dtype == np.int32
    assert a.crops[..., :2].min() == 0 and a.crops[..., :2].max() == 8
    assert set(np.unique(a.crops[..., 2])) == {0, 1}
    no_flip = with_crops(plan, 4, False, rng_for(0, "student-augment"))
    assert not no_flip.crops[..., 2].any()


def test_the_oracle_crops_pads_and_mirrors() -> None:
    x = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    aug = Augment(pad=1, flip=True, fill=(-9.0,))
    out = augment_batch(x, aug, np.array([[0, 0, 0], [2, 1, 1]], np.int32))
    assert out[0, 0, 0, 0] == -9.0 and out[0, 1, 1, 0] == x[0, 0, 0, 0]
    # image 1: rows 2..5 and columns 1..4 of the 6x6 padded image (x's rows
    # 1..3 then a padded row, x's columns 0..3), mirrored
    expected = np.full((4, 4), -9.0, np.float32)
    expected[:3] = x[1, 1:4, :, 0]
    np.testing.assert_array_equal(out[1, ..., 0], expected[:, ::-1])


@pytest.mark.parametrize("name", ALL)
def test_augmented_batches_and_training_match_the_oracle(name: str) -> None:
    check_augmented_training(backend(name), block_nets()["vgg-block"])


def test_offline_with_augmentation_and_mirrored_digits_are_refused(tmp_path) -> None:
    spec = tmp_path / "s.toml"
    base = (
        'name = "s"\n[data]\ndataset = "digits"\naugment = AUG\n'
        '[teacher]\narch = "mlp-16"\nepochs = 1\nbatch_size = 8\noptimizer = { name = "sgd", lr = 0.1 }\n'
        '[student]\narch = "mlp-16"\nepochs = 1\nbatch_size = 8\noptimizer = { name = "sgd", lr = 0.1 }\n'
        '[distill]\nmethod = "METHOD"\n'
    )
    spec.write_text(base.replace("AUG", "{ flip = true }").replace("METHOD", "soft"))
    with pytest.raises(KdbenchError, match="augment.flip: a mirrored digit"):
        load_spec(str(spec))
    spec.write_text(base.replace("AUG", "{ crop_padding = 2 }").replace("METHOD", "offline"))
    with pytest.raises(KdbenchError, match="method 'offline' computes the teacher's logits once"):
        load_spec(str(spec))
    spec.write_text(base.replace("AUG", "{ crop_padding = 2 }").replace("METHOD", "soft"))
    assert load_spec(str(spec)).spec.data.augment.crop_padding == 2
    # augment.nets = "teacher": the students train on plain images, so the
    # offline teacher logits are computed on what the student sees: allowed.
    spec.write_text(
        base.replace("AUG", '{ crop_padding = 2, nets = "teacher" }').replace("METHOD", "offline")
    )
    assert load_spec(str(spec)).spec.data.augment.nets == "teacher"
    spec.write_text(base.replace("AUG", '{ crop_padding = 2, nets = "some" }'))
    with pytest.raises(KdbenchError, match="nets"):
        load_spec(str(spec))


def test_teacher_only_augmentation_leaves_the_students_plain(tmp_path) -> None:
    """The teacher's plan carries crops and its training augments; the scratch
    and distilled students' plans carry none; the teacher (and so its cache key)
    is the one an all-nets spec trains; "all" keeps the hashes of before."""
    from kdbench.harness.prepare import prepare_cell
    from kdbench.harness.teacher_cache import teacher_key
    from kdbench.settings import Settings

    loaded = {}
    for name, aug in [
        ("teacher", '{ crop_padding = 2, nets = "teacher" }'),
        ("all", "{ crop_padding = 2 }"),
        ("all-spelt", '{ crop_padding = 2, nets = "all" }'),
    ]:
        path = tmp_path / f"{name}.toml"
        path.write_text(tiny_spec("s", augment=aug))
        loaded[name] = load_spec(str(path))
    only, every = prepare_cell(loaded["teacher"], 0), prepare_cell(loaded["all"], 0)
    assert only.teacher_augment == every.teacher_augment is not None
    assert only.student_augment is None and every.student_augment is not None
    assert only.teacher_plan.crops is not None and only.student_plan.crops is None
    np.testing.assert_array_equal(only.teacher_plan.crops, every.teacher_plan.crops)
    np.testing.assert_array_equal(only.student_plan.indices, every.student_plan.indices)
    keys = {teacher_key(loaded[n], "jax", 0, Settings()) for n in loaded}
    assert len(keys) == 1
    assert loaded["all"].content_hash == loaded["all-spelt"].content_hash
    assert loaded["teacher"].content_hash != loaded["all"].content_hash


def test_a_teacher_only_augmented_cell_runs_end_to_end(tmp_path) -> None:
    """The stub backend refuses crops without an Augment and the reverse, so the
    cell runs only if the teacher trains augmented and both students plain."""
    from test_run_store import run_stub

    spec = tmp_path / "s.toml"
    for nets in ("teacher", "all"):
        aug = f'{{ crop_padding = 1, nets = "{nets}" }}'
        spec.write_text(tiny_spec("s", epochs=1, batch_size=64, augment=aug))
        out = tmp_path / f"run-{nets}"
        proc = run_stub(spec, out)
        assert proc.returncode == 0, proc.stderr
        assert '"status": "ok"' in (out / "results.jsonl").read_text()
