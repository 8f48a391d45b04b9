"""Spec validation: every mistake is one line naming the file, the field and
what is allowed, with exit code 2 and no traceback."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from kdbench.commands import main
from kdbench.errors import KdbenchError
from kdbench.spec import builtin_specs, load_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

VALID = """
name = "ok"
[data]
dataset = "digits"
[teacher]
arch = "mlp-64"
epochs = 2
batch_size = 32
optimizer = { name = "sgd", lr = 0.1, momentum = 0.9 }
[student]
arch = "linear"
epochs = 2
batch_size = 32
optimizer = { name = "adam", lr = 1e-3 }
schedule = { name = "cosine" }
[distill]
method = "soft"
temperature = 4.0
alpha = 0.9
[measure]
seeds = 1
"""


def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def validate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["validate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_builtin_spec_is_valid() -> None:
    assert builtin_specs(), "no built-in specs found"
    for path in builtin_specs().values():
        assert load_spec(str(path)).spec.name


def test_valid_spec_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = validate(capsys, str(write(tmp_path, VALID)))
    assert code == 0 and "ok" in out and err == ""


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'name = "ok"',
            'name = "ok"\ncolour = "blue"',
            r"colour: unknown key; allowed keys here: name, description, data",
        ),
        (
            "[distill]",
            "[distill]\nbeta = 1",
            r"distill\.beta: unknown key; allowed keys here: method, temperature, alpha",
        ),
        (
            'epochs = 2\nbatch_size = 32\noptimizer = { name = "sgd"',
            'epochs = "five"\nbatch_size = 32\noptimizer = { name = "sgd"',
            r"teacher\.epochs: Input should be a valid integer \(got 'five'\)",
        ),
        (
            "alpha = 0.9",
            "alpha = 1.5",
            r"distill\.alpha: Input should be less than or equal to 1 \(got 1\.5\)",
        ),
        (
            "temperature = 4.0",
            "temperature = 0",
            r"distill\.temperature: Input should be greater than 0",
        ),
        (
            'dataset = "digits"',
            'dataset = "imagenet"',
            r"data\.dataset: Input should be 'mnist5k', 'digits', 'mnist', 'fashion-mnist', 'cifar10', 'cifar100' or 'synthetic' \(got 'imagenet'\)",
        ),
        (
            'arch = "linear"',
            'arch = "resnet-9000"',
            r"student\.arch: unknown architecture 'resnet-9000'; allowed: cnn-small, .*mlp-64",
        ),
        (
            'method = "soft"',
            'method = "fitnets"',
            r"distill\.method: Input should be 'none', 'soft', 'hard', .* or 'dkd' \(got 'fitnets'\)",
        ),
        (
            '{ name = "adam", lr = 1e-3 }',
            '{ name = "adam", lr = 1e-3, momentum = 0.9 }',
            r"student\.optimizer: momentum applies to optimizer 'sgd', not 'adam'",
        ),
        (
            '{ name = "adam", lr = 1e-3 }',
            '{ name = "rmsprop", lr = 1e-3 }',
            r"student\.optimizer\.name: Input should be 'sgd' or 'adam'",
        ),
        (
            "seeds = 1",
            "seeds = true",
            r"measure\.seeds: Input should be a valid integer \(got True\)",
        ),
        (
            '[data]\ndataset = "digits"',
            '[data]\ndataset = "digits"\nclasses = 3',
            r"data: classes is for dataset 'synthetic' only",
        ),
        ("[distill]\nmethod", "[distill]\nmethod_x = 1\nmethod", r"distill\.method_x: unknown key"),
        ('name = "ok"\n', "", r"name: required field is missing"),
        (
            'arch = "mlp-64"',
            'layers = [{ type = "dense", units = 10 }]',
            r"teacher\.layers: layer 0 \(dense\): dense needs a flat input, got shape \(8, 8, 1\): add a flatten layer",
        ),
        (
            'arch = "mlp-64"',
            'layers = [{ type = "flatten" }, { type = "dense", units = 7 }]',
            r"teacher\.layers: the last layer gives 7 outputs but the dataset has 10 classes",
        ),
        (
            'arch = "mlp-64"',
            'layers = [{ type = "flatten" }, { type = "dense", unit = 10 }]',
            r"teacher\.layers\[1\]\.unit: unknown key; did you mean 'units'\? allowed keys here: type, units",
        ),
        (
            'arch = "mlp-64"',
            'layers = [{ type = "attention" }]',
            r"teacher\.layers\[0\]\.type: Input tag 'attention' found using 'type' does not match any of the expected tags: 'dense', 'conv2d'",
        ),
        (
            'arch = "mlp-64"',
            'arch = "mlp-64"\nlayers = [{ type = "flatten" }]',
            r"teacher: give exactly one of arch",
        ),
    ],
)
def test_each_mistake_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, expected: str
) -> None:
    assert old in VALID, old
    path = write(tmp_path, VALID.replace(old, new, 1))
    code, out, err = validate(capsys, str(path))
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"kdbench: error: {path}: ")
    assert re.search(expected, lines[0]), lines[0]


def test_toml_syntax_error_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, VALID.replace("[distill]", "[distill"))
    code, _, err = validate(capsys, str(path))
    assert code == 2 and f"{path}: not valid TOML" in err and len(err.strip().splitlines()) == 1


def test_missing_file_and_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = validate(capsys, "no/such/spec.toml")
    assert code == 2 and "spec file no/such/spec.toml does not exist" in err
    code, _, err = validate(capsys, "no-such-spec")
    assert (
        code == 2 and "no spec named 'no-such-spec'; built-in specs: " in err and "mnist5k" in err
    )


def test_validate_checks_every_file_and_reports_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path, VALID, "good.toml")
    bad = write(tmp_path, VALID.replace("alpha = 0.9", "alpha = -1"), "bad.toml")
    code, out, err = validate(capsys, str(bad), str(good))
    assert code == 2 and "good.toml: ok" in out and "bad.toml: distill.alpha" in err


def test_hash_ignores_comments_and_order_but_not_content(tmp_path: Path) -> None:
    base = load_spec(str(write(tmp_path, VALID, "a.toml"))).content_hash
    commented = "# a comment\n" + VALID.replace("[measure]\nseeds = 1", "[measure]\nseeds = 1 # x")
    assert load_spec(str(write(tmp_path, commented, "b.toml"))).content_hash == base
    changed = VALID.replace("alpha = 0.9", "alpha = 0.8")
    assert load_spec(str(write(tmp_path, changed, "c.toml"))).content_hash != base


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    spec = load_spec(str(write(tmp_path, VALID))).spec
    assert spec.teacher.optimizer.resolved() == {
        "name": "sgd",
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 0.0,
        "decay": "all",
    }
    assert spec.student.optimizer.resolved()["eps"] == 1e-8
    assert spec.measure.warmup_steps >= 1 and spec.measure.compile == "default"


def test_default_spec_matches_the_issue() -> None:
    """mnist5k: CNN teacher with 32/64 3x3 convs, pooling and 256 dense; MLP
    student with one hidden layer of at most 64 units."""
    loaded = load_spec("mnist5k")
    teacher, student = loaded.teacher_arch.layers, loaded.student_arch.layers
    convs = [layer for layer in teacher if layer.type == "conv2d"]
    assert [(c.filters, c.kernel) for c in convs] == [(32, 3), (64, 3)]
    assert any(layer.type == "maxpool" for layer in teacher)
    assert [layer.units for layer in teacher if layer.type == "dense"] == [256, 10]
    hidden = [layer.units for layer in student if layer.type == "dense"][:-1]
    assert len(hidden) == 1 and hidden[0] <= 64
    assert loaded.spec.data.dataset == "mnist5k"
    raw = tomllib.loads(loaded.path.read_text())
    assert 0 < raw["distill"]["alpha"] < 1


def test_kdbench_error_is_plain_exception() -> None:
    with pytest.raises(KdbenchError):
        load_spec("definitely-not-a-spec")
