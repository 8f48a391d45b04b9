"""The cifar-smoke matrix's pairs (1/8 width, 4 steps per phase, crop and flip
augmentation, SGD with the multistep schedule, best-epoch tracking) build,
train and distil in every installed framework, on small CIFAR-format files
written here. The figures mean nothing; that every cell finishes, with finite
losses and the records the report reads, does.

To keep the suite's time, it runs the ResNet pair (projection shortcuts,
batch norm, augmentation) in every framework; every block kind (the wide
ResNet's pre-activation blocks, VGG's biased convolutions before batch norm)
is held to the oracle in tests/test_blocks_parity.py; the whole matrix (seven pairs in
every framework, the deep ResNets compiling for most of a minute) is
`kdbench run --matrix cifar-smoke --data-dir DIR`, about three minutes per
framework on the 2-core CI machine."""

from __future__ import annotations

import json
import math

import pytest
from conftest import backend_params, run_kdbench
from dataset_files import fake_cifar100

from kdbench.runner.matrix import load_matrix

PAIRS = [
    "cifar100-resnet32x4-resnet8x4",
    "cifar100-wrn-40-2-wrn-16-2",
    "cifar100-vgg13-vgg8",
]


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar")
    fake_cifar100(folder, n=96)
    return folder


def _matrix(tmp_path, pairs: list[str]) -> str:
    """The cifar-smoke matrix restricted to pairs: the same overrides."""
    smoke = load_matrix("cifar-smoke")
    assert set(pairs) <= set(smoke.specs)
    text = smoke.path.read_text()
    start, end = text.index("specs = ["), text.index("]", text.index("specs = [")) + 1
    path = tmp_path / "smoke.toml"
    path.write_text(text[:start] + f"specs = {json.dumps(pairs)}" + text[end:])
    return str(path)


@pytest.mark.parametrize("name", backend_params())
def test_cifar_pairs_run_in_every_framework(name: str, cifar_folder, tmp_path) -> None:
    pairs = PAIRS[:1]
    run = tmp_path / "run"
    done = run_kdbench(
        "run",
        "--matrix",
        _matrix(tmp_path, pairs),
        "--backend",
        name,
        "--data-dir",
        str(cifar_folder),
        "--out",
        str(run),
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert sorted(r["spec"]["name"] for r in records) == sorted(pairs)
    for r in records:
        assert r["status"] == "ok", (r["spec"]["name"], r.get("error"))
        for phase in ("teacher", "scratch", "distill"):
            assert math.isfinite(r["phases"][phase]["loss_step0"])
            assert r["phases"][phase]["steps"] == 4
        assert r["metrics"]["distilled_best_epoch"] == 1  # best_epoch on: one epoch
        assert r["settings"]["teacher_source"] == "per-backend"
