"""The report's sweep: validation gain over two swept spec keys, per backend."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from scipy import stats
from test_report import ok_record, write_run

from kdbench.report import write_report
from kdbench.report.aggregate import build

TEMPERATURES = (2.0, 4.0)
ALPHAS = (0.5, 0.9)


def val_gain(backend: str, t: float, alpha: float, seed: int) -> float:
    """A known validation gain per grid point and seed (fraction of images)."""
    base = {"pytorch": 0.0, "jax": -0.01}[backend]
    return base + (t - 3.0) * 0.01 + (alpha - 0.7) * 0.05 + 0.01 * (seed - 1)


def sweep_record(backend: str, seed: int, t: float, alpha: float) -> dict:
    record = ok_record(backend, seed, (0.97, 0.90, 0.91))
    gain = val_gain(backend, t, alpha, seed)
    record["label"] = f"distill.temperature={t:g},distill.alpha={alpha:g}"
    record["overrides"] = {"distill.temperature": t, "distill.alpha": alpha}
    record["spec"] = {**record["spec"], "hash": f"{int(t)}{int(alpha * 10)}" * 4}
    record["cell_id"] = f"tiny/{record['label']}/{backend}/seed{seed}"
    record["metrics"].update(scratch_val_acc=0.90, distilled_val_acc=0.90 + gain)
    return record


def sweep_run(folder: Path, alphas: tuple[float, ...] = ALPHAS) -> Path:
    records = [
        sweep_record(backend, seed, t, alpha)
        for backend in ("pytorch", "jax")
        for t in TEMPERATURES
        for alpha in alphas
        for seed in range(3)
    ]
    return write_run(folder, records)


def test_sweep_table_pins_the_validation_gain_and_its_interval(tmp_path: Path) -> None:
    report = build([sweep_run(tmp_path / "run")])
    (section,) = report.sections
    (table,) = [t for t in section.tables if t.name == "sweep"]
    assert "distill.temperature x distill.alpha" in table.title
    tidy = table.tidy.set_index(["backend", "distill.temperature", "distill.alpha"])
    for backend in ("pytorch", "jax"):
        for t in TEMPERATURES:
            for alpha in ALPHAS:
                gains = [100 * val_gain(backend, t, alpha, s) for s in range(3)]
                mean = sum(gains) / 3
                half = stats.t.ppf(0.975, 2) * pd.Series(gains).std() / math.sqrt(3)
                row = tidy.loc[(backend, t, alpha)]
                assert row["seeds"] == 3
                assert math.isclose(row["val_gain_pts"], mean, abs_tol=1e-9)
                assert math.isclose(row["val_gain_ci_high"] - mean, half, rel_tol=1e-9)
                assert math.isclose(row["test_gain_pts"], 1.0, abs_tol=1e-9)
    shown = table.shown.set_index(["backend", "distill.alpha"])
    # pytorch, T=4, alpha=0.9: 1 + 1 = 2 points at the middle seed, +-1 across seeds
    assert shown.loc[("pytorch", "0.9"), "distill.temperature=4"] == "+2.00 ± 2.48"
    assert shown.loc[("jax", "0.5"), "distill.temperature=2"] == "-3.00 ± 2.48"


def test_report_writes_the_heatmap_and_the_csv(tmp_path: Path) -> None:
    out = tmp_path / "report"
    written = write_report([str(sweep_run(tmp_path / "run"))], out, plots=True)
    names = {str(p.relative_to(out)) for p in written}
    heatmaps = [n for n in names if n.endswith("-sweep.png")]
    assert len(heatmaps) == 1
    assert (out / heatmaps[0]).stat().st_size > 5_000
    csv = pd.read_csv(out / "csv" / "sweep.csv")
    assert len(csv) == 2 * len(TEMPERATURES) * len(ALPHAS)
    assert set(csv["x"]) == {"distill.temperature"} and set(csv["y"]) == {"distill.alpha"}
    md = (out / "report.md").read_text()
    assert "Sweep of tiny: validation gain" in md and "not for choosing" in md
    # the heatmap stands for the grid: no figures per grid point
    assert not [n for n in names if n.startswith("plots/") and not n.endswith("-sweep.png")]


def test_one_swept_key_is_not_a_sweep(tmp_path: Path) -> None:
    report = build([sweep_run(tmp_path / "run", alphas=(0.9,))])
    assert not [t for s in report.sections for t in s.tables if t.name == "sweep"]
