"""A comparison as a rich table with its rules, or as JSON."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

from kdbench.compare.model import (
    ACCURACIES,
    FASTER,
    FLOOR,
    NOT_COMPARABLE,
    SAME,
    SLOWER,
    TRAINING_PHASES,
    UNCERTAIN,
    Comparison,
    TimeCheck,
    _group_name,
    _pct,
)
from kdbench.compare.stats import BLOCK_STEPS

JSON_FORMAT = 1


def to_json(cmp: Comparison) -> dict[str, Any]:
    cells = []
    for c in cmp.cells:
        cells.append(
            {
                "cell_id": c.cell_id,
                "spec": c.key[0],
                "label": c.key[1],
                "backend": c.key[2],
                "seed": c.key[3],
                "round": c.key[4],
                "verdict": c.verdict,
                "regressions": c.regressions,
                "reason": c.reason or None,
                "forced": c.forced or None,
                "lost": c.lost or None,
                "time": {p: asdict(t) for p, t in c.times.items()},
                "memory": {m.name: asdict(m) for m in c.memory},
                "accuracy_delta_pts": c.accuracy_delta_pts,
                "notes": c.notes,
            }
        )
    groups = [
        {
            "spec": g.key[0],
            "label": g.key[1],
            "backend": g.key[2],
            "seeds": g.seeds,
            "pairs": g.pairs,
            "mean_delta_pts": g.mean_delta_pts,
            "spread_pts": g.spread_pts,
            "regressed": g.regressed,
            "note": g.note,
        }
        for g in cmp.accuracy
    ]
    return {
        "format": JSON_FORMAT,
        "baseline": cmp.baseline,
        "candidate": cmp.candidate,
        "thresholds": asdict(cmp.thresholds),
        "regressed": cmp.regressed,
        "exit_code": cmp.exit_code,
        "counts": cmp.counts,
        "regressions": cmp.regressions,
        "single_seed": cmp.single_seed,
        "cells": cells,
        "accuracy": groups,
        "refused": cmp.refused,
        "warnings": cmp.warnings,
    }


STYLE = {SAME: "green", FASTER: "cyan", SLOWER: "bold red", UNCERTAIN: "yellow"}


def _time_text(check: TimeCheck | None, label: str = "") -> str:
    prefix = f"{label} " if label else ""
    if check is None or check.verdict == NOT_COMPARABLE:
        return prefix + "n/a"
    text = prefix + _pct(check.ratio)
    ci = ""
    if check.ci is not None:
        lo, hi = ((v - 1) * 100 for v in check.ci)
        ci = f" [{lo:+.1f}, {hi:+.1f}]"
    if check.statistic == FLOOR:
        text += f" (median {_pct(check.median_ratio)}{ci})"
    else:
        text += ci
    if check.medians_only:
        text += " (medians)"
    return f"[{STYLE[check.verdict]}]{text} {check.verdict}[/]"


def render(cmp: Comparison, console: Console) -> None:
    th = cmp.thresholds
    table = Table(title=f"kdbench compare {cmp.baseline} -> {cmp.candidate}")
    for column in ("cell", "teacher step", "distill step", "eval batch", "memory"):
        table.add_column(column)
    table.add_column("Δ acc pts\nteacher/scratch/distilled", justify="right")
    table.add_column("verdict")
    table.add_column("notes", overflow="fold")
    for c in cmp.cells:
        if not c.compared:
            table.add_row(c.cell_id, "", "", "", "", "", f"[dim]{NOT_COMPARABLE}[/]", c.reason)
            continue
        memory = ", ".join(
            f"[{'bold red' if m.regressed else 'green'}]{m.name} {_pct(m.ratio)}[/]"
            for m in c.memory
        )
        acc = "/".join("-" if d is None else f"{d:+.2f}" for d in c.accuracy_delta_pts.values())
        verdict = f"[{STYLE[c.verdict]}]{c.verdict}[/]"
        if any(m.regressed for m in c.memory):
            verdict += ", [bold red]more memory[/]"
        table.add_row(
            c.cell_id,
            *(_time_text(c.times.get(p)) for p in TRAINING_PHASES),
            "\n".join(
                _time_text(t, label=p.removeprefix("eval").strip("_"))
                for p, t in c.times.items()
                if p.startswith("eval")
            )
            or "n/a",
            memory or "n/a",
            acc,
            verdict,
            "; ".join(c.notes),
        )
    console.print(table)
    sides = (("baseline", cmp.baseline), ("candidate", cmp.candidate))
    for (side, name), text in zip(sides, cmp.provenance, strict=True):
        if text:
            console.print(f"{side} {name}: {text}", markup=False, highlight=False)

    if cmp.accuracy:
        acc_table = Table(title="accuracy over matched seeds (points, candidate - baseline)")
        for column in ("spec/label/backend", "pairs", *ACCURACIES, "verdict", "note"):
            acc_table.add_column(column)
        for g in cmp.accuracy:
            name = _group_name(g.key)
            deltas = [
                f"{g.mean_delta_pts[n]:+.2f}" + (f" ±{g.spread_pts[n]:.2f}" if g.pairs > 1 else "")
                if n in g.mean_delta_pts
                else "-"
                for n in ACCURACIES
            ]
            verdict = (
                f"[bold red]lower: {', '.join(g.regressed)}[/]" if g.regressed else "[green]ok[/]"
            )
            acc_table.add_row(name, str(g.pairs), *deltas, verdict, g.note)
        console.print(acc_table)

    for line in cmp.refused:
        console.print(f"refused: {line}", markup=False, highlight=False)
    for line in cmp.warnings:
        console.print(f"warning: {line}", markup=False, highlight=False)
    if th.statistic == FLOOR:
        measured = (
            f"the fastest block of {BLOCK_STEPS} consecutive steps (fewer in a short phase; "
            "its median) of each side"
        )
        tested = "the medians of the faster half of those blocks"
    else:
        measured, tested = (
            "the median step of each side",
            f"the medians of {BLOCK_STEPS}-step blocks",
        )
    rules = (
        f"rules: a phase's change is the ratio of {measured}; it is slower/faster only beyond "
        f"±{th.time:.0%} AND significant (Mann-Whitney p < {th.alpha:g} on {tested}) in every "
        f"matched seed (and round); [brackets]: "
        f"{1 - th.alpha:.0%} block-bootstrap CI of the change of the medians;",
        f"eval phases without raw samples (medians) never fail; memory beyond +{th.memory:.0%} and a "
        f"mean accuracy drop beyond {th.accuracy:g} points are judged on the threshold alone.",
    )
    for line in rules:
        console.print(line, markup=False, highlight=False)
    if cmp.single_seed:
        console.print(
            f"1 seed only: {', '.join(cmp.single_seed)}: a timing change there is not checked "
            "across processes, and accuracy is one number, not a mean over seeds "
            "(more seeds, or an A/B run with --rounds, give that check).",
            markup=False,
            highlight=False,
        )
    summary = ", ".join(f"{n} {v}" for v, n in cmp.counts.items())
    console.print(f"{len(cmp.cells)} cells: {summary}", markup=False, highlight=False)
    if cmp.regressions:
        console.print(f"[bold red]REGRESSED[/] ({len(cmp.regressions)}):")
        for line in cmp.regressions:
            console.print(f"  {line}", markup=False, highlight=False)
    elif not cmp.compared:
        console.print("[bold red]nothing compared[/]")
    else:
        console.print("[green]no regression[/]")
