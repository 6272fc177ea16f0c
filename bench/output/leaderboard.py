"""Leaderboards rendered from run records only (Markdown + CSV); deterministic byte for byte.

LEADERBOARD.md is compact (main quality metric, time, cost, seeds, device); leaderboard.csv is the wide
table (every metric, latency, params, protocol, config hash, run ids)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

from bench.core.checkpoint import atomic_write_text
from bench.core.records import LOCK_TIMEOUT_S, results_lock, scan_records, timing_load, timing_loaded
from bench.core.stats import equal_cost, mean_std
from bench.output.published import render_published
from bench.output.quality import metric_order, quality_metrics
from bench.output.targets import LOADED_MARK, render_targets

SOLVER_ORDER = {"onestep": 0, "compose": 1, "euler": 2, "ei": 3, "heun": 4, "dopri5": 5}
_DROP_FROM_KEY = {"seed"}
# eval fields that choose which rows are measured (or where weights live), not how: re-evaluating a run
# at other NFEs must not move it to another config group
_EVAL_SELECTION = {"nfe", "solvers", "metrics", "timing", "allow_download", "inception_weights", "cleanfid_weights"}
TEACHER_MARK = "‡"


class Rendered(NamedTuple):
    md: Path
    csv: Path
    tables: list[dict]
    skipped: list[tuple[Path, str]]  # record files not used, with a one-line reason


def _config_key(rec: dict) -> str:
    """Hash of the record's config resolved against today's defaults: runs saved before and after an option
    with a default was added share their row."""
    from bench.core.config import resolved_config

    cfg = {k: v for k, v in resolved_config(rec["config"]).items() if k not in _DROP_FROM_KEY}
    if isinstance(cfg.get("eval"), dict):
        cfg["eval"] = {k: v for k, v in cfg["eval"].items() if k not in _EVAL_SELECTION}
    teacher = cfg.get("method", {}).get("teacher") if isinstance(cfg.get("method"), dict) else None
    if isinstance(teacher, dict) and "run" in teacher:
        # which run folder the teacher was read from is provenance, like the seed: the benchmark trains one
        # teacher per seed, and their students share a row (the teacher's own config stays in the key)
        cfg["method"] = {**cfg["method"], "teacher": {k: v for k, v in teacher.items() if k != "run"}}
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]


def _table_key(rec: dict) -> tuple:
    proto = None
    for row in rec.get("rows", []):
        for _name, m in sorted(row["metrics"].items()):
            p = m["protocol"]
            proto = json.dumps(  # rows with other extractors, weights or comparability never share a table
                [
                    p.get("n_gen"),
                    p.get("n_ref"),
                    p.get("reference", ""),
                    p.get("extractor"),
                    p.get("weights_sha256"),
                    p.get("resize_mode"),
                    p.get("not_comparable_because"),
                ]
            )
            break
        if proto:
            break
    data = json.dumps(rec["config"]["data"], sort_keys=True)
    return (rec["dataset"], data, proto)


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def fmt_val(vals: list[float]) -> str:
    if not vals:
        return "-"
    m, s = mean_std(vals)
    prec = 4 if abs(m) < 1 else 3
    return f"{m:.{prec}f} ± {s:.{prec}f}"


def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.2f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_wall(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.0f} s" if s < 600 else f"{s / 60:.1f} min"


def fmt_count(n: float | None) -> str:
    """Network passes, compact: 1.23G."""
    if n is None:
        return "-"
    for div, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.0f}"


def fmt_nfe(n: Any) -> str:
    if n is None:
        return "-"
    return str(int(n)) if float(n).is_integer() else f"{n:.1f}"


def _data_title(rec: dict) -> str:
    d = {k: v for k, v in rec["config"]["data"].items() if k != "name"}
    nondefault = ", ".join(f"{k}={v}" for k, v in sorted(d.items()) if v not in (0, None, ""))
    return rec["dataset"] + (f" ({nondefault})" if nondefault else "")


def _dig(obj: Any, *keys: str) -> Any:
    """obj[k1][k2]...; None where a level is missing or not an object."""
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj


def train_time(rec: dict, label: str) -> tuple[float | None, bool]:
    """(training wall-clock a row's samples needed, whether a reused teacher's time was added from its record).

    A teacher trained in the run is already in ``train.total_s``; a reused one (``extra.teacher.
    train_wall_clock_s``) is added to a student's total; a "(teacher)" row counts the teacher alone."""
    train = rec.get("train") or {}
    stages = train.get("wall_clock_s") or {}
    reused = _dig(rec, "extra", "teacher", "train_wall_clock_s")
    if isinstance(reused, dict):
        reused = sum(v for v in reused.values() if _is_num(v)) or None
    reused = None if "teacher" in stages or not _is_num(reused) else reused
    if label.endswith("(teacher)"):
        if reused is not None:
            return reused, True
        own = stages.get("teacher")
        return (own if _is_num(own) else None), False
    total = train.get("total_s")
    if not _is_num(total):
        return None, False
    return (total + reused, True) if reused is not None else (total, False)


def network_passes(rec: dict, row: dict) -> float | None:
    """``train.cost.network_passes`` of the row, else of the record (teacher included by the engine)."""
    for src in (row.get("train"), rec.get("train")):
        cost = src.get("cost") if isinstance(src, dict) else None
        if isinstance(cost, dict) and _is_num(cost.get("network_passes")):
            return cost["network_passes"]
    return None


def _row_device(rec: dict, row: dict) -> str:
    return (row.get("timing") or {}).get("device") or rec.get("device") or "-"


def _device_class(device: str) -> str:
    """A row's device without a CPU's thread count: seeds of one recipe timed at 1 and at 2 threads are one row
    (their quality does not depend on it); its time comes from one timing setting (:func:`_timing_choice`)."""
    return re.sub(r" \(\d+ threads?\)$", "", device) if device.startswith("cpu") else device


def _timing_choice(timed: list[tuple[dict, dict]]) -> tuple[str | None, list[tuple[dict, dict]]]:
    """(device, timings) of the timing setting a row's time comes from: the one with the most quiet timings, then
    the most timings (times at different thread counts are never mixed)."""
    by_device: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    for rec, row in timed:
        by_device[_row_device(rec, row)].append((rec, row))
    if not by_device:
        return None, []
    quiet = {d: sum(not timing_loaded(rec, row) for rec, row in v) for d, v in by_device.items()}
    best = max(by_device, key=lambda d: (quiet[d], len(by_device[d]), d))
    return best, by_device[best]


def _newest(item: tuple[dict, dict]) -> tuple[str, str]:
    return (item[0].get("date", ""), item[0]["run_id"])


def build_tables(records: list[dict], main: bool = False) -> list[dict]:
    """Group record rows into tables (one per data set + metric protocol), aggregating over seeds.

    A row is (label, solver, NFE, config, device). Each (run, row) counts once, and so does each training
    seed of a config: same-seed copies contribute only the newest record (PROTOCOL.md, Seeds).
    ``main``: a benchmark main table: no ``(teacher)`` rows (the teacher has its own job), rows sorted by
    their method's best quality at NFE 1."""
    tables: dict[tuple, dict] = {}
    candidates: dict[tuple, list[tuple[dict, dict]]] = defaultdict(list)
    for rec in records:
        if rec.get("status", "ok") != "ok" or not rec.get("rows"):
            continue
        key = _table_key(rec)
        t = tables.setdefault(
            key,
            {"title": _data_title(rec), "groups": defaultdict(list), "floors": {}, "metrics": set(), "proto": {}},
        )
        ckey, seed = _config_key(rec), json.dumps(rec.get("seed"))
        for row in {(r["label"], r["solver"], r["nfe_requested"]): r for r in rec["rows"]}.values():
            if main and row["label"].endswith("(teacher)"):
                continue
            candidates[(key, row["label"], row["solver"], row["nfe_requested"], ckey, seed)].append((rec, row))
            t["metrics"].update(row["metrics"])
            for name, m in row["metrics"].items():
                t["proto"].setdefault(name, m["protocol"])
        if rec.get("reference_floor"):  # floors are seeded like the evaluation: identical copies count once
            t["floors"].setdefault(json.dumps(rec["reference_floor"], sort_keys=True), rec["reference_floor"])
    for (key, label, solver, nfe_req, ckey, _seed), items in candidates.items():
        items.sort(key=_newest)
        rec, row = items[-1]
        t = tables[key]
        t["groups"][(label, solver, nfe_req, ckey, _device_class(_row_device(rec, row)))].append((rec, row, items[:-1]))
    diverged = [r for r in records if r.get("status", "ok") != "ok"]
    out = []
    for key in sorted(tables, key=lambda k: (k[0], k[1], k[2] or "")):
        t = tables[key]
        metrics = metric_order(t["metrics"])
        rows = [_table_row(k, sorted(items, key=_newest), metrics) for k, items in t["groups"].items()]
        rows.sort(
            key=lambda r: (
                r["device"],
                r["method"],
                r["config"],
                SOLVER_ORDER.get(r["solver"], 9),
                r["solver"],
                r["nfe_sort"],
            )
        )
        if main:  # keys from a copy: list.sort empties the list it sorts while it runs
            snapshot = list(rows)
            rows.sort(key=lambda r: _nfe1_rank(snapshot, r, metrics))
        floors = [t["floors"][k] for k in sorted(t["floors"])]
        floor = {m: [v for f in floors for v in f.get(m, {}).get("values", [])] for m in metrics}
        floor_what = sorted({s.get("what", "") for f in floors for s in f.values()} - {""})
        labels_configs = defaultdict(set)
        for r in rows:
            labels_configs[r["method"]].add(r["config"])
        out.append(
            {
                "title": t["title"],
                "kind": "main" if main else "more",
                "key": key,
                "metrics": metrics,
                "main": quality_metrics(metrics) or metrics[:1],  # shown in LEADERBOARD.md (W2; FID / FD)
                "rows": rows,
                "floor": floor,
                "floor_what": floor_what,
                "proto": t["proto"],
                "ambiguous": sorted(k for k, v in labels_configs.items() if len(v) > 1),
                "dropped_runs": sorted({run for r in rows for run in r["dropped_runs"]}),
                "diverged": sorted(r["run_id"] for r in diverged if _data_title(r) == t["title"]),
            }
        )
    return out


def _nfe1_rank(rows: list[dict], r: dict, metrics: list[str]) -> tuple:
    """Sort key of a main-table row: its method's best mean first metric at NFE 1 (lower is better), then the
    method, solver and NFE."""
    m = (metrics or [""])[0]
    best = min(
        (
            statistics.fmean(x["values"][m])
            for x in rows
            if x["method"] == r["method"] and x["nfe_sort"] == 1 and x["values"].get(m)
        ),
        default=math.inf,
    )
    return (best, r["method"], SOLVER_ORDER.get(r["solver"], 9), r["solver"], r["nfe_sort"])


def _table_row(gkey: tuple, items: list[tuple[dict, dict, list]], metrics: list[str]) -> dict:
    label, solver, nfe_req, ckey, device = gkey
    recs = [r for r, _, _ in items]
    seeds = len({json.dumps(r.get("seed")) for r in recs})
    timed_device, timed = _timing_choice([(rec, row) for rec, row, _ in items if row.get("timing")])
    if timed_device is not None:
        device = timed_device
        if len(timed) < len(items):  # the other seeds were timed at another setting (or not at all)
            device = f"{device}, timed {len(timed)} of {len(items)} runs"
    timing = [row["timing"] for _, row in timed]
    nfes = [row["nfe"] for _, row, _ in items if _is_num(row.get("nfe"))]
    trains = [train_time(rec, label) for rec in recs]
    train_s = [s for s, _ in trains if s is not None]
    passes = [p for rec, row, _ in items if (p := network_passes(rec, row)) is not None]
    loads = [timing_load(rec, row) for rec, row in timed]
    load_max = max((la for la, _ in loads if la is not None), default=None)
    cores = [c for _, c in loads if c is not None]

    def med(k: str) -> float | None:
        vals = [x[k] for x in timing if _is_num(x.get(k))]
        return statistics.median(vals) if vals else None

    return {
        "method": label,
        "solver": solver,
        "nfe": statistics.fmean(nfes) if nfes else nfe_req,
        "nfe_sort": nfe_req if nfe_req is not None else 10**9,
        "values": {m: [v for _, row, _ in items for v in row["metrics"].get(m, {}).get("values", [])] for m in metrics},
        "per_sample_s": med("per_sample_s"),
        "ratio": med("ratio_to_forward"),
        "latency_s": med("latency_s"),
        "device": device,
        "batch": next((x["batch"] for x in timing if x.get("batch")), None),
        "load_avg_max": load_max,
        "cores": min(cores) if cores else None,
        "loaded": any(timing_loaded(rec, row) for rec, row in timed),
        "params": recs[0].get("params"),
        "train_s": statistics.fmean(train_s) if train_s else None,
        "train_teacher_added": any(added for _, added in trains),
        "train_passes": statistics.fmean(passes) if passes else None,
        "seeds": seeds,
        "copies_dropped": sum(len(d) for _, _, d in items),
        "dropped_runs": sorted({r["run_id"] for _, _, d in items for r, _ in d}),
        "runs": sorted({r["run_id"] for r in recs}),
        "config": ckey,
    }


_COMPARABLE_KEYS = ("comparable", "comparable_reason", "not_comparable_because", "comparable_to")


def _protocol_line(name: str, p: dict) -> str:
    skip = ("sample_seed", "ref_seed", *_COMPARABLE_KEYS)
    desc = ", ".join(f"{k}={v}" for k, v in sorted(p.items()) if k not in skip)
    line = f"- `{name}`: {desc}"
    if p.get("comparable") is True:
        line += f". **Comparable** with {p.get('comparable_to', 'the stated protocol')}"
    elif p.get("comparable") is False:
        why = p.get("not_comparable_because") or [p.get("comparable_reason") or "reason not recorded"]
        line += ". **Not comparable**: " + "; ".join(why)
    return line


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _fmt_eq(v: float | None, in_study: bool) -> str:
    if v is not None:
        return f"{v:.3g}"
    return "n/a" if in_study else "-"


def render_markdown(tables: list[dict], skipped: list[tuple[str, str]] = ()) -> str:
    """The compact leaderboard; ``skipped`` = (record file relative to the results folder, reason)."""
    lines = [
        "# onestep-bench leaderboard",
        "",
        "Rendered by `bench leaderboard` from `runs/**/*.json` records only; do not edit by hand. Every metric,",
        "latency, batch, params, protocol, config hash and run id of these rows: `leaderboard.csv`.",
        "Quality: mean ± std over all (training seed × evaluation repeat) values; runs of one config with the",
        "same seed are one measurement (the newest record counts). Time: median per-sample wall-clock of sampler",
        "+ network; `× fwd` = that time over one bare forward pass of the same run's sampling network measured",
        "in the same process (comparable across devices). Train: training wall-clock the row's samples needed",
        "(mean over seeds): a student's includes its teacher's, a `(teacher)` row counts the teacher alone;",
        "train passes: network passes over samples in training (forward 1, backward 2, teacher included).",
        "Rows are grouped by device, then method and config (hash of the config resolved against the current",
        "defaults, without the seed and the eval row selection, shown after the method when one method has",
        "several). A CPU's thread count does not split a row: its time comes from one timing setting (the one",
        "with the most quiet timings), and the device column says how many of the row's runs it covers.",
        "",
    ]
    if any(t.get("kind") == "main" for t in tables):
        lines += [
            "Main tables: the records of `benchmark.yaml`'s jobs only (one recipe per method, named there with its",
            "provenance; `bench sweep results/benchmark.yaml` regenerates them), sorted by each method's best quality",
            "at NFE 1, the reference floor on top. Every other record in `runs/` is in the *more rows* tables below",
            "them; records of older code live in `archive/` and are not rendered.",
            "",
        ]
    for t in tables:
        more = t.get("kind") == "more" and any(x.get("kind") == "main" for x in tables)
        lines += [f"## {t['title']}" + (": more rows (not benchmark jobs)" if more else ""), ""]
        lines += [_protocol_line(m, t["proto"][m]) for m in t["main"]]
        others = [m for m in t["metrics"] if m not in t["main"]]
        if others:
            lines.append("- other metrics in `leaderboard.csv`: " + ", ".join(f"`{m}`" for m in others))
        lines.append("")
        passes = any(r["train_passes"] is not None for r in t["rows"])
        eq = t.get("equal_cost")
        head = ["method", "solver", "NFE", *t["main"]] + ([f"{eq['metric']} at chargen's passes"] if eq else [])
        head += ["time/sample", "× fwd", "train"]
        head += ["train passes"] * passes + ["seeds", "device"]
        lines += [_md_row(head), "|" + "---|" * len(head)]
        if any(t["floor"].get(m) for m in t["main"]):
            cells = ["*reference floor*", "-", "-", *[fmt_val(t["floor"].get(m, [])) for m in t["main"]]]
            cells += ["-"] * bool(eq)
            lines.append(_md_row(cells + ["-"] * (len(head) - len(cells))))
        for r in t["rows"]:
            method = r["method"] + (f" `{r['config']}`" if r["method"] in t["ambiguous"] else "")
            cells = [
                method,
                r["solver"],
                fmt_nfe(r["nfe"]),
                *[fmt_val(r["values"][m]) for m in t["main"]],
                *([_fmt_eq(r.get("equal_cost"), "equal_cost" in r)] if eq else []),
                fmt_time(r["per_sample_s"]) + (f" {LOADED_MARK}" if r["loaded"] else ""),
                f"{r['ratio']:.1f}" if r["ratio"] is not None else "-",
                fmt_wall(r["train_s"]) + (f" {TEACHER_MARK}" if r["train_teacher_added"] else ""),
                *([fmt_count(r["train_passes"])] if passes else []),
                str(r["seeds"]) + (f" (+{r['copies_dropped']} dup)" if r["copies_dropped"] else ""),
                r["device"],
            ]
            lines.append(_md_row(cells))
        notes = []
        if eq:
            notes.append(
                f"{eq['metric']} at chargen's passes: each method's NFE-1 {eq['metric']} at the training passes "
                f"chargen's benchmark recipe spends ({eq['passes'] / 1e6:.1f} M), interpolated log-log between "
                f"that method's budgets in the budget study (`{eq['file']}`, seeds {eq['seeds']}, budgets "
                f"x{eq['scales']} of these recipes); `n/a`: chargen's cost is outside the method's measured "
                "budgets (never extrapolated)."
            )
        if t["floor_what"]:
            notes.append("*reference floor*: " + "; ".join(t["floor_what"]) + ".")
        if any(r["loaded"] for r in t["rows"]):
            notes.append(
                f"{LOADED_MARK} timed at a 1-min load average above the cores (threads) recorded with the timing: "
                "a shared machine; re-time before quoting (`bench eval --run runs/<id> --timing-only`)."
            )
        if any(r["train_teacher_added"] for r in t["rows"]):
            notes.append(
                f"{TEACHER_MARK} includes (a `(teacher)` row: is) the training wall-clock of a teacher reused from "
                "another run, read from its record (`extra.teacher.train_wall_clock_s`)."
            )
        if t["dropped_runs"]:
            notes.append(
                "`+k dup`: k same-seed copies of the config not counted (PROTOCOL.md, Seeds): "
                + ", ".join(f"`{x}`" for x in t["dropped_runs"])
                + "."
            )
        if t["diverged"]:
            notes.append("Diverged runs (no rows): " + ", ".join(f"`{x}`" for x in t["diverged"]))
        for n in notes:
            lines += ["", n]
        lines.append("")
    if not tables:
        lines += ["No run records yet: `bench run --method flow --dataset checkerboard`.", ""]
    if skipped:
        lines += ["## Skipped record files", ""]
        lines += [f"- `{p}`: {why}" for p, why in skipped]
    return "\n".join(lines).rstrip() + "\n"


CSV_COLUMNS = [
    "table",
    "method",
    "solver",
    "nfe",
    "config",
    "device",
    "metric",
    "mean",
    "std",
    "n_values",
    "n_gen",
    "n_ref",
    "repeats",
    "reference",
    "per_sample_s",
    "ratio_to_forward",
    "latency_s",
    "batch",
    "load_avg_1min",
    "cores",
    "loaded",
    "params",
    "train_s",
    "train_includes_reused_teacher",
    "train_network_passes",
    "seeds",
    "copies_dropped",
    "runs",
]


def render_csv(tables: list[dict]) -> str:
    """The wide table: one line per (row, metric)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for t in tables:
        floor = {
            "method": "reference floor",
            "solver": "",
            "nfe": None,
            "config": "",
            "device": "",
            "values": t["floor"],
        }
        for r in [floor, *t["rows"]]:
            for m in t["metrics"]:
                vals = r["values"].get(m, [])
                if not vals:
                    continue
                p = t["proto"].get(m, {})
                w.writerow(
                    [
                        t["title"],
                        r["method"],
                        r["solver"],
                        fmt_nfe(r["nfe"]),
                        r["config"],
                        r["device"],
                        m,
                        *(f"{v:.6g}" for v in mean_std(vals)),
                        len(vals),
                        p.get("n_gen", ""),
                        p.get("n_ref", ""),
                        p.get("repeats", ""),
                        p.get("reference", ""),
                        _g(r.get("per_sample_s")),
                        _g(r.get("ratio")),
                        _g(r.get("latency_s")),
                        r.get("batch") or "",
                        _g(r.get("load_avg_max")),
                        _g(r.get("cores")),
                        {True: "yes", False: "no"}.get(r.get("loaded"), ""),
                        r.get("params") or "",
                        _g(r.get("train_s")),
                        {True: "yes", False: "no"}.get(r.get("train_teacher_added"), ""),
                        _g(r.get("train_passes")),
                        r.get("seeds", 0),
                        r.get("copies_dropped", 0),
                        " ".join(r.get("runs", [])),
                    ]
                )
    return buf.getvalue()


def _g(x: float | None) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:.6g}"


def _relative(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def render_all(results_dir: Path, timeout: float = LOCK_TIMEOUT_S) -> Rendered:
    """Re-render ``LEADERBOARD.md``, ``leaderboard.csv``, ``TARGETS.md`` and ``PUBLISHED.md`` in
    ``results_dir`` from its usable records, under the results folder's lock; unusable record files are
    skipped, named at the end of LEADERBOARD.md and returned with a one-line reason each."""
    results_dir = Path(results_dir)
    with results_lock(results_dir, timeout):
        records, skipped = scan_records(results_dir)
        tables = split_tables(records, benchmark_run_ids(results_dir))
        attach_equal_cost(tables, results_dir / "study")
        md, csv_path = results_dir / "LEADERBOARD.md", results_dir / "leaderboard.csv"
        atomic_write_text(md, render_markdown(tables, [(_relative(p, results_dir), why) for p, why in skipped]))
        atomic_write_text(csv_path, render_csv(tables))
        atomic_write_text(results_dir / "PUBLISHED.md", render_published())
        atomic_write_text(results_dir / "TARGETS.md", render_targets(records))
    return Rendered(md, csv_path, tables, skipped)


BENCHMARK_FILE = "benchmark.yaml"


def benchmark_run_ids(results_dir: Path) -> set[str] | None:
    """Run ids of every job of ``<results>/benchmark.yaml``; None when the folder has no benchmark file."""
    from bench.run.benchmark import plan

    path = Path(results_dir) / BENCHMARK_FILE
    return {p.run_id for p in plan(path)} if path.is_file() else None


def split_tables(records: list[dict], bench_ids: set[str] | None) -> list[dict]:
    """Main tables (benchmark jobs' records; every record when there is no benchmark file), then a table
    of the remaining records per data set ("more rows": variants, ablations, user runs)."""
    if bench_ids is None:
        return build_tables(records)
    main = build_tables([r for r in records if r["run_id"] in bench_ids], main=True)
    more = build_tables([r for r in records if r["run_id"] not in bench_ids])
    return main + more


def attach_equal_cost(tables: list[dict], study_dir: Path, reference: str = "chargen") -> None:
    """Give each main table's NFE-1 rows their quality at ``reference``'s training passes, from the data set's
    budget study (``study/budget-D.json``) when its recipes are the benchmark file's (its x1 budget is then the
    main table's recipe): ``row["equal_cost"]``, and ``table["equal_cost"]`` = where the numbers come from."""
    for t in tables:
        path = Path(study_dir) / f"budget-{t['key'][0]}.json"
        if t.get("kind") != "main" or not path.is_file():
            continue
        try:
            study = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not str(study.get("recipe_source", "")).endswith(".yaml"):
            continue  # built-in recipes: not the rows of this table
        ref = [x for x in study.get("table", []) if x["method"] == reference and x["scale"] == 1]
        at = next((e for e in equal_cost(study["table"], reference) if ref and e["passes"] == ref[0]["passes"]), None)
        if at is None:
            continue
        labels = {p["label"]: p["method"] for p in study["points"] if p["scale"] == 1}
        hit = False
        for r in t["rows"]:
            key = labels.get(r["method"])
            if r["nfe_sort"] == 1 and key is not None and key in at["values"]:
                r["equal_cost"] = at["values"][key]
                hit = True
        if hit:
            t["equal_cost"] = {
                "metric": ref[0]["metric"],
                "passes": at["passes"],
                "seeds": study.get("seeds"),
                "scales": study.get("scales"),
                "file": f"study/{path.name}",
            }


def render(results_dir: Path) -> tuple[Path, list[dict]]:
    """``render_all`` for callers that want (LEADERBOARD.md path, tables) only."""
    r = render_all(results_dir)
    return r.md, r.tables
