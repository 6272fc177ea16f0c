"""Figures rendered from run records only (PNG, byte-identical on re-render) for the static results page.

Per data set (one leaderboard table): quality against NFE, against per-sample time (Pareto front marked) and
against total training wall-clock; a panel of the sample grids the records link (image data); training loss
curves from each run folder's ``log.jsonl`` where that folder exists on this machine.
"""

from __future__ import annotations

import io
import json
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.checkpoint import atomic_write_bytes
from bench.core.records import scan_records
from bench.core.stats import mean_std
from bench.output.leaderboard import build_tables, train_time
from bench.output.quality import metric_name
from bench.output.quality import quality_metric as _first_quality

ONE_STEP_SOLVERS = ("onestep", "compose")  # one series: the one-step map and its k-step composition
DPI = 110
FIGSIZE = (9.0, 4.8)
_RC = {
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 7.5,
}
_PNG_META = {"Software": None}
_MARKERS = "osD^v<>ph"  # 9 markers x 20 colours (coprime periods): no two of the first 180 series look alike


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report: where it goes (relative to the results folder) and how to draw it."""

    dataset: str
    table: str
    path: str
    caption: str
    draw: Callable[[Any], None] = field(repr=False, compare=False)
    figsize: tuple[float, float] = FIGSIZE


@dataclass
class ReportPlan:
    """What the records allow: leaderboard tables, figures to draw, and what was skipped and why."""

    tables: list[dict]  # ``bench.output.leaderboard.build_tables``; each row also lists its ``grids``
    records: dict[str, dict]  # run id -> record
    figures: list[FigureSpec]
    skipped: list[tuple[str, str]]  # (table title, what was not drawn and why)


def quality_metric(table: dict) -> str | None:
    return _first_quality(table["metrics"])


def row_items(row: dict, by_id: dict[str, dict]) -> list[tuple[dict, dict]]:
    """The (record, record row) pairs a leaderboard row aggregates."""
    out = []
    for run_id in row["runs"]:
        rec = by_id[run_id]
        for r in rec["rows"]:
            nfe_req = r["nfe_requested"] if r["nfe_requested"] is not None else 10**9  # leaderboard's nfe_sort
            if r["label"] == row["method"] and r["solver"] == row["solver"] and nfe_req == row["nfe_sort"]:
                out.append((rec, r))
    return out


def row_training_s(row: dict, by_id: dict[str, dict]) -> tuple[float | None, bool]:
    """Mean training cost over the row's runs (``bench.output.leaderboard.train_time``)."""
    costs = [train_time(rec, row["method"]) for rec, _ in row_items(row, by_id)]
    vals = [c for c, _ in costs if c is not None]
    return (statistics.fmean(vals) if vals else None), any(t for _, t in costs)


def series_name(row: dict, ambiguous: dict[str, set[str]]) -> str:
    """Legend name: the label, its solver unless one-step/composition, and config/device where the label has several."""
    name = row["method"]
    if row["solver"] not in ONE_STEP_SOLVERS:
        name += f" · {row['solver']}"
    if "config" in ambiguous.get(row["method"], ()):
        name += f" [cfg {row['config'][:6]}]"
    if "device" in ambiguous.get(row["method"], ()):
        name += f" @ {row['device']}"
    return name


def ambiguous_labels(table: dict) -> dict[str, set[str]]:
    """Labels whose rows span several configs and/or devices -> {"config", "device"} (which of the two)."""
    seen: dict[str, dict[str, set]] = {}
    for r in table["rows"]:
        d = seen.setdefault(r["method"], {"config": set(), "device": set()})
        d["config"].add(r["config"])
        d["device"].add(r["device"])
    return {m: {k for k, v in d.items() if len(v) > 1} for m, d in seen.items()}


def table_series(table: dict) -> dict[str, list[dict]]:
    """Rows grouped into plotted series (label, solver family, config, device), sorted by NFE; sorted by name."""
    ambiguous = ambiguous_labels(table)
    out: dict[str, list[dict]] = {}
    for r in table["rows"]:
        out.setdefault(series_name(r, ambiguous), []).append(r)
    return {k: sorted(v, key=lambda r: r["nfe"] if r["nfe"] is not None else math.inf) for k, v in sorted(out.items())}


def _mean_std(vals: list[float]) -> tuple[float, float] | None:
    if not vals:
        return None
    return mean_std(vals)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-") or "table"


def figure_style(i: int) -> dict:
    import matplotlib

    return {"color": matplotlib.colormaps["tab20"](i % 20), "marker": _MARKERS[i % len(_MARKERS)]}


def _log_err(mean: float, std: float) -> list[list[float]]:
    """Asymmetric error bar that stays positive on a log axis."""
    return [[min(std, 0.9 * mean)], [std]]


def _floor_band(ax, table: dict, metric: str) -> None:
    ms = _mean_std(table["floor"].get(metric, []))
    if ms is None:
        return
    m, s = ms
    lo = m - s if m - s > 0 else m / 2
    ax.axhspan(lo, m + s, color="0.6", alpha=0.25, lw=0, label=f"reference floor ({m:.3g} ± {s:.2g})")
    ax.axhline(m, color="0.4", lw=0.8, ls=":")


def _quality_label(table: dict, metric: str) -> str:
    p = table["proto"].get(metric, {})
    n_gen, n_ref = p.get("n_gen_used", p.get("n_gen", "?")), p.get("n_ref_used", p.get("n_ref", "?"))
    return f"{metric_name(metric)} (n_gen={n_gen}, n_ref={n_ref}; mean ± std, log)"


def _log_axes(ax, x_base: int = 10) -> None:
    """Log-log axes with plain-number tick labels (0.3, 2, 128), minor ticks labelled on short ranges."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log", base=x_base)
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):

        def minor(v: float, _pos: int, axis=axis) -> str:
            lo, hi = sorted(axis.get_view_interval())
            if lo <= 0 or math.log10(hi / lo) > 2.0:
                return ""
            lead = round(v / 10 ** math.floor(math.log10(v) + 1e-9))
            return f"{v:.3g}" if lead in (2, 3, 5) else ""

        axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        axis.set_minor_formatter(FuncFormatter(minor))


def _legend(fig, ax) -> None:
    h, labels = ax.get_legend_handles_labels()
    if h:
        fig.legend(h, labels, loc="outside right upper")


def _new_figure(figsize: tuple[float, float] = FIGSIZE):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=DPI, layout="constrained")


def _points(
    rows: list[dict], metric: str, x_of: Callable[[dict], float | None]
) -> list[tuple[float, float, float, dict]]:
    pts = []
    for r in rows:
        ms = _mean_std(r["values"].get(metric, []))
        x = x_of(r)
        if ms is None or x is None or x <= 0 or ms[0] <= 0:
            continue
        pts.append((float(x), ms[0], ms[1], r))
    return pts


def _draw_vs_nfe(table: dict, metric: str) -> Callable[[Any], None]:
    def draw(fig) -> None:
        from matplotlib.ticker import FuncFormatter, LogLocator

        ax = fig.add_subplot()
        for i, (name, rows) in enumerate(table_series(table).items()):
            pts = _points(rows, metric, lambda r: r["nfe"])
            if not pts:
                continue
            xs, ys, ss = [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]
            err = [[min(s, 0.9 * y) for y, s in zip(ys, ss, strict=True)], ss]
            ax.errorbar(xs, ys, yerr=err, capsize=3, lw=1.2, ms=5, label=name, **figure_style(i))
        _floor_band(ax, table, metric)
        _log_axes(ax, x_base=2)
        ax.xaxis.set_major_locator(LogLocator(base=2))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("NFE (network evaluations per sample, log scale)")
        ax.set_ylabel(_quality_label(table, metric))
        ax.set_title(f"{table['title']}: {metric_name(metric)} against NFE (lower is better)")
        _legend(fig, ax)

    return draw


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower x, lower y), in increasing x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _devices(rows: list[dict]) -> str:
    devs = sorted({r["device"] for r in rows if r["per_sample_s"] is not None})
    if len(devs) == 1:
        return devs[0]
    return "devices (times across them are not comparable): " + ", ".join(devs)


def _draw_vs_time(table: dict, metric: str) -> Callable[[Any], None]:
    def draw(fig) -> None:
        ax = fig.add_subplot()
        allpts = []
        for i, (name, rows) in enumerate(table_series(table).items()):
            pts = _points(rows, metric, lambda r: r["per_sample_s"])
            if not pts:
                continue
            allpts += pts
            for x, y, s, _ in pts:
                ax.errorbar([x], [y], yerr=_log_err(y, s), capsize=2, ls="none", ms=5, **figure_style(i))
            ax.plot([], [], ls="none", ms=5, label=name, **figure_style(i))
        front = pareto_front([(x, y) for x, y, _, _ in allpts])
        if front:
            fx, fy = [allpts[i][0] for i in front], [allpts[i][1] for i in front]
            ax.plot(fx, fy, drawstyle="steps-post", color="k", lw=1, ls="--", zorder=1)
            ax.plot(fx, fy, ls="none", marker="o", ms=11, mfc="none", mec="k", label="Pareto front")
            for k, i in enumerate(front):
                x, y, _, r = allpts[i]
                off = (6, 6) if k % 2 == 0 else (6, -12)
                ax.annotate(
                    f"NFE {r['nfe']:g}", (x, y), xytext=off, textcoords="offset points", fontsize=7, color="0.2"
                )
        _floor_band(ax, table, metric)
        _log_axes(ax)
        batches = sorted({r["batch"] for r in table["rows"] if r["batch"]})
        ax.set_xlabel(
            "per-sample time, s (sampler + network, median at batch "
            + "/".join(str(b) for b in batches)
            + ", log scale)\n"
            + _devices(table["rows"])
        )
        ax.set_ylabel(_quality_label(table, metric))
        ax.set_title(f"{table['title']}: {metric_name(metric)} against sampling time (lower-left is better)")
        _legend(fig, ax)

    return draw


def _draw_vs_train(table: dict, metric: str, by_id: dict[str, dict]) -> Callable[[Any], None]:
    def draw(fig) -> None:
        ax = fig.add_subplot()
        with_teacher = False
        for i, (name, rows) in enumerate(table_series(table).items()):
            costs = {id(r): row_training_s(r, by_id) for r in rows}
            pts = _points(rows, metric, lambda r, c=costs: c[id(r)][0])
            if not pts:
                continue
            with_teacher |= any(costs[id(r)][1] for *_, r in pts)
            for x, y, s, r in pts:
                ax.errorbar([x], [y], yerr=_log_err(y, s), capsize=2, ls="none", ms=5, **figure_style(i))
                ax.annotate(f"{r['nfe']:g}", (x, y), xytext=(4, -3), textcoords="offset points", fontsize=6.5)
            ax.plot([], [], ls="none", ms=5, label=name, **figure_style(i))
        _floor_band(ax, table, metric)
        _log_axes(ax)
        xl = "total training wall-clock, s (log scale; numbers = NFE)\ntrain.total_s"
        xl += " + a reused teacher's training (extra.teacher)" if with_teacher else ""
        xl += "; '(teacher)' rows: the teacher's training alone"
        ax.set_xlabel(xl)
        ax.set_ylabel(_quality_label(table, metric))
        ax.set_title(f"{table['title']}: {metric_name(metric)} against training cost (devices as recorded)")
        _legend(fig, ax)

    return draw


def _grid_panels(table: dict, results_dir: Path) -> list[tuple[str, str]]:
    """(title, grid path relative to results_dir) per series: its smallest and its largest NFE, first run."""
    panels = []
    for name, rows in table_series(table).items():
        chosen = [rows[0]] + ([rows[-1]] if len(rows) > 1 else [])
        for r in chosen:
            grids = r.get("grids") or []
            if grids and (results_dir / grids[0]).is_file():
                panels.append((f"{name}\nNFE {r['nfe']:g}", grids[0]))
    return panels


MAX_PANELS = 24
_PANEL_SOLVER = {"onestep": 0, "compose": 0, "euler": 1}  # a method's panels from its own sampler, else Euler


def _point_panels(table: dict, by_id: dict[str, dict]) -> tuple[list[tuple[str, str, dict, str]], list[str]]:
    """(title, run folder, record row, method) for each method of a points table (teachers' rows left out: the
    teacher has its own rows), at its smallest and largest NFE of one series (its own sampler first, else Euler),
    from the first run whose folder (with ``ckpt.pt``) is on this machine; and the methods left out by the
    ``MAX_PANELS`` cap."""
    series = [(k, rows) for k, rows in table_series(table).items() if not rows[0]["method"].endswith("(teacher)")]
    series.sort(key=lambda kr: (kr[1][0]["method"], _PANEL_SOLVER.get(kr[1][0]["solver"], 2), kr[0]))
    panels: list[tuple[str, str, dict, str]] = []
    capped: list[str] = []
    for name, rows in series:
        method = rows[0]["method"]
        if any(m == method for *_, m in panels) or method in capped:
            continue
        chosen = [rows[0]] + ([rows[-1]] if len(rows) > 1 else [])
        found = []
        for r in chosen:
            for rec, row in row_items(r, by_id):
                wd = rec.get("workdir")
                if wd and (Path(wd) / "ckpt.pt").is_file():
                    found.append((f"{name}\nNFE {r['nfe']:g}", wd, row, method))
                    break
        if found and len(panels) + len(found) > MAX_PANELS:
            capped.append(method)
        else:
            panels += found
    return panels, capped


def _draw_points(panels: list[tuple[str, str, dict, str]], n: int = 2000) -> Callable[[Any], None]:
    """Samples of each panel's run (seeds eval.sample_seed .. + n, CPU) over a 2-D histogram of the data law."""

    def draw(fig) -> None:
        import torch

        from bench.eval.sampling import generate
        from bench.methods.base import EvalPoint
        from bench.run.runner import load_run

        ncol = min(4, len(panels))
        axes = fig.subplots(math.ceil(len(panels) / ncol), ncol, squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        ref, lim = None, None
        for ax, (title, wd, row, _) in zip(axes.flat, panels, strict=False):
            cfg, ds, m, _ = load_run(Path(wd), torch.device("cpu"))
            if ref is None:
                ref = ds.reference(20000, cfg.eval.ref_seed).numpy()
                lo, hi = ref.min(0), ref.max(0)
                pad = 0.1 * (hi - lo)
                lim = (lo - pad, hi + pad)
            pt = EvalPoint(row["label"], row["solver"], row["nfe_requested"])
            x, _ = generate(m, pt, n, cfg.eval.sample_seed, 1000, torch.device("cpu"))
            ax.hist2d(ref[:, 0], ref[:, 1], bins=80, range=list(zip(*lim, strict=True)), cmap="Greys")
            ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=1.5, c="tab:red", alpha=0.5, linewidths=0)
            ax.set_xlim(lim[0][0], lim[1][0])
            ax.set_ylim(lim[0][1], lim[1][1])
            ax.set_title(title, fontsize=7.5)

    return draw


def _draw_samples(panels: list[tuple[str, str]], results_dir: Path) -> Callable[[Any], None]:
    def draw(fig) -> None:
        from matplotlib.image import imread

        ncol = min(4, len(panels))
        axes = fig.subplots(math.ceil(len(panels) / ncol), ncol, squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, (title, rel) in zip(axes.flat, panels, strict=False):
            img = imread(results_dir / rel)
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
            ax.set_title(title, fontsize=7.5)

    return draw


def _read_log(path: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``log.jsonl`` as {stage: {key: [(step, value)]}} for the loss keys (names starting with "loss")."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(e, dict) or "step" not in e:
            continue
        for k, v in e.items():
            if k.startswith("loss") and isinstance(v, int | float) and math.isfinite(v):
                out.setdefault(str(e.get("stage", "train")), {}).setdefault(k, []).append((int(e["step"]), float(v)))
    return out


def _draw_losses(logs: list[tuple[str, dict]]) -> Callable[[Any], None]:
    def draw(fig) -> None:
        ncol = min(3, len(logs))
        axes = fig.subplots(math.ceil(len(logs) / ncol), ncol, squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, (run_id, log) in zip(axes.flat, logs, strict=False):
            ax.axis("on")
            positive = True
            for j, (stage, keys) in enumerate(sorted(log.items())):
                for k, (key, pts) in enumerate(sorted(keys.items())):
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, label=f"{stage}: {key}", **_line(j, k))
                    positive &= all(p[1] > 0 for p in pts)
            if positive:
                ax.set_yscale("log")
            ax.set_title(run_id, fontsize=7)
            ax.set_xlabel("step")
            ax.set_ylabel("loss" + (" (log)" if positive else ""))
            ax.legend(fontsize=6)

    return draw


def _line(stage_i: int, key_i: int) -> dict:
    import matplotlib

    return {"color": matplotlib.colormaps["tab10"]((stage_i * 3 + key_i) % 10), "ls": ("-", "--", ":")[key_i % 3]}


def _table_figures(t: dict, base: str, by_id: dict[str, dict], results_dir: Path) -> tuple[list[FigureSpec], list[str]]:
    """The figures of one table (file names under ``base``) and the notes on what was skipped."""
    figs: list[FigureSpec] = []
    skipped: list[str] = []

    def add(name: str, caption: str, draw: Callable[[Any], None], size: tuple[float, float] = FIGSIZE) -> None:
        figs.append(FigureSpec(t["key"][0], t["title"], base + name, caption, draw, size))

    metric = quality_metric(t)
    if metric is None:
        skipped.append("quality figures: no W2, FID or fd_* metric in the records")
    else:
        mname = metric_name(metric)
        add("quality_vs_nfe.png", f"{mname} against NFE; shaded: reference floor.", _draw_vs_nfe(t, metric))
        add("quality_vs_time.png", f"{mname} against per-sample time; dashed: Pareto front.", _draw_vs_time(t, metric))
        add(
            "quality_vs_train.png",
            f"{mname} against total training wall-clock (a reused teacher's cost included where recorded).",
            _draw_vs_train(t, metric, by_id),
        )
    kinds = {by_id[rid].get("data_spec", {}).get("kind") for r in t["rows"] for rid in r["runs"]}
    if "image" in kinds:
        missing = sorted({g for r in t["rows"] for g in r["grids"] if not (results_dir / g).is_file()})
        if missing:
            skipped.append("sample grids missing on disk: " + ", ".join(missing))
        panels = _grid_panels(t, results_dir)
        if panels:
            add(
                "samples.png",
                "Sample grids linked by the records (fixed seeds), each method at its smallest and largest NFE.",
                _draw_samples(panels, results_dir),
                (9.0, 2.4 * math.ceil(len(panels) / min(4, len(panels)))),
            )
    else:
        panels, capped = _point_panels(t, by_id)
        drawn = {method for *_, method in panels}
        own = {r["method"] for r in t["rows"] if not r["method"].endswith("(teacher)")}
        missing = sorted(own - drawn - set(capped))
        if missing:
            skipped.append(f"sample panel for {', '.join(missing)}: no run folder with ckpt.pt on this machine")
        if capped:
            skipped.append(f"sample panel for {', '.join(sorted(capped))}: over the figure's {MAX_PANELS} panels")
        if panels:
            add(
                "samples.png",
                "Samples (red, 2,000 fixed seeds) over the data (grey), each method at its smallest and largest NFE.",
                _draw_points(panels),
                (9.0, 2.4 * math.ceil(len(panels) / min(4, len(panels)))),
            )
    logs, no_log = [], []
    for rid in sorted({rid for r in t["rows"] for rid in r["runs"]}):
        wd = by_id[rid].get("workdir")
        log = _read_log(Path(wd) / "log.jsonl") if wd and (Path(wd) / "log.jsonl").is_file() else {}
        if log:
            logs.append((rid, log))
        else:
            no_log.append(rid)
    if no_log:
        skipped.append(f"loss curves of {len(no_log)} run(s): no log.jsonl in their workdir on this machine")
    if logs:
        size = (9.0, 2.6 * math.ceil(len(logs) / min(3, len(logs))))
        add("loss.png", "Training losses from each run folder's log.jsonl.", _draw_losses(logs), size)
    return figs, skipped


def plan_report(results_dir: Path) -> ReportPlan:
    """Which figures the records allow, with their file names; draws nothing."""
    results_dir = Path(results_dir)
    records, bad = scan_records(results_dir)
    by_id = {r["run_id"]: r for r in records}
    tables = build_tables(records)
    for t in tables:
        for r in t["rows"]:
            r["grids"] = [row["grid"] for _, row in row_items(r, by_id) if row.get("grid")]
    per_ds: dict[str, int] = {}
    for t in tables:
        per_ds[t["key"][0]] = per_ds.get(t["key"][0], 0) + 1
    seen: dict[str, int] = {}
    plan = ReportPlan(tables, by_id, [], [])
    for t in tables:
        ds = t["key"][0]
        seen[ds] = seen.get(ds, 0) + 1
        stem = "" if per_ds[ds] == 1 else f"{_slug(t['title'])}-{seen[ds]}_"  # several tables for one data set
        figs, skipped = _table_figures(t, f"figures/{_slug(ds)}/{stem}", by_id, results_dir)
        plan.figures += figs
        plan.skipped += [(t["title"], s) for s in skipped]
    plan.skipped += [("records", f"{p}: {why}") for p, why in bad]
    return plan


def figure_png(spec: FigureSpec) -> bytes:
    """Draw one figure to PNG bytes (Agg, fixed size and DPI, no software/date metadata)."""
    import matplotlib
    import matplotlib.style

    with matplotlib.style.context("default"), matplotlib.rc_context(_RC):
        fig = _new_figure(spec.figsize)
        spec.draw(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, metadata=_PNG_META)
    return buf.getvalue()


def render_report(results_dir: Path) -> list[Path]:
    """Render every figure of ``plan_report`` under ``results_dir/figures/<dataset>/``; returns their paths."""
    results_dir = Path(results_dir)
    plan = plan_report(results_dir)
    paths = []
    for spec in plan.figures:
        path = results_dir / spec.path
        atomic_write_bytes(path, figure_png(spec))
        paths.append(path)
    return paths
