"""Mutation testing of the modules that decide published numbers (issue 14).

    .venv/bin/python tests/mutation.py              # every module (10 minutes on 2 idle cores)
    .venv/bin/python tests/mutation.py compare plan # some of them
    .venv/bin/python tests/mutation.py --list       # the modules and their test files

mutmut (https://mutmut.readthedocs.io) changes one thing at a time in a
module (an operator, a constant, an argument) and runs the tests that cover
the changed function; a mutant that no test notices "survives". Each module
below is mutated against only its own, framework-free test files, in a
scratch copy under build/mutation/<module>/ laid out the way the wheel
installs the package (backends/ as kdbench/backends, benchmarks/specs and
benchmarks/matrices as kdbench/specs and kdbench/matrices), so the copy
never imports the working tree, and with the float64 oracles as a top-level
package ``oracles`` (the tests import them so, and mutmut names a mutant by
its file's path). The working tree is only read.

Prints killed/total per module and writes build/mutation/report.md with
every survivor: its diff and, for a known equivalent mutant (one no test can
kill because the program computes the same thing), the reason. Exit status
1 when a module kills less than GOAL of its mutants or a survivor is not
explained, 0 otherwise. Not part of CI: it takes long.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "build" / "mutation"
GOAL = 0.90
# Framework tests and end-to-end runs are left out: a mutant must fail fast and in-process.
PYTEST_ARGS = ["-p", "no:cacheprovider", "-m", "not torch and not tensorflow and not jax"]


@dataclass(frozen=True)
class Module:
    """Files mutated together (paths in the scratch copy), and the only test files
    run against them."""

    files: tuple[str, ...]
    tests: tuple[str, ...]


def in_repo(file: str) -> str:
    """Where a file of the scratch copy lives in the repository."""
    return f"tests/{file}" if file.startswith("oracles/") else file


MODULES: dict[str, Module] = {
    "plan": Module(
        ("kdbench/plan.py",),
        ("tests/test_building_blocks.py", "tests/test_published_numbers.py"),
    ),
    "harness": Module(
        ("kdbench/harness/timing.py", "kdbench/harness/cell.py"),
        ("tests/test_published_numbers.py",),
    ),
    "losses": Module(
        ("oracles/losses.py",), ("tests/test_losses.py", "tests/test_published_numbers.py")
    ),
    "split": Module(
        ("kdbench/datasets/split.py",),
        ("tests/test_datasets.py", "tests/test_published_numbers.py"),
    ),
    "weights": Module(
        ("kdbench/initial_weights.py",),
        ("tests/test_building_blocks.py", "tests/test_published_numbers.py"),
    ),
    "flops": Module(
        ("kdbench/flops.py",), ("tests/test_flops.py", "tests/test_published_numbers.py")
    ),
    "compare": Module(
        ("kdbench/compare/stats.py", "kdbench/compare/verdicts.py"),
        ("tests/test_compare.py", "tests/test_published_numbers.py"),
    ),
    "report": Module(
        ("kdbench/report/quantities.py",),
        ("tests/test_report.py", "tests/test_published_numbers.py"),
    ),
}

# Survivors no test can kill, by (file, the first line the mutant adds, as
# mutmut writes it, stripped): why the mutant computes the same thing as the
# original. A code change that moves a line makes its survivor unexplained
# again, to be looked at anew.
_FLOAT64 = "astype(None) and asarray(dtype=None) make float64, as the original asks"
_DEAD_ELSE = (
    "unreachable: a cell key comes from the records of one side at least, so `either` "
    "is never None and the else branch never runs"
)
_ASCII = (
    "/proc/self/status is ASCII: the locale's codec reads it alike, and codec names "
    "are case-insensitive"
)
EQUIVALENT: dict[tuple[str, str], str] = {
    ("kdbench/plan.py", "epoch = steps / plan.steps_per_epoch"): (
        "epoch is only used as epoch // every_epochs, and floor((s / a) / b) equals "
        "(s // a) // b for positive integers: the same exponent, as a float"
    ),
    (
        "kdbench/harness/cell.py",
        "return predict_all(cell, model, split, n, batch)[0].argmax(axis=+1)",
    ): ("logits are (samples, classes): axis 1 is the last axis"),
    ("kdbench/harness/timing.py", 'with open("/proc/self/status", encoding=None) as status:'): (
        _ASCII
    ),
    ("kdbench/harness/timing.py", 'with open("/proc/self/status", ) as status:'): _ASCII,
    ("kdbench/harness/timing.py", 'with open("/proc/self/status", encoding="ASCII") as status:'): (
        _ASCII
    ),
    ("kdbench/harness/cell.py", 'val_preds = ""'): (
        "read only as `val_preds or {}` (both falsy: no validation accuracies), and "
        "replaced whenever there is a validation split"
    ),
    (
        "kdbench/initial_weights.py",
        "receptive = int(np.prod(shape[:-2])) if (len(shape) == 4) or True else 1",
    ): ("a dense kernel is 2-D: shape[:-2] is empty and its product is 1, the else value"),
    (
        "kdbench/initial_weights.py",
        "receptive = int(np.prod(shape[:+2])) if len(shape) == 4 else 1",
    ): ("a conv kernel is 4-D (k, k, in, out): its first two axes are all but its last two"),
    (
        "oracles/losses.py",
        "return float(np.mean(np.sum(np.exp(log_t) * (log_t - log_s), axis=+1)))",
    ): (
        "the oracle is defined on (batch, classes) logits (cross_entropy indexes rows by "
        "label): axis 1 is the last axis"
    ),
    ("oracles/losses.py", "pseudo = np.argmax(teacher, axis=+1)"): (
        "teacher logits are (batch, classes): axis 1 is the last axis"
    ),
    ("oracles/losses.py", "pseudo = np.eye(classes)[np.argmax(teacher, axis=+1)]"): (
        "teacher logits are (batch, classes): axis 1 is the last axis"
    ),
    ("kdbench/datasets/split.py", 'order = np.argsort(-(quota - base), kind="STABLE")'): (
        "numpy reads the sort kind case-insensitively"
    ),
    ("kdbench/datasets/split.py", "if train_limit is None or train_limit > train.shape[0]:"): (
        "at train_limit == len(train) the mutant draws every index without replacement "
        "and sorts them: the same sorted train indices (and no later draw uses the stream)"
    ),
    (
        "kdbench/datasets/split.py",
        "return np.sort(rng.choice(train, size=train_limit, replace=None))",
    ): ("numpy takes replace=None as false: the same draw without replacement"),
    ("kdbench/datasets/split.py", "hist = np.zeros((channels, 256), dtype=None)"): (
        "float64 counts are exact below 2**53 pixels: the same statistics"
    ),
    ("kdbench/datasets/split.py", "hist = np.zeros((channels, 256), )"): (
        "float64 counts are exact below 2**53 pixels: the same statistics"
    ),
    (
        "kdbench/datasets/split.py",
        "d = x[indices[i : i + step]].astype(None) / scale - mean",
    ): _FLOAT64,
    (
        "kdbench/datasets/split.py",
        "block = x[indices[i : i + step]].astype(None) / scale",
    ): _FLOAT64,
    ("kdbench/datasets/split.py", 'squares += np.einsum("NHWC,NHWC->C", d, d)'): (
        "einsum's subscripts are names: upper case names the same axes"
    ),
    (
        "kdbench/datasets/split.py",
        "table = ((np.arange(257)[None, :] / scale - mean[:, None]) / std[:, None]).astype(",
    ): ("uint8 pixels index entries 0..255 only: the extra entry is never read"),
    ("kdbench/datasets/split.py", "None"): (
        "the table in float64 instead of float32: it is written into a float32 array, "
        "which rounds the same values the same way"
    ),
    ("kdbench/datasets/split.py", "for i in range(0, indices.shape[0], ):"): (
        "a step of 1 writes every row again from each start: the same values, slower"
    ),
    ("kdbench/datasets/split.py", "wanted = fractions.get(part, 2.0)"): (
        "only the sign of the default matters (wanted > 0): a split without a fraction "
        "must not be empty either way"
    ),
    ("kdbench/datasets/split.py", "y = raw.y.astype(np.int64, copy=None)"): (
        "y is only read: a copy or not gives the same labels"
    ),
    ("kdbench/datasets/split.py", "y = raw.y.astype(np.int64, )"): (
        "y is only read: a copy or not gives the same labels"
    ),
    ("kdbench/datasets/split.py", "y = raw.y.astype(np.int64, copy=True)"): (
        "y is only read: a copy or not gives the same labels"
    ),
    ("kdbench/datasets/split.py", "if raw.x_test is not None or raw.y_test is not None:"): (
        "every source gives both official test arrays or neither"
    ),
    ("kdbench/compare/stats.py", "rng = np.random.default_rng(20240608)"): (
        "another fixed seed: an equally valid bootstrap, as reproducible"
    ),
    (
        "kdbench/compare/stats.py",
        "chunk = max(2, 2_000_000 // x.size)  # bounded memory for long phases",
    ): (
        "chunks only bound memory: below a million samples (every phase) one chunk "
        "holds all resamples either way"
    ),
    (
        "kdbench/compare/stats.py",
        "chunk = max(1, 2000001 // x.size)  # bounded memory for long phases",
    ): (
        "chunks only bound memory: below a million samples (every phase) one chunk "
        "holds all resamples either way"
    ),
    ("kdbench/compare/stats.py", "picked = x[rng.integers(len(x), size=(rows, len(x)))]"): (
        "integers(n) is integers(0, n): the same draws"
    ),
    (
        "kdbench/compare/stats.py",
        "out[start : start + rows] = np.median(picked.reshape(rows, -2), axis=1)",
    ): ("numpy reads any negative size in reshape as 'the rest', like -1"),
    (
        "kdbench/compare/verdicts.py",
        "return None if times is None else np.asarray(times, dtype=None)",
    ): ("the times are Python floats: numpy makes float64 of them anyway"),
    ("kdbench/compare/verdicts.py", "return None if times is None else np.asarray(times, )"): (
        "the times are Python floats: numpy makes float64 of them anyway"
    ),
    (
        "kdbench/compare/verdicts.py",
        "check.verdict = check.seed_verdict = classify(check.ratio, None, th.time)",
    ): ("classify reads `significant` as a truth value: None is false like False"),
    ("kdbench/compare/verdicts.py", "significant = None"): (
        "classify reads `significant` as a truth value: None is false like False"
    ),
    (
        "kdbench/compare/verdicts.py",
        "significant = check.p_value <= th.alpha and candidate_slower == (check.ratio > 1)",
    ): ("differs only for a p-value exactly equal to alpha"),
    (
        "kdbench/compare/verdicts.py",
        "significant = check.p_value < th.alpha and candidate_slower == (check.ratio >= 1)",
    ): (
        "differs only for exactly equal medians (ratio 1.0), which is 'same' for any "
        "time threshold above 0"
    ),
    ("kdbench/compare/verdicts.py", "return SLOWER if ratio >= 1 else FASTER"): (
        "differs only for exactly equal medians (ratio 1.0), which is 'same' for any "
        "time threshold above 0"
    ),
    (
        "kdbench/compare/verdicts.py",
        'cell_id = either.cell_id if (either) or True else "/".join(map(str, key))',
    ): _DEAD_ELSE,
    (
        "kdbench/compare/verdicts.py",
        'cell_id = either.cell_id if either else "/".join(None)',
    ): _DEAD_ELSE,
    (
        "kdbench/compare/verdicts.py",
        'cell_id = either.cell_id if either else "XX/XX".join(map(str, key))',
    ): _DEAD_ELSE,
    (
        "kdbench/compare/verdicts.py",
        'cell_id = either.cell_id if either else "/".join(map(None, key))',
    ): _DEAD_ELSE,
    (
        "kdbench/compare/verdicts.py",
        'cell_id = either.cell_id if either else "/".join(map(str, None))',
    ): _DEAD_ELSE,
    (
        "kdbench/compare/verdicts.py",
        'cell_id = either.cell_id if either else "/".join(map(key))',
    ): _DEAD_ELSE,
    (
        "kdbench/compare/verdicts.py",
        'cell_id = either.cell_id if either else "/".join(map(str, ))',
    ): _DEAD_ELSE,
    (
        "kdbench/compare/verdicts.py",
        "cell.verdict = None  # settled by settle_verdict once every seed is known",
    ): ("any value but 'not comparable' marks the cell compared, and settle_verdict overwrites it"),
    (
        "kdbench/report/quantities.py",
        "v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=None)",
    ): (
        "the finite values are numbers: numpy makes float64 of floats, and the "
        "statistics of ints are the same floats"
    ),
    (
        "kdbench/report/quantities.py",
        "v = np.asarray([x for x in values if x is not None and math.isfinite(x)], )",
    ): (
        "the finite values are numbers: numpy makes float64 of floats, and the "
        "statistics of ints are the same floats"
    ),
    ("kdbench/compare/verdicts.py", "if cand is None or base is not None and base.ok:"): (
        "inside `base is None or cand is None` the two differ only when both sides "
        "miss the cell, which cannot be: its key comes from one of them"
    ),
    (
        "kdbench/compare/verdicts.py",
        'error = (cand.error or "XXXX").splitlines()[0][:200] if cand.error else ""',
    ): ("under `if cand.error` the `or` operand is never evaluated"),
    ("kdbench/compare/verdicts.py", "cell.lost = None"): (
        "None and '' are both false: no regression is listed, and the JSON writes "
        "`lost or None` either way"
    ),
    ("kdbench/report/quantities.py", 'nan = float("NAN")'): "float() reads NaN case-insensitively",
    (
        "kdbench/report/quantities.py",
        'show_header, scale, decimals, _ = SHOW_COLUMNS.get(column, (f"{name} {unit}", 100.0, 2, "XXXX"))',
    ): ("the fourth field (how the show table aggregates) is discarded"),
    ("kdbench/report/quantities.py", 'sd = low = high = float("NAN")'): (
        "float() reads NaN case-insensitively"
    ),
}

# mutmut's exit codes per mutant (mutmut.stats.status_by_exit_code): a test
# failed or errored, or the tests timed out or crashed. Every other code
# (passed, no test ran it, skipped, suspicious) is a survivor.
KILLED = {1, 3, -24, 24, 152, 255, 36, -11, -9}


def copy_tree(dst: Path) -> None:
    """The package as the wheel installs it, the oracles top-level, the tests beside."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "kdbench", dst / "kdbench", ignore=ignore)
    shutil.copytree(REPO / "backends", dst / "kdbench" / "backends", ignore=ignore)
    for name in ("specs", "matrices"):
        shutil.copytree(REPO / "benchmarks" / name, dst / "kdbench" / name, ignore=ignore)
    shutil.copytree(REPO / "tests" / "oracles", dst / "oracles", ignore=ignore)
    shutil.copytree(
        REPO / "tests", dst / "tests", ignore=shutil.ignore_patterns("oracles", "__pycache__")
    )
    shutil.copy2(REPO / "pyproject.toml", dst / "pyproject.toml")


def mutmut_config(module: Module) -> str:
    """A [mutmut] section for setup.cfg (mutmut reads it when pyproject.toml has none)."""

    def lines(values: list[str]) -> str:
        return "".join(f"\n    {v}" for v in values)

    return (
        "[mutmut]\n"
        f"source_paths ={lines(['kdbench', 'oracles'])}\n"
        f"only_mutate ={lines(list(module.files))}\n"
        f"pytest_add_cli_args ={lines(PYTEST_ARGS)}\n"
        f"pytest_add_cli_args_test_selection ={lines(list(module.tests))}\n"
        "use_git_change_detection = false\n"
    )


def mutmut_env() -> dict[str, str]:
    env = dict(os.environ)
    # One thread per worker: the workers already fill the cores.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    env["MPLBACKEND"] = "Agg"
    env.pop("PYTHONPATH", None)
    return env


def mutmut_exe() -> str:
    exe = Path(sys.executable).parent / "mutmut"
    if not exe.exists():
        sys.exit(f"mutation: no mutmut beside {sys.executable}; pip install -e '.[test]'")
    return str(exe)


def run_module(name: str, module: Module, jobs: int) -> Path:
    """Mutate one module in a fresh scratch copy; the copy's folder."""
    dst = WORK / name
    shutil.rmtree(dst, ignore_errors=True)
    copy_tree(dst)
    if "[tool.mutmut]" in (dst / "pyproject.toml").read_text():
        sys.exit("mutation: pyproject.toml has a [tool.mutmut] section, which would win here")
    (dst / "setup.cfg").write_text(mutmut_config(module))
    started = time.perf_counter()
    files = ", ".join(map(in_repo, module.files))
    print(f"== {name}: {files} against {', '.join(module.tests)}", flush=True)
    log = dst / "mutmut.log"
    with open(log, "w") as out:
        proc = subprocess.run(
            [mutmut_exe(), "run", "--max-children", str(jobs)],
            cwd=dst,
            env=mutmut_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        sys.exit(f"mutation: mutmut failed on {name} (see {log}):\n" + "\n".join(tail))
    print(f"   done in {time.perf_counter() - started:.0f} s", flush=True)
    return dst


@dataclass
class Result:
    file: str
    killed: int
    total: int
    survivors: list[tuple[str, str, str | None]]  # mutant, diff, reason if equivalent


def changed_line(diff: str) -> str:
    """The first line the mutant adds, stripped: what EQUIVALENT is keyed by."""
    for line in diff.splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            return line[1:].strip()
    return ""


def results(name: str, module: Module, dst: Path) -> list[Result]:
    out = []
    for file in module.files:
        meta = json.loads((dst / "mutants" / f"{file}.meta").read_text())
        codes: dict[str, int | None] = meta["exit_code_by_key"]
        unchecked = [m for m, code in codes.items() if code is None]
        if unchecked:
            sys.exit(f"mutation: {name}: {len(unchecked)} mutants were not checked")
        survivors = []
        for mutant, code in sorted(codes.items(), key=lambda kv: _order(kv[0])):
            if code in KILLED:
                continue
            show = subprocess.run(
                [mutmut_exe(), "show", mutant],
                cwd=dst,
                env=mutmut_env(),
                capture_output=True,
                text=True,
            )
            diff = show.stdout.strip()
            survivors.append((mutant, diff, EQUIVALENT.get((file, changed_line(diff)))))
        out.append(Result(file, len(codes) - len(survivors), len(codes), survivors))
    return out


def _order(mutant: str) -> tuple[str, int]:
    head, _, number = mutant.rpartition("__mutmut_")
    return head, int(number) if number.isdigit() else 0


def write_report(all_results: dict[str, list[Result]]) -> tuple[str, bool]:
    ok = True
    table = [
        "| module | file | killed | total | score | survivors (equivalent) |",
        "|---" * 6 + "|",
    ]
    details = []
    for name, file_results in all_results.items():
        for r in file_results:
            equivalent = sum(1 for *_, reason in r.survivors if reason)
            score = r.killed / r.total if r.total else 1.0
            unexplained = len(r.survivors) - equivalent
            ok = ok and score >= GOAL and unexplained == 0
            table.append(
                f"| {name} | {in_repo(r.file)} | {r.killed} | {r.total} | {score:.1%} "
                f"| {len(r.survivors)} ({equivalent}) |"
            )
            for mutant, diff, reason in r.survivors:
                why = (
                    f"equivalent: {reason}"
                    if reason
                    else "**not explained: kill it or explain it**"
                )
                details.append(f"### {mutant}\n\n{why}\n\n```diff\n{diff}\n```\n")
    text = (
        "# Mutation testing (tests/mutation.py)\n\n"
        + "\n".join(table)
        + "\n\n## Survivors\n\n"
        + ("\n".join(details) or "None.\n")
    )
    return text, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("modules", nargs="*", help=f"some of: {', '.join(MODULES)} (default: all)")
    parser.add_argument(
        "-j", "--jobs", type=int, default=os.cpu_count() or 1, help="mutants tested at once"
    )
    parser.add_argument("--list", action="store_true", help="list the modules and their tests")
    args = parser.parse_args(argv)
    if args.list:
        for name, module in MODULES.items():
            files = " ".join(map(in_repo, module.files))
            print(f"{name}: {files}\n    tests: {' '.join(module.tests)}")
        return 0
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module {unknown[0]!r}; choose from {', '.join(MODULES)}")
    chosen = args.modules or list(MODULES)
    all_results = {}
    for name in chosen:
        dst = run_module(name, MODULES[name], args.jobs)
        all_results[name] = results(name, MODULES[name], dst)
        for r in all_results[name]:
            print(f"   {in_repo(r.file)}: {r.killed}/{r.total} killed, {len(r.survivors)} survived")
    text, ok = write_report(all_results)
    WORK.mkdir(parents=True, exist_ok=True)
    report = WORK / "report.md"
    report.write_text(text)
    print(f"\n{text.split('## Survivors')[0].strip()}\n\nsurvivors: {report}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
