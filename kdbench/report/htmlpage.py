"""The HTML report: one self-contained page.

Figures are embedded as base64 data URIs and the style sheet is inline, so
the single file can be mailed, attached to an issue or opened offline; the
page loads nothing from anywhere.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from kdbench.report.aggregate import Report
from kdbench.report.plots import Plot
from kdbench.report.render import LEFT, header_lines, transposed

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kdbench report</title>
<style>
  :root { --ink: #1d2430; --muted: #5b6573; --line: #d9dee5; --bad: #fdecec; --head: #f3f5f8; }
  body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
         color: var(--ink); margin: 0 auto; padding: 24px 32px 64px; max-width: 1500px; }
  h1 { font-size: 26px; margin: 0 0 8px; }
  h2 { font-size: 20px; margin: 36px 0 8px; padding-top: 12px; border-top: 3px solid var(--ink); }
  h3 { font-size: 15px; margin: 22px 0 6px; }
  p.meta { margin: 2px 0; color: var(--muted); }
  nav ul { margin: 8px 0; padding-left: 20px; }
  .settings { display: flex; flex-wrap: wrap; gap: 6px; margin: 8px 0 4px; padding: 0; }
  .settings li { list-style: none; background: var(--head); border: 1px solid var(--line);
                 border-radius: 4px; padding: 2px 8px; font-size: 12.5px; }
  .settings b { font-weight: 600; }
  .scroll { overflow-x: auto; }
  table { border-collapse: collapse; margin: 4px 0; font-size: 13px;
          font-variant-numeric: tabular-nums; }
  th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: right;
           vertical-align: top; }
  th { background: var(--head); border-bottom: 2px solid var(--ink); min-width: 56px; }
  td { white-space: nowrap; }
  th.l, td.l, table.text th, table.text td { text-align: left; }
  table.text td { white-space: normal; max-width: 560px; overflow-wrap: anywhere; }
  td.wrap { white-space: normal; min-width: 180px; max-width: 480px; }
  tr.bad td { background: var(--bad); }
  p.note { color: var(--muted); font-size: 12.5px; margin: 4px 0 0; max-width: 1100px; }
  figure { margin: 16px 0 24px; }
  figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
  figcaption { color: var(--muted); font-size: 12.5px; max-width: 1100px; }
  .warn { background: #fff6e0; border-left: 4px solid #e0a800; padding: 6px 10px; }
</style>
</head>
<body>
<h1>kdbench report</h1>
{% for line in header %}<p class="meta">{{ line }}</p>
{% endfor %}
<nav><ul>
{% for s in sections %}<li><a href="#section-{{ s.index }}">{{ s.title }}</a></li>
{% endfor %}<li><a href="#environment">Environment</a></li>
</ul></nav>
{% macro table(frame, wrap=(), text=False) %}{% set t = rows(frame) %}
<div class="scroll"><table class="{{ 'text' if text else '' }}">
<thead><tr>{% for c in t.columns %}<th class="{{ 'l' if c in left else '' }}">{{ c }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row, bad in t.rows %}
<tr{{ ' class="bad"'|safe if bad else '' }}>{% for c, v in zip(t.columns, row) %}<td class="{{ 'l' if c in left else '' }}{{ ' wrap' if c in wrap else '' }}">{{ v }}</td>{% endfor %}</tr>
{% endfor %}
</tbody></table></div>
{% endmacro %}
{% for s in sections %}
<section id="section-{{ s.index }}">
<h2>{{ s.title }}</h2>
<ul class="settings">
{% for k, v in s.settings_shown.items() %}<li><b>{{ k }}</b>: {{ v }}</li>
{% endfor %}</ul>
{% for t in s.tables %}
<h3>{{ t.title }}</h3>
{% if not t.shown.empty %}{{ table(t.shown, ("error", "status")) }}{% endif %}
{% for n in t.notes %}<p class="note">{{ n }}</p>{% endfor %}
{% endfor %}
{% for p in plots if p.section == s.index %}
<figure><img alt="{{ p.spec }}: {{ p.kind }}" src="{{ images[p.path] }}">
<figcaption>{{ p.caption }}</figcaption></figure>
{% endfor %}
</section>
{% endfor %}
<section id="environment">
<h2>Environment</h2>
<h3>Runs</h3>
{{ table(runs_env, text=True) }}
<h3>Frameworks</h3>
{{ table(frameworks_env, text=True) }}
</section>
</body>
</html>
"""


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _rows(frame: pd.DataFrame) -> dict[str, Any]:
    """Columns and text rows; rows of cells that did not all finish are tinted."""
    columns = [str(c) for c in frame.columns]
    text = frame.astype(str).values.tolist()
    where = columns.index("status") if "status" in columns else None
    return {
        "columns": columns,
        "rows": [(row, where is not None and row[where] != "ok") for row in text],
    }


def html(report: Report, plots: list[Plot]) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.globals.update(zip=zip, left=LEFT, rows=_rows)
    return env.from_string(TEMPLATE).render(
        header=header_lines(report),
        sections=[*report.sections, *report.comparisons],
        plots=plots,
        images={p.path: data_uri(p.path) for p in plots},
        runs_env=transposed(report.runs_env),
        frameworks_env=report.frameworks_env,
    )
