"""The methods through the harness: spec validation, taps, the extra networks
(ensemble members, the assistant), the offline table, warm-up and FLOPs, on
tiny digits specs in PyTorch (the math of every backend is held to the oracle
in test_methods_parity.py)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from kdbench.architectures import resolve
from kdbench.backends.base import Settings, is_installed
from kdbench.errors import KdbenchError
from kdbench.flops import forward_flops, train_flops
from kdbench.methods import METHODS, taps, warmup_factor
from kdbench.spec import METHODS as SPEC_METHODS
from kdbench.spec import DistillSpec, load_spec

CONV = """[
    {{ type = "conv2d", filters = {f}, kernel = 3, padding = "same" }},
    {{ type = "relu" }},
    {{ type = "maxpool", size = 2 }},
    {{ type = "flatten" }},
    {{ type = "dense", units = 10 }},
]"""
NET = 'layers = {layers}\nepochs = 2\nbatch_size = 32\noptimizer = {{ name = "adam", lr = 3e-3 }}\n'
ASSISTANT = '[assistant]\narch = "mlp-32"\nepochs = 2\nbatch_size = 32\noptimizer = { name = "adam", lr = 3e-3 }\n'
DISTILL = {
    "soft": 'method = "soft"',
    "offline": 'method = "offline"',
    "ensemble": 'method = "ensemble"\nteachers = 2\nteacher_weights = [2.0, 1.0]',
    "assistant": 'method = "assistant"',
    "fitnet": 'method = "fitnet"\npairs = [{ teacher = "conv1", student = "conv1" }]',
    "dkd": 'method = "dkd"\nwarmup_epochs = 4',
}


def write_spec(folder: Path, method: str, distill: str | None = None) -> Path:
    text = (
        f'name = "tiny-{method}"\n[data]\ndataset = "digits"\n'
        + "[teacher]\n"
        + NET.format(layers=CONV.format(f=8))
        + "[student]\n"
        + NET.format(layers=CONV.format(f=4))
        + (ASSISTANT if method == "assistant" else "")
        + f"[distill]\n{distill or DISTILL[method]}\n[measure]\nseeds = 1\nwarmup_steps = 2\n"
    )
    path = folder / f"tiny-{method}.toml"
    path.write_text(text)
    return path


def test_spec_methods_are_the_method_table() -> None:
    assert set(SPEC_METHODS) == set(METHODS)
    assert set(DistillSpec.model_fields["method"].annotation.__args__) == set(METHODS)


def test_specs_written_before_methods_keep_their_hash() -> None:
    """The published runs' hash: cached teachers, baselines and resumes still match."""
    assert load_spec("mnist5k").content_hash == "53251e4895dd155a"


@pytest.mark.parametrize(
    "distill,message",
    [
        ('method = "fitnet"\nalpha = 0.5', "alpha is only for methods"),
        ('method = "soft"\nweights = { ce = 0.1, hint = 3.0 }', "term 'hint' is not part of"),
        ('method = "soft"\nalpha = 0.5\nweights = { ce = 0.1 }', "either alpha or weights"),
        ('method = "fitnet"', "distill.pairs: method 'fitnet' needs at least one pair"),
        (
            'method = "at"\npairs = [{ teacher = "conv1", student = "conv9" }]',
            "distill.pairs[0].student: inline has no tap 'conv9'; its taps are conv1, pre_logits",
        ),
        (
            'method = "at"\npairs = [{ teacher = "pre_logits", student = "conv1" }]',
            "attention transfer needs image features",
        ),
        ('method = "soft"\npairs = [{ teacher = "conv1", student = "conv1" }]', "remove pairs"),
        ('method = "ensemble"', "needs at least 2"),
        ('method = "soft"\nteachers = 2', "only method 'ensemble' takes several"),
        ('method = "ensemble"\nteachers = 2\nteacher_weights = [1.0]', "one weight per"),
        ('method = "assistant"', "needs an [assistant] table"),
        ('method = "dkd"\nweights = { nckd = -1.0 }', "weights.nckd: -1.0 is not between"),
    ],
)
def test_bad_method_specs_are_one_line_errors(tmp_path: Path, distill: str, message: str) -> None:
    path = write_spec(tmp_path, "soft", distill)
    with pytest.raises(KdbenchError) as info:
        load_spec(str(path))
    text = str(info.value)
    assert message in text and "\n" not in text and str(path) in text


def test_an_assistant_table_without_the_method_is_refused(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "soft")
    path.write_text(path.read_text() + ASSISTANT)
    with pytest.raises(KdbenchError, match=r"\[assistant\] is only for"):
        load_spec(str(path))


def test_taps_name_each_block() -> None:
    small = resolve("cnn-small", None, (28, 28, 1), 10)
    assert taps(small) == {"conv1": 2, "conv2": 5, "dense1": 8, "pre_logits": 8}
    mlp = resolve("mlp-512x2", None, (28, 28, 1), 10)
    assert taps(mlp) == {"dense1": 2, "dense2": 4, "pre_logits": 4}


def test_warmup_factor_ramps_from_the_first_epoch() -> None:
    assert [warmup_factor(e, 4) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


needs_torch = pytest.mark.skipif(not is_installed("pytorch"), reason="pytorch is not installed")


@cache
def cell(folder: str, method: str):
    from kdbench.harness.cell import run_cell

    loaded = load_spec(str(write_spec(Path(folder), method)))
    return loaded, run_cell(loaded, "pytorch", 0, Settings(threads=2).resolved())


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("methods"))


@needs_torch
@pytest.mark.torch
def test_offline_distils_from_the_stored_logits_like_soft(folder: str) -> None:
    loaded, offline = cell(folder, "offline")
    _, soft = cell(folder, "soft")
    assert offline.phases["teacher_pass"].wall_s > 0
    assert offline.phases["teacher_pass"].samples == offline.data.train
    # The same teacher, batches and math: the first distillation loss agrees.
    assert offline.phases["distill"].loss_step0 == pytest.approx(
        soft.phases["distill"].loss_step0, rel=1e-5
    )
    student = loaded.student_arch
    assert offline.phases["distill"].flops_per_step == train_flops(student) * 32


@needs_torch
@pytest.mark.torch
def test_ensemble_trains_each_member_and_reports_them(folder: str) -> None:
    loaded, result = cell(folder, "ensemble")
    members = result.metrics.teacher_members_acc
    assert members is not None and len(members) == 2
    assert result.phases["teacher1"].steps == result.phases["teacher"].steps
    # Other initial weights and batches: a different network.
    assert result.phases["teacher1"].loss_step0 != result.phases["teacher"].loss_step0
    t, s = loaded.teacher_arch, loaded.student_arch
    assert result.phases["distill"].flops_per_step == (2 * forward_flops(t) + train_flops(s)) * 32


@needs_torch
@pytest.mark.torch
def test_assistant_chain_reports_every_link(folder: str) -> None:
    loaded, result = cell(folder, "assistant")
    assert result.metrics.assistant_acc is not None and result.metrics.assistant_acc > 0.2
    for link in ("teacher", "assistant", "distill"):
        assert result.phases[link].wall_s > 0
    a, s = loaded.assistant_arch, loaded.student_arch
    assert result.phases["distill"].flops_per_step == (forward_flops(a) + train_flops(s)) * 32


@needs_torch
@pytest.mark.torch
def test_fitnet_connectors_are_counted_apart(folder: str) -> None:
    loaded, result = cell(folder, "fitnet")
    assert result.metrics.connector_params == 4 * 8 + 8
    assert result.metrics.student_params == loaded.student_arch.param_count()
    plain = (forward_flops(loaded.teacher_arch) + train_flops(loaded.student_arch)) * 32
    connector = 3 * 2 * 4 * 8 * 16  # forward + backward, 4x4 positions
    assert result.phases["distill"].flops_per_step == plain + connector * 32
