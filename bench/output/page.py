"""A static, self-contained results page (``results/index.html``) rendered from run records only.

Inline CSS and JS, nothing fetched: figures and sample grids are referenced by paths relative to the results
folder, each run id links to its record JSON. Deterministic byte for byte (no dates, sorted inputs).
"""

from __future__ import annotations

import html
import re
import statistics
from pathlib import Path

from bench.core.checkpoint import atomic_write_text
from bench.core.records import record_path
from bench.output.leaderboard import fmt_nfe, fmt_time, fmt_val, fmt_wall
from bench.output.report import ReportPlan, ambiguous_labels, plan_report, row_items, row_training_s

# protocol keys shown under a table, in this order, where a metric's protocol has them
PROTOCOL_KEYS = (
    "n_gen",
    "n_gen_used",
    "n_ref",
    "n_ref_used",
    "repeats",
    "reference",
    "reference_split",
    "extractor",
    "weights_sha256",
    "weights_official",
    "feature_dim",
    "resize",
    "engine",
    "solver",
    "distance",
    "projections",
    "comparable",
    "comparable_reason",
)

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1400px;
  padding: 0 1.5em 3em; color: #1d1d1f; }
h1 { margin-top: 1em; } h2 { margin-top: 2.2em; border-bottom: 1px solid #ccc; padding-bottom: .2em; }
nav a { margin-right: 1em; }
table.board { border-collapse: collapse; font-size: 13px; margin: .6em 0; }
table.board th, table.board td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; white-space: nowrap; }
table.board td.text, table.board th.text { text-align: left; }
table.board th { background: #f3f3f5; cursor: pointer; user-select: none; position: sticky; top: 0; }
table.board th[aria-sort=ascending]::after { content: " \\25B2"; }
table.board th[aria-sort=descending]::after { content: " \\25BC"; }
table.board tbody.floor td { background: #f7f7e8; font-style: italic; }
table.board tbody.rows tr:nth-child(even) td { background: #fafafa; }
tr.not-comparable td { color: #8a5a00; }
.scroll { overflow-x: auto; } .filter { margin: .4em 0; } .muted { color: #666; font-size: 12.5px; }
.protocol { font-size: 12.5px; } .protocol code { font-size: 12px; }
.figs { display: flex; flex-wrap: wrap; gap: 1em; }
.figs figure { margin: 0; max-width: 100%; } .figs img { max-width: 100%; height: auto; border: 1px solid #eee; }
.grids { display: flex; flex-wrap: wrap; gap: .8em; }
.grids figure { margin: 0; width: 150px; font-size: 11px; }
.grids img { width: 150px; image-rendering: pixelated; }
figcaption { color: #444; font-size: 12px; }
"""

JS = """
(function () {
  "use strict";
  function key(row, col, num) {
    var cell = row.cells[col];
    var v = cell ? cell.getAttribute("data-sort") : "";
    if (v === null) { v = cell.textContent; }
    return num ? (v === "" ? NaN : parseFloat(v)) : v;
  }
  document.querySelectorAll("table.board").forEach(function (table) {
    var body = table.querySelector("tbody.rows");
    var heads = table.querySelectorAll("thead th");
    heads.forEach(function (th, col) {
      th.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        var num = th.getAttribute("data-type") === "num";
        heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a, col, num), y = key(b, col, num), c;
          if (num && (isNaN(x) || isNaN(y))) {
            c = Number(isNaN(x)) - Number(isNaN(y));  /* missing values last, either direction */
          } else {
            c = (x < y ? -1 : (x > y ? 1 : 0)) * (asc ? 1 : -1);
          }
          return c !== 0 ? c : Number(a.getAttribute("data-order")) - Number(b.getAttribute("data-order"));
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  document.querySelectorAll("input.comparable-only").forEach(function (box) {
    function apply() {
      var table = document.getElementById(box.getAttribute("data-table"));
      table.querySelectorAll("tbody.rows tr").forEach(function (tr) {
        tr.hidden = box.checked && tr.getAttribute("data-comparable") === "false";
      });
    }
    box.addEventListener("change", apply);
    apply();
  });
})();
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _num(x: float | int | None) -> str:
    return "" if x is None else repr(float(x))


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", s).strip("-") or "table"


def _td(text: str, sort: str | None = None, cls: str = "", title: str = "") -> str:
    attrs = f' class="{cls}"' if cls else ""
    attrs += "" if sort is None else f' data-sort="{_e(sort)}"'
    attrs += f' title="{_e(title)}"' if title else ""
    return f"<td{attrs}>{text}</td>"


def _comparability(row: dict, by_id: dict[str, dict]) -> tuple[bool, list[str]]:
    """A row is comparable unless one of its metric protocols says ``comparable: false`` (reasons returned)."""
    reasons = []
    for _, r in row_items(row, by_id):
        for name, m in sorted(r["metrics"].items()):
            p = m.get("protocol") or {}
            if p.get("comparable") is False:
                reasons.append(f"{name}: {p.get('comparable_reason') or 'protocol differs from the default'}")
    return not reasons, sorted(set(reasons))


def _protocol_html(table: dict) -> str:
    items = []
    for m in table["metrics"]:
        p = table["proto"].get(m, {})
        parts = []
        for k in PROTOCOL_KEYS:
            if k in p and p[k] not in ("", None):
                v = p[k][:16] + "…" if k == "weights_sha256" and isinstance(p[k], str) else p[k]
                parts.append(f"{_e(k)}=<code>{_e(v)}</code>")
        items.append(f"<li><b>{_e(m)}</b>: {', '.join(parts) or 'no protocol recorded'}</li>")
    floor = "; ".join(table["floor_what"])
    if floor:
        items.append(f"<li><b>reference floor</b>: {_e(floor)}</li>")
    return '<ul class="protocol">' + "".join(items) + "</ul>"


def _table_html(table: dict, tid: str, by_id: dict[str, dict]) -> str:
    metrics = table["metrics"]
    head = [("method", "text"), ("solver", "text"), ("NFE", "num")]
    head += [(m, "num") for m in metrics]
    head += [("per sample", "num"), ("× fwd", "num"), ("params", "num"), ("training", "num"), ("seeds", "num")]
    head += [("device", "text"), ("run", "text")]
    ths = "".join(
        f'<th class="{"text" if t == "text" else "num"}" data-type="{t}" title="click to sort">{_e(h)}</th>'
        for h, t in head
    )
    floor = ""
    if any(table["floor"].values()):
        cells = [_td("reference floor", cls="text"), _td("-", cls="text"), _td("-")]
        cells += [_td(_e(fmt_val(table["floor"].get(m, [])))) for m in metrics]
        cells += [_td("-")] * 5 + [_td("-", cls="text")] * 2
        floor = '<tbody class="floor"><tr>' + "".join(cells) + "</tr></tbody>"
    body = []
    teacher_note = False
    ambiguous = ambiguous_labels(table)
    for i, r in enumerate(table["rows"]):
        ok, reasons = _comparability(r, by_id)
        train_s, with_teacher = row_training_s(r, by_id)
        teacher_note |= with_teacher
        method = r["method"] + (f" [cfg {r['config'][:6]}]" if "config" in ambiguous.get(r["method"], ()) else "")
        cells = [
            _td(_e(method), method, "text", title=f"config {r['config']}"),
            _td(_e(r["solver"]), r["solver"], "text"),
            _td(_e(fmt_nfe(r["nfe"])), _num(r["nfe"])),
        ]
        for m in metrics:
            vals = r["values"].get(m, [])
            cells.append(_td(_e(fmt_val(vals)), _num(statistics.fmean(vals)) if vals else ""))
        cells += [
            _td(
                _e(fmt_time(r["per_sample_s"])) + (" *" if r.get("loaded") else ""),
                _num(r["per_sample_s"]),
                title="timed while the load average exceeded the cores" if r.get("loaded") else "",
            ),
            _td(_e(f"{r['ratio']:.1f}" if r["ratio"] is not None else "-"), _num(r["ratio"])),
            _td(_e(f"{r['params']:,}" if r["params"] else "-"), _num(r["params"])),
            _td(_e(fmt_wall(train_s)) + (" †" if with_teacher else ""), _num(train_s)),
            _td(str(r["seeds"]), _num(r["seeds"])),
            _td(_e(r["device"]), r["device"], "text"),
        ]
        links = []
        for rid in r["runs"]:
            href = record_path(Path("."), by_id[rid]["dataset"], rid).as_posix()
            links.append(f'<a href="{_e(href)}">{_e(rid)}</a>')
        cells.append(_td("<br>".join(links), " ".join(r["runs"]), "text"))
        cls = "" if ok else ' class="not-comparable"'
        title = "" if ok else f' title="not comparable: {_e("; ".join(reasons))}"'
        body.append(
            f'<tr data-order="{i}" data-comparable="{"true" if ok else "false"}"{cls}{title}>{"".join(cells)}</tr>'
        )
    n_bad = sum(1 for r in table["rows"] if not _comparability(r, by_id)[0])
    out = [
        f'<p class="filter"><label><input type="checkbox" class="comparable-only" data-table="{tid}"> '
        f'comparable rows only</label> <span class="muted">({n_bad} of {len(table["rows"])} rows have a metric '
        "protocol marked not comparable)</span></p>",
        f'<div class="scroll"><table class="board" id="{tid}"><thead><tr>{ths}</tr></thead>{floor}<tbody class="rows">',
        *body,
        "</tbody></table></div>",
        '<p class="muted">Quality: mean ± std over all (training seed × evaluation repeat) values. Per sample: median '
        "sampler + network time at the recorded batch; × fwd: that time over one bare forward pass of the same "
        "network in the same process. Training: mean training wall-clock of the row's runs"
        + ("; † includes the training of a teacher reused from another run" if teacher_note else "")
        + "; a “(teacher)” row counts the teacher's training alone"
        + (". * timed while the load average exceeded the cores" if any(r.get("loaded") for r in table["rows"]) else "")
        + ". Hover a method for its config hash. Click a column header to sort.</p>",
        _protocol_html(table),
    ]
    if table["diverged"]:
        out.append('<p class="muted">Diverged runs (no rows): ' + ", ".join(_e(x) for x in table["diverged"]) + "</p>")
    return "\n".join(out)


def _figures_html(plan: ReportPlan, table: dict, results_dir: Path) -> str:
    figs = []
    for f in plan.figures:
        if f.table != table["title"] or f.dataset != table["key"][0]:
            continue
        if (results_dir / f.path).is_file():
            figs.append(
                f'<figure><img src="{_e(f.path)}" alt="{_e(f.caption)}"><figcaption>{_e(f.caption)}</figcaption>'
                "</figure>"
            )
        else:
            figs.append(f'<p class="muted">{_e(f.path)} is not rendered yet: run <code>bench report</code>.</p>')
    return '<div class="figs">' + "\n".join(figs) + "</div>" if figs else ""


def _grids_html(table: dict, results_dir: Path) -> str:
    items = []
    for r in table["rows"]:
        for g in r.get("grids", []):
            if (results_dir / g).is_file():
                cap = f"{r['method']} · {r['solver']} · NFE {fmt_nfe(r['nfe'])}"
                items.append(f'<figure><img src="{_e(g)}" alt="{_e(cap)}"><figcaption>{_e(cap)}</figcaption></figure>')
    if not items:
        return ""
    return "<h3>Sample grids (as linked by the records)</h3>\n" + '<div class="grids">' + "\n".join(items) + "</div>"


def render_html(plan: ReportPlan, results_dir: Path) -> str:
    """The page as a string (see ``render_page``)."""
    results_dir = Path(results_dir)
    ids: dict[str, int] = {}
    sections, nav = [], []
    for t in plan.tables:
        base = "t-" + _slug(t["title"])
        ids[base] = ids.get(base, 0) + 1
        tid = base if ids[base] == 1 else f"{base}-{ids[base]}"
        nav.append(f'<a href="#{tid}-section">{_e(t["title"])}</a>')
        notes = [s for title, s in plan.skipped if title == t["title"]]
        parts = [
            f'<section id="{tid}-section"><h2>{_e(t["title"])}</h2>',
            _table_html(t, tid, plan.records),
            _figures_html(plan, t, results_dir),
            _grids_html(t, results_dir),
        ]
        if notes:
            parts.append(
                '<p class="muted">Not drawn:</p><ul class="muted">'
                + "".join(f"<li>{_e(n)}</li>" for n in notes)
                + "</ul>"
            )
        parts.append("</section>")
        sections.append("\n".join(p for p in parts if p))
    if not sections:
        sections.append("<p>No run records yet: <code>bench run --method flow --dataset checkerboard</code>.</p>")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            "<title>onestep-bench results</title>",
            f"<style>{CSS}</style></head><body>",
            "<h1>onestep-bench results</h1>",
            '<p class="muted">Rendered by <code>bench report</code> from the run records under <code>runs/</code> '
            "only; do not edit by hand. One table per data set and metric protocol.</p>",
            "<nav>" + "".join(nav) + "</nav>",
            *sections,
            f"<script>{JS}</script>",
            "</body></html>",
            "",
        ]
    )


def render_page(results_dir: Path) -> Path:
    """Write ``results_dir/index.html`` from the records (figures from ``bench.output.report.render_report``)."""
    results_dir = Path(results_dir)
    path = results_dir / "index.html"
    atomic_write_text(path, render_html(plan_report(results_dir), results_dir))
    return path
