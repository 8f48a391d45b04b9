"""Markdown, CSV and LaTeX renderings of a report.

Each renderer reads only the computed `Report`, so the formats cannot
disagree about a number.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from kdbench import __version__
from kdbench.report.aggregate import Report, Section
from kdbench.report.compile_modes import Comparison
from kdbench.report.plots import Plot

TIDY_TABLES = ("accuracy", "phases", "host", "failures")
COMPARISON_TABLES = ("compile",)  # written only when a report has them
SECTION_NOTE = (
    "Only cells that ran on the same hardware with the same fairness settings share a table."
)


def header_lines(report: Report) -> list[str]:
    """What the report covers, in plain sentences."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    cells = report.frame
    ok = int((cells["status"] == "ok").sum())
    return [
        f"Runs: {', '.join(str(r) for r in report.runs)}.",
        f"{len(cells)} cells, {ok} finished, {len(cells) - ok} did not; "
        f"{len(report.sections)} section(s). {SECTION_NOTE}",
        f"Made by kdbench {__version__} on {stamp}.",
        *report.notes,
        *(
            [
                "Each compile mode is a setting of its own, so its cells have their own section; "
                "the compile-mode table at the end puts the modes side by side."
            ]
            if report.comparisons
            else []
        ),
    ]


def settings_line(section: Section | Comparison) -> str:
    return "; ".join(f"{k}: {v}" for k, v in section.settings_shown.items())


# --- markdown ---------------------------------------------------------------


LEFT = {"spec", "phase", "backend", "status", "error", "cell", "run", "compile mode", "fact"}
LEFT |= {"seeds ok", "compile"}


def transposed(runs_env: pd.DataFrame) -> pd.DataFrame:
    """Runs as columns, facts as rows: long values (commands, folders) read better."""
    table = runs_env.set_index("run").T
    table.index.name = "fact"
    table.columns = [str(c) for c in table.columns]
    return table.reset_index()


def _md_table(frame: pd.DataFrame, text: bool = False) -> str:
    frame = frame.astype(str).map(lambda v: v.replace("|", "\\|").replace("\n", " "))
    align = ["left" if text or c in LEFT else "right" for c in frame.columns]
    return frame.to_markdown(index=False, tablefmt="github", disable_numparse=True, colalign=align)


def markdown(report: Report, plots: list[Plot], out_dir: Path) -> str:
    """One Markdown page; figures are linked as files next to it."""
    lines = ["# kdbench report", ""]
    lines += [f"{line}  " for line in header_lines(report)] + [""]
    for section in [*report.sections, *report.comparisons]:
        lines += [f"## {section.title}", "", f"Settings: {settings_line(section)}.", ""]
        for table in section.tables:
            lines += [f"### {table.title}", ""]
            lines += [_md_table(table.shown), ""] if not table.shown.empty else []
            lines += [f"_{note}_  " for note in table.notes] + [""]
        mine = [p for p in plots if p.section == section.index]
        if mine:
            lines += ["### Figures", ""]
            for plot in mine:
                rel = os.path.relpath(plot.path, out_dir)
                lines += [f"![{plot.spec}: {plot.kind}]({rel})", "", f"_{plot.caption}_", ""]
    lines += ["## Environment", "", "### Runs", "", _md_table(transposed(report.runs_env), True)]
    lines += ["", "### Frameworks", "", _md_table(report.frameworks_env, True), ""]
    return "\n".join(lines)


# --- csv ----------------------------------------------------------------------


def csv_tables(report: Report) -> dict[str, pd.DataFrame]:
    """One tidy table per kind, every section stacked, keys in columns."""
    out: dict[str, pd.DataFrame] = {}
    for name in TIDY_TABLES:
        parts = [t.tidy for s in report.sections for t in s.tables if t.name == name]
        out[name] = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    sweeps = [t.tidy for s in report.sections for t in s.tables if t.name == "sweep"]
    if sweeps:
        out["sweep"] = pd.concat(sweeps, ignore_index=True)
    for name in COMPARISON_TABLES:
        parts = [t.tidy for c in report.comparisons for t in c.tables if t.name == name]
        if parts:
            out[name] = pd.concat(parts, ignore_index=True)
    if out["failures"].empty:
        out["failures"] = pd.DataFrame(
            columns=["section", "spec", "backend", "seed", "status", "error", "cell", "run"]
        )
    out["cells"] = cells_table(report)
    out["environment_runs"] = report.runs_env
    out["environment_frameworks"] = report.frameworks_env
    return out


def cells_table(report: Report) -> pd.DataFrame:
    """Every cell with its scalar fields: the per-seed numbers behind the tables."""
    frame = report.frame.copy()
    section_of = {}
    for section in report.sections:
        for i in section.cells.index:
            section_of[i] = section.index
    frame.insert(0, "section", frame.index.map(section_of))
    keep = [
        c
        for c in frame.columns
        if c != "traceback" and not frame[c].map(lambda v: isinstance(v, list | dict)).any()
    ]
    return frame[keep]


# --- latex --------------------------------------------------------------------

_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    out = re.sub(r"[\\&%$#_{}~^]", lambda m: _TEX_SPECIAL[m.group(0)], str(text))
    return out.replace("±", r"\ensuremath{\pm}")


def _tex_table(frame: pd.DataFrame, caption: str, notes: list[str], text: bool = False) -> str:
    """A booktabs table, shrunk to the text width when wider."""
    styler = (
        frame.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    )
    align = "".join("l" if text or c in LEFT else "r" for c in frame.columns)
    tabular = styler.to_latex(hrules=True, column_format=align).replace("±", r"\ensuremath{\pm}")
    lines = [
        r"\begin{table}[htbp]",
        r"\centering\small",
        rf"\caption{{{tex_escape(caption)}}}",
        r"\begin{adjustbox}{max width=\textwidth}",
        tabular.rstrip(),
        r"\end{adjustbox}",
    ]
    if notes:
        lines.append(r"\par\smallskip\footnotesize " + tex_escape(" ".join(notes)))
    lines.append(r"\end{table}")
    return "\n".join(lines)


def latex(report: Report, plots: list[Plot], out_dir: Path) -> str:
    """A complete LaTeX document; each table can be copied out on its own."""
    lines = [
        r"\documentclass[10pt]{article}",
        r"\usepackage[T1]{fontenc}",
        r"\usepackage[utf8]{inputenc}",
        r"\usepackage[landscape,margin=1.5cm]{geometry}",
        r"\usepackage{booktabs,adjustbox,graphicx}",
        r"\begin{document}",
        r"\section*{kdbench report}",
        *(tex_escape(line) + r"\par" for line in header_lines(report)),
    ]
    for section in [*report.sections, *report.comparisons]:
        lines += [
            rf"\section*{{{tex_escape(section.title)}}}",
            tex_escape(f"Settings: {settings_line(section)}.") + r"\par",
        ]
        for table in section.tables:
            if table.shown.empty:
                lines.append(tex_escape(f"{table.title}: {' '.join(table.notes)}") + r"\par")
                continue
            lines.append(_tex_table(table.shown, f"{section.title}. {table.title}", table.notes))
        for plot in (p for p in plots if p.section == section.index):
            rel = Path(os.path.relpath(plot.path, out_dir)).as_posix()
            lines += [
                r"\begin{figure}[htbp]",
                r"\centering",
                rf"\includegraphics[width=0.95\linewidth]{{{rel}}}",
                rf"\caption{{{tex_escape(plot.spec + ': ' + plot.caption)}}}",
                r"\end{figure}",
            ]
        lines.append(r"\clearpage")
    lines += [
        r"\section*{Environment}",
        _tex_table(transposed(report.runs_env), "Runs", [], text=True),
        _tex_table(report.frameworks_env, "Frameworks", [], text=True),
        r"\end{document}",
        "",
    ]
    return "\n".join(lines)
