"""Leaderboards rendered from run records only (Markdown + CSV); deterministic byte for byte."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.checkpoint import atomic_write_text
from bench.published import render_published
from bench.records import load_records
from bench.targets import render_targets

SOLVER_ORDER = {"onestep": 0, "compose": 1, "euler": 2, "ei": 3, "heun": 4, "dopri5": 5}
QUALITY_ORDER = ["w2", "sw2", "fid", "fd_digits", "kid", "precision", "recall"]
_DROP_FROM_KEY = {"seed"}


def _config_key(rec: dict) -> str:
    cfg = {k: v for k, v in rec["config"].items() if k not in _DROP_FROM_KEY}
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]


def _table_key(rec: dict) -> tuple:
    proto = None
    for row in rec.get("rows", []):
        for _name, m in sorted(row["metrics"].items()):
            p = m["protocol"]
            proto = (p["n_gen"], p["n_ref"], p.get("reference", ""))
            break
        if proto:
            break
    data = json.dumps(rec["config"]["data"], sort_keys=True)
    return (rec["dataset"], data, proto)


def _fmt_val(vals: list[float]) -> str:
    if not vals:
        return "-"
    m = statistics.fmean(vals)
    s = statistics.stdev(vals) if len(vals) > 1 else 0.0
    prec = 4 if abs(m) < 1 else 3
    return f"{m:.{prec}f} ± {s:.{prec}f}"


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.2f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _fmt_wall(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.0f} s" if s < 600 else f"{s / 60:.1f} min"


def _data_title(rec: dict) -> str:
    d = {k: v for k, v in rec["config"]["data"].items() if k != "name"}
    nondefault = ", ".join(f"{k}={v}" for k, v in sorted(d.items()) if v not in (0, None, ""))
    return rec["dataset"] + (f" ({nondefault})" if nondefault else "")


def build_tables(records: list[dict]) -> list[dict]:
    """Group record rows into tables (one per data set + metric protocol), aggregating over seeds."""
    tables: dict[tuple, dict] = {}
    for rec in records:
        if rec.get("status", "ok") != "ok" or not rec.get("rows"):
            continue
        key = _table_key(rec)
        t = tables.setdefault(
            key,
            {
                "title": _data_title(rec),
                "groups": defaultdict(list),
                "floors": [],
                "metrics": set(),
                "proto": {},
                "diverged": [],
            },
        )
        ckey = _config_key(rec)
        for row in rec["rows"]:
            t["groups"][(row["label"], row["solver"], row["nfe_requested"], ckey)].append((rec, row))
            t["metrics"].update(row["metrics"])
            for name, m in row["metrics"].items():
                t["proto"].setdefault(name, m["protocol"])
        if rec.get("reference_floor"):
            t["floors"].append(rec["reference_floor"])
    for rec in records:
        if rec.get("status", "ok") != "ok":
            for t in tables.values():
                if t["title"] == _data_title(rec):
                    t["diverged"].append(rec)
    out = []
    for key in sorted(tables, key=lambda k: (k[0], k[1], str(k[2]))):
        t = tables[key]
        metrics = [m for m in QUALITY_ORDER if m in t["metrics"]] + sorted(t["metrics"] - set(QUALITY_ORDER))
        rows = []
        for (label, solver, nfe_req, _ckey), items in t["groups"].items():
            recs = [r for r, _ in items]
            cells = {m: [v for _, row in items for v in row["metrics"].get(m, {}).get("values", [])] for m in metrics}
            timing = [row.get("timing") for _, row in items if row.get("timing")]
            nfes = [row["nfe"] for _, row in items if row.get("nfe") is not None]
            rows.append(
                {
                    "method": label,
                    "solver": solver,
                    "nfe": (statistics.fmean(nfes) if nfes else nfe_req),
                    "nfe_sort": nfe_req if nfe_req is not None else 10**9,
                    "values": cells,
                    "per_sample_s": statistics.median([x["per_sample_s"] for x in timing]) if timing else None,
                    "ratio": statistics.median([x["ratio_to_forward"] for x in timing]) if timing else None,
                    "latency_s": statistics.median([x["latency_s"] for x in timing]) if timing else None,
                    "device": timing[0]["device"] if timing else "-",
                    "batch": timing[0]["batch"] if timing else None,
                    "params": recs[0].get("params"),
                    "train_s": statistics.fmean([r["train"]["total_s"] for r in recs])
                    if recs[0].get("train")
                    else None,
                    "seeds": len({r["seed"] for r in recs}),
                    "runs": sorted({r["run_id"] for r in recs}),
                    "config": _ckey,
                }
            )
        rows.sort(
            key=lambda r: (r["method"], r["config"], SOLVER_ORDER.get(r["solver"], 9), r["solver"], r["nfe_sort"])
        )
        floor = {m: [v for f in t["floors"] for v in f.get(m, {}).get("values", [])] for m in metrics}
        floor_what = sorted({s.get("what", "") for f in t["floors"] for s in f.values()} - {""})
        out.append(
            {
                "title": t["title"],
                "key": key,
                "metrics": metrics,
                "rows": rows,
                "floor": floor,
                "floor_what": floor_what,
                "proto": t["proto"],
                "diverged": sorted(r["run_id"] for r in t["diverged"]),
            }
        )
    return out


def _fmt_nfe(n: Any) -> str:
    if n is None:
        return "-"
    return str(int(n)) if float(n).is_integer() else f"{n:.1f}"


def render_markdown(tables: list[dict]) -> str:
    lines = [
        "# onestep-bench leaderboard",
        "",
        "Rendered by `bench leaderboard` from `runs/**/*.json` records only; do not edit by hand.",
        "Quality: mean ± std over all (training seed × evaluation repeat) values. Time: median per-sample",
        "wall-clock of sampler + network at the stated batch; `× fwd` = that time over one bare forward",
        "pass of the same run's sampling network measured in the same process (comparable across devices).",
        "`config` = hash of the resolved config without the seed: rows with the same label but another config",
        "(budget, K, ...) are different experiments; the record holds the full config.",
        "",
    ]
    for t in tables:
        lines.append(f"## {t['title']}")
        lines.append("")
        for m in t["metrics"]:
            p = t["proto"][m]
            desc = ", ".join(f"{k}={v}" for k, v in sorted(p.items()) if k not in ("sample_seed", "ref_seed"))
            lines.append(f"- `{m}`: {desc}")
        lines.append("")
        head = [
            "method",
            "solver",
            "NFE",
            *t["metrics"],
            "time/sample",
            "× fwd",
            "latency (b=1)",
            "batch",
            "params",
            "train",
            "device",
            "seeds",
            "config",
            "run",
        ]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        if any(t["floor"].values()):
            cells = ["*reference floor*", "-", "-", *[_fmt_val(t["floor"].get(m, [])) for m in t["metrics"]]]
            cells += ["-"] * (len(head) - len(cells))
            lines.append("| " + " | ".join(cells) + " |")
        for r in t["rows"]:
            runs = r["runs"][0] + (f" (+{len(r['runs']) - 1})" if len(r["runs"]) > 1 else "")
            cells = [
                r["method"],
                r["solver"],
                _fmt_nfe(r["nfe"]),
                *[_fmt_val(r["values"][m]) for m in t["metrics"]],
                _fmt_time(r["per_sample_s"]),
                f"{r['ratio']:.1f}" if r["ratio"] is not None else "-",
                _fmt_time(r["latency_s"]),
                str(r["batch"] or "-"),
                f"{r['params']:,}" if r["params"] else "-",
                _fmt_wall(r["train_s"]),
                r["device"],
                str(r["seeds"]),
                f"`{r['config']}`",
                f"`{runs}`",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if t["floor_what"]:
            lines.append("")
            lines.append("*reference floor*: " + "; ".join(t["floor_what"]) + ".")
        if t["diverged"]:
            lines.append("")
            lines.append("Diverged runs (no rows): " + ", ".join(f"`{x}`" for x in t["diverged"]))
        lines.append("")
    if not tables:
        lines.append("No run records yet: `bench run --method flow --dataset checkerboard`.")
    return "\n".join(lines).rstrip() + "\n"


def render_csv(tables: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "table",
            "method",
            "solver",
            "nfe",
            "metric",
            "mean",
            "std",
            "n_values",
            "per_sample_s",
            "ratio_to_forward",
            "latency_s",
            "batch",
            "params",
            "train_s",
            "device",
            "seeds",
            "runs",
        ]
    )
    for t in tables:
        for r in [
            {
                "method": "reference floor",
                "solver": "",
                "nfe": None,
                "values": t["floor"],
                "per_sample_s": None,
                "ratio": None,
                "latency_s": None,
                "batch": None,
                "params": None,
                "train_s": None,
                "device": "",
                "seeds": 0,
                "runs": [],
            },
            *t["rows"],
        ]:
            for m in t["metrics"]:
                vals = r["values"].get(m, [])
                if not vals:
                    continue
                w.writerow(
                    [
                        t["title"],
                        r["method"],
                        r["solver"],
                        _fmt_nfe(r["nfe"]),
                        m,
                        f"{statistics.fmean(vals):.6g}",
                        f"{statistics.stdev(vals):.6g}" if len(vals) > 1 else "0",
                        len(vals),
                        _g(r["per_sample_s"]),
                        _g(r["ratio"]),
                        _g(r["latency_s"]),
                        r["batch"] or "",
                        r["params"] or "",
                        _g(r["train_s"]),
                        r["device"],
                        r["seeds"],
                        " ".join(r["runs"]),
                    ]
                )
    return buf.getvalue()


def _g(x: float | None) -> str:
    return "" if x is None else f"{x:.6g}"


def render(results_dir: Path) -> tuple[Path, list[dict]]:
    """Re-render ``LEADERBOARD.md`` and ``leaderboard.csv`` in ``results_dir`` from its records."""
    results_dir = Path(results_dir)
    records = load_records(results_dir)
    tables = build_tables(records)
    md = results_dir / "LEADERBOARD.md"
    atomic_write_text(md, render_markdown(tables))
    atomic_write_text(results_dir / "leaderboard.csv", render_csv(tables))
    atomic_write_text(results_dir / "PUBLISHED.md", render_published())
    atomic_write_text(results_dir / "TARGETS.md", render_targets(records))
    return md, tables
