"""`bench study budget`: every one-step method at several total training budgets, quality against cost.

A budget is a scale f of each method's base recipe (the README's commands): every step count of the method
*and of its teacher* is multiplied by f, so the x-axis, total network passes during training with the
teacher included (``train.cost.network_passes``), moves with f for every method alike. At each scale and
seed the teacher-based methods (chargen, consistency distillation, reflow) share one teacher trained at that
scale; the others train from scratch. Quality is the method's NFE-1 row (W2 on points, FD_digits on digits),
mean over the evaluation repeats; the table gives mean ± std over seeds at each budget and ranks the methods.

Invocations accumulate: points of other scales or seeds already in ``budget-DATA.json`` are kept.
Jobs already done are not rerun: a job is reused when a record (in the study's folder or a ``--reuse``
folder) has the same method, data, seed, method/train/data config and teacher budget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bench.core.checkpoint import atomic_write_json, atomic_write_text
from bench.core.config import resolved_config
from bench.core.stats import equal_cost, mean_std
from bench.errors import BenchError
from bench.output.quality import quality_metric


@dataclass(frozen=True)
class Job:
    key: str  # method tag as the table shows it
    method: str
    sets: tuple[str, ...]  # --set overrides of the base recipe at this scale
    teacher: bool  # reuses the scale's teacher


# (dotted key, base value): scaled by f; plain strings are fixed overrides
Scaled = tuple[str, int]
RECIPES: dict[str, dict[str, Any]] = {  # points: the benchmark file's jobs (--grid), see grid_recipes
    "image": {  # digits-sized: the teacher of the digits rows (3,000 steps at batch 128) and chargen's recipe
        "teacher": [("train.steps", 3000), "train.batch_size=128"],
        "common": ["eval.timing=false", "eval.n_gen=2048", "eval.repeats=3", "train.batch_size=128"],
        "jobs": [
            (
                "chargen",
                "chargen",
                True,
                [
                    ("method.fit_steps", 8000),
                    "method.euler_steps=32",
                    "method.solver=heun",
                    "method.n_traj=8192",
                    "method.fit_batch=128",
                    "eval.nfe=[64]",
                ],
            ),
            ("consistency-cd", "consistency", True, [("method.fit_steps", 8000)]),
            (  # chargen's teacher solves: 8,192 pairs x 64 evaluations (its 32 Heun steps) per coupling
                "reflow",
                "reflow",
                True,
                [
                    ("method.reflow_steps", 4000),
                    ("method.distill_steps", 4000),
                    "method.n_pairs=8192",
                    "method.pair_steps=64",
                    "eval.nfe=[1]",
                ],
            ),
            ("shortcut", "shortcut", False, [("train.steps", 11000)]),
            ("consistency-ct", "consistency", False, ["method.mode=ct", ("method.fit_steps", 11000)]),
            ("meanflow", "meanflow", False, [("train.steps", 11000), "method.adaptive_p=0.5"]),
        ],
    },
}


def _scaled(items: list, f: float) -> list[str]:
    return [it if isinstance(it, str) else f"{it[0]}={max(1, round(it[1] * f))}" for it in items]


SMOKE_FACTOR = 0.02  # --smoke: base step counts x 0.02 (4,000 teacher steps -> 80) on top of the smoke budgets


# step counts a budget scales when a benchmark job's resolved config has them (train.steps only for jobs that
# train from scratch: a student's train.steps would be its teacher's, which the teacher job scales)
SCALED_KEYS = (
    "train.steps",
    "method.fit_steps",
    "method.reflow_steps",
    "method.distill_steps",
    "method.tangent_warmup",
)
GRID_COMMON = ["eval.timing=false"]
BUILTIN_SOURCE = "built-in (bench/studies/budget.py RECIPES)"


def grid_recipes(grid: str | Path, dataset: str) -> tuple[list, list[tuple[str, str, bool, list]]] | None:
    """The benchmark file's recipes for ``dataset`` in :func:`plan`'s form (teacher items, job tuples), or None
    when no suite of the file holds the data set. Each job's sets are taken as they are; the step counts of
    SCALED_KEYS its resolved config has (defaults included) become scaled items, so every budget is the benchmark
    recipe with its step counts, its teacher's included, times the factor (x1 = the benchmark's own runs)."""
    from bench.core.config import run_config_dict
    from bench.run.benchmark import flat_config
    from bench.run.benchmark import plan as bench_plan
    from bench.run.runner import resolve_config

    planned = [p for p in bench_plan(grid) if p.dataset == dataset]
    if not planned:
        return None
    seed = min(p.seed for p in planned)
    planned = [p for p in planned if p.seed == seed]  # a recipe is per job; the seed is the study's
    teachers = {p.after for p in planned if p.after}

    def items(p: Any, student: bool) -> list:
        sets = [s for s in p.sets if not s.startswith("method.teacher.run=")]
        cfg = flat_config(run_config_dict(resolve_config(p.method, dataset, sets=sets, seed=seed)))
        keys = [k for k in SCALED_KEYS if not (student and k == "train.steps")]
        scaled = [(k, v) for k in keys if isinstance(v := cfg.get(k), int) and v > 0]
        return [s for s in sets if s.split("=", 1)[0] not in dict(scaled)] + scaled

    teacher = [p for p in planned if p.run_id in teachers]
    if len(teacher) > 1:
        raise BenchError(f"study budget: {grid} has several teacher jobs for {dataset}; the study shares one")
    titems = items(teacher[0], False) if teacher else []
    jobs = [(p.job, p.method, bool(p.after), items(p, bool(p.after))) for p in planned if p.run_id not in teachers]
    return titems, jobs


def plan(
    kind: str, scale: float, methods: list[str] | None = None, grid: tuple[list, list] | None = None
) -> tuple[list[str], list[Job]]:
    """(teacher --set overrides, jobs) of one budget scale for a data kind ("points" or "image"), from the
    built-in recipes or ``grid`` (:func:`grid_recipes` of the benchmark file)."""
    if grid is None and kind not in RECIPES:
        raise BenchError(
            f"study budget on {kind} takes its recipes from the benchmark file: add --grid results/benchmark.yaml"
        )
    r = {"teacher": grid[0], "common": GRID_COMMON, "jobs": grid[1]} if grid else RECIPES[kind]
    jobs = [Job(k, m, tuple(r["common"] + _scaled(items, scale)), t) for k, m, t, items in r["jobs"]]
    if methods:
        unknown = sorted(set(methods) - {j.key for j in jobs})
        if unknown:
            raise BenchError(f"study budget: unknown method(s) {unknown}; valid: {', '.join(j.key for j in jobs)}")
        jobs = [j for j in jobs if j.key in methods]
    return _scaled(r["teacher"], scale), jobs


STORAGE_KEYS = ("cache", "chunk")  # where trajectories live: never what is trained


def _signature(rec_or_cfg: dict, teacher_passes: int | None) -> tuple:
    """What makes two runs the same training: method config (teacher path aside), train, data, teacher budget."""
    c = rec_or_cfg
    m = {k: v for k, v in c["method"].items() if k not in ("teacher", *STORAGE_KEYS)}
    tflow = (c["method"].get("teacher") or {}).get("flow")
    return (
        repr(sorted(m.items())),
        repr(tflow),
        repr(sorted(c["train"].items())),
        repr(sorted(c["data"].items())),
        teacher_passes,
    )


def _matches(rec: dict, cfg: dict, seed: int, teacher_passes: int | None) -> bool:
    if (
        rec.get("status", "ok") != "ok"
        or rec["seed"] != seed
        or rec["config"]["method"]["name"] != cfg["method"]["name"]
    ):
        return False
    if rec["dataset"] != cfg["data"]["name"]:
        return False
    reused = (rec["train"].get("cost") or {}).get("reused") or {}
    got = resolved_config(rec["config"])  # keys added since the record (nested ones too) take their defaults
    return _signature(got, reused.get("network_passes")) == _signature(cfg, teacher_passes)


def _reusable_teacher(pool: list[dict], want: dict, seed: int) -> tuple[Path | None, int | None]:
    """A finished `flow` run with the teacher's config whose checkpoint is still on disk (folder, passes)."""
    for r in pool:
        ck = Path(r.get("workdir", "")) / "ckpt.pt"
        if _matches(r, want, seed, None) and ck.is_file():
            return ck.parent, r["train"]["cost"]["network_passes"]
    return None, None


def _scale_of(key: str) -> float:
    """The budget factor of a recipe key ("x0.125" -> 0.125)."""
    return float(key[1:])


def _teacher(pool, dataset, tsets, seed, f, smoke, runs_dir, device, progress) -> tuple[Path, int]:
    """The scale's teacher (folder, passes): a finished `flow` run on disk, the study's own, or trained now."""
    from bench.core.config import run_config_dict
    from bench.run.runner import resolve_config, train_run

    tcfg = resolve_config("flow", dataset, sets=tsets, seed=seed, smoke=smoke)
    found = _reusable_teacher(pool, run_config_dict(tcfg), seed)
    if found[0] is not None:
        return found
    tid = f"budget-{dataset}-teacher-x{f:g}-s{seed}{'-smoke' if smoke else ''}"
    resume = (Path(runs_dir) / tid / "ckpt.pt").is_file()
    _, tdir, _, _, st = train_run(tcfg, runs_dir, device, tid, resume, progress)
    return tdir, sum((st.passes or {}).values())


def data_kind(dataset: str) -> str:
    from bench.datasets.images import ImageDataset
    from bench.registry import DATASETS, load_builtins

    load_builtins()
    if dataset not in DATASETS:
        raise BenchError(f"unknown data set {dataset!r}; valid: {', '.join(DATASETS)}")
    return "image" if issubclass(DATASETS.get(dataset), ImageDataset) else "points"


def run_budget(
    dataset: str,
    scales: list[float],
    seeds: list[int],
    out_dir: Path,
    runs_dir: Path,
    device: torch.device,
    methods: list[str] | None = None,
    reuse: list[Path] = (),
    smoke: bool = False,
    progress: Any = None,
    grid: Path | None = None,
) -> dict:
    """Train and evaluate (or reuse) every job; write results/study/budget-DATA.{json,md} and the figure.
    ``grid``: a benchmark file whose jobs for ``dataset`` are the recipes (else the built-in RECIPES)."""
    from bench.core.config import run_config_dict
    from bench.core.records import scan_records
    from bench.run.runner import evaluate_and_record, resolve_config, train_run

    if not scales or any(f <= 0 for f in scales) or not seeds:
        raise BenchError(f"study budget: need scales > 0 and at least one seed (got {scales}, {seeds})")
    kind = data_kind(dataset)
    recipes_of = grid_recipes(grid, dataset) if grid is not None else None
    if grid is not None and recipes_of is None:
        raise BenchError(f"study budget: no suite of {grid} has the data set {dataset!r}")
    study_dir = Path(out_dir) / "study" / "budget" / dataset
    pool = [r for d in [study_dir, *map(Path, reuse)] for r in scan_records(d)[0]]
    old = Path(out_dir) / "study" / f"budget-{dataset}.json"
    try:
        prev = json.loads(old.read_text()) if old.is_file() else {}
    except (OSError, ValueError):
        prev = {}
    source = str(grid) if grid is not None else BUILTIN_SOURCE
    if prev.get("points") and prev.get("recipe_source", BUILTIN_SOURCE) != source:
        raise BenchError(
            f"study budget: {old} holds points of other recipes ({prev.get('recipe_source', BUILTIN_SOURCE)}), "
            f"not {source}; move it (e.g. to results/archive/study/) or run with those recipes"
        )
    teachers = dict(prev.get("teachers", {}))  # x<f>-s<seed> -> the teacher's sets, passes, folder
    points, recipes = [], {}
    for f in scales:
        tsets, jobs = plan(kind, f * (SMOKE_FACTOR if smoke else 1.0), methods, recipes_of)
        recipes[f"x{f:g}"] = {"teacher": tsets, **{j.key: [j.method, *j.sets] for j in jobs}}
        for seed in seeds:
            tkey, teacher_dir, teacher_passes = f"x{f:g}-s{seed}", None, None
            get_teacher = partial(_teacher, pool, dataset, tsets, seed, f, smoke, runs_dir, device, progress)
            known = teachers.get(tkey) if (teachers.get(tkey) or {}).get("sets") == list(tsets) else None
            for job in jobs:
                if job.teacher and teacher_passes is None:
                    # a teacher this study already used is matched by its pass count, folder or not; it is
                    # looked up or trained again only for a job below that has no reusable run
                    teacher_dir, teacher_passes = (Path(known["dir"]), known["passes"]) if known else get_teacher()
                sets = list(job.sets) + ([f"method.teacher.run={teacher_dir}"] if job.teacher else [])
                cfg = resolve_config(job.method, dataset, sets=sets, seed=seed, smoke=smoke)
                want, tp = run_config_dict(cfg), teacher_passes if job.teacher else None
                rec = next((r for r in pool if _matches(r, want, seed, tp)), None)
                if rec is None:
                    if job.teacher and not (teacher_dir / "ckpt.pt").is_file():
                        teacher_dir, teacher_passes = get_teacher()
                        sets[-1] = f"method.teacher.run={teacher_dir}"
                        cfg = resolve_config(job.method, dataset, sets=sets, seed=seed, smoke=smoke)
                    rid, wd, ds, m, state = train_run(cfg, runs_dir, device, progress=progress)
                    rec, _ = evaluate_and_record(cfg, rid, wd, ds, m, state, device, study_dir, progress=progress)
                    pool.append(rec)
                points.append(_point(rec, job.key, f))
            if teacher_dir is not None and (teacher_dir / "ckpt.pt").is_file():
                teachers[tkey] = {"sets": list(tsets), "passes": teacher_passes, "dir": str(teacher_dir)}
    out = Path(out_dir) / "study"
    if prev:  # earlier invocations' points (other scales or seeds) stay; this one's replace theirs
        done = {(p["method"], p["scale"], p["seed"]) for p in points}
        points = [p for p in prev.get("points", []) if (p["method"], p["scale"], p["seed"]) not in done] + points
        old_recipes = prev.get("recipes", {})  # merged per job: a --methods subset keeps the others' recipes
        keys = sorted({*old_recipes, *recipes}, key=_scale_of)  # a set: sorted, so the file does not churn
        recipes = {k: {**old_recipes.get(k, {}), **recipes.get(k, {})} for k in keys}
        scales = sorted({p["scale"] for p in points})
        seeds = sorted({p["seed"] for p in points})
    result = {
        "study": "budget",
        "dataset": dataset,
        "kind": kind,
        "scales": scales,
        "seeds": seeds,
        "recipes": recipes,
        "recipe_source": source,
        "teachers": dict(sorted(teachers.items())),
        "points": points,
        "table": budget_table(points),
    }
    atomic_write_json(out / f"budget-{dataset}.json", result)
    atomic_write_text(out / f"budget-{dataset}.md", render_budget(result))
    fig = Path(out_dir) / "figures" / dataset / "quality_vs_budget.png"
    fig.parent.mkdir(parents=True, exist_ok=True)
    fig.write_bytes(budget_figure(result))
    return result


def _point(rec: dict, key: str, scale: float) -> dict:
    """One run's NFE-1 quality (first quality metric of its one-step row) and its total training cost."""
    one = [r for r in rec["rows"] if r["nfe"] == 1 and not r["label"].endswith("(teacher)")]
    if not one:
        raise BenchError(f"run {rec['run_id']}: no NFE-1 row of the method itself")
    row = one[0]
    metric = quality_metric(row["metrics"])
    if metric is None:
        raise BenchError(f"run {rec['run_id']}: its NFE-1 row has no W2, FID or fd_* metric")
    cost = rec["train"]["cost"]
    return {
        "method": key,
        "scale": scale,
        "seed": rec["seed"],
        "run_id": rec["run_id"],
        "label": row["label"],
        "metric": metric,
        "value": row["metrics"][metric]["mean"],
        "passes": cost["network_passes"],
        "train_s": cost["total_wall_clock_s"],
        "device": rec["device"],
    }


def budget_table(points: list[dict]) -> list[dict]:
    """Per (scale, method): mean +- std over seeds of quality, passes and seconds; rank within the scale."""
    out = []
    for f in sorted({p["scale"] for p in points}):
        rows = []
        for key in dict.fromkeys(p["method"] for p in points if p["scale"] == f):
            ps = [p for p in points if p["scale"] == f and p["method"] == key]
            (qm, qs), (pm, _), (tm, _) = (mean_std([p[k] for p in ps]) for k in ("value", "passes", "train_s"))
            rows.append(
                {
                    "scale": f,
                    "method": key,
                    "metric": ps[0]["metric"],
                    "mean": qm,
                    "std": qs,
                    "n_seeds": len(ps),
                    "passes": pm,
                    "train_s": tm,
                }
            )
        for rank, r in enumerate(sorted(rows, key=lambda r: r["mean"]), 1):
            r["rank"] = rank
        out += rows
    return out


def render_budget(r: dict) -> str:
    metric = r["table"][0]["metric"] if r["table"] else "-"
    lines = [
        f"# Study `budget` on `{r['dataset']}`: one-step quality against total training cost",
        "",
        f"Each method's base recipe ({r.get('recipe_source', BUILTIN_SOURCE)}) with every step count, its teacher's",
        "included, scaled by the budget factor; teacher-based methods share one teacher per (scale, seed).",
        f"Seeds {r['seeds']}. Quality: {metric}",
        "at NFE 1 (mean over evaluation repeats, then mean ± std over training seeds); cost: network passes",
        "during training (forward 1, backward 2, per sample; teacher included) and wall-clock (not comparable",
        "across runs made under different loads).",
        "Device: " + ", ".join(sorted({p["device"] for p in r["points"]})) + ".",
        "",
        f"| budget | rank | method | {metric}, NFE 1 | seeds | passes (M) | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in sorted(r["table"], key=lambda t: (t["scale"], t["rank"])):
        spread = f" ± {t['std']:.2g}" if t["n_seeds"] > 1 else ""  # no spread from one seed
        lines.append(
            f"| x{t['scale']:g} | {t['rank']} | {t['method']} | {t['mean']:.4g}{spread} | {t['n_seeds']} | "
            f"{t['passes'] / 1e6:.2f} | {t['train_s']:.0f} |"
        )
    eq = equal_cost(r["table"])
    if eq:
        ref = eq[0]["reference"]
        lines += [
            "",
            f"At equal cost: each method's {metric} interpolated (log-log, between its two measured budgets around",
            f"the target; never extrapolated: `-`) at the passes `{ref}` spent at each budget, ranked:",
            "",
            "| passes (M) | " + " | ".join(eq[0]["values"]) + " |",
            "|---|" + "---|" * len(eq[0]["values"]),
        ]
        for e in eq:
            cells = ["-" if v is None else f"{v:.4g} ({e['ranks'][k]})" for k, v in e["values"].items()]
            lines.append(f"| {e['passes'] / 1e6:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "Recipes (the --set overrides of each job; the teacher's are `flow` overrides):", ""]
    for scale, rec in sorted(r["recipes"].items(), key=lambda kv: _scale_of(kv[0])):
        lines.append(f"- {scale}: " + "; ".join(f"{k}: `{' '.join(v)}`" for k, v in rec.items()))
    lines += [
        "",
        "Commands (add `--reuse results` to reuse matching runs of the leaderboard):",
        "",
    ]
    groups: dict[tuple, list] = {}
    for f in r["scales"]:
        groups.setdefault(tuple(sorted({p["seed"] for p in r["points"] if p["scale"] == f})), []).append(f)
    for seeds, fs in groups.items():
        src = r.get("recipe_source", BUILTIN_SOURCE)
        lines.append(
            f"    bench study budget --dataset {r['dataset']} --scales {','.join(f'{f:g}' for f in fs)} "
            f"--seeds {','.join(map(str, seeds))}" + ("" if src == BUILTIN_SOURCE else f" --grid {src}")
        )
    lines.append("")
    return "\n".join(lines)


def budget_figure(r: dict) -> bytes:
    """Quality at NFE 1 against training passes, one line per method (mean ± std over seeds), log-log."""
    from bench.output.report import FigureSpec, figure_png, figure_style

    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        for i, key in enumerate(dict.fromkeys(t["method"] for t in r["table"])):
            ts = sorted((t for t in r["table"] if t["method"] == key), key=lambda t: t["passes"])
            st = figure_style(i)
            ax.errorbar(
                [t["passes"] for t in ts],
                [t["mean"] for t in ts],
                yerr=[t["std"] for t in ts],
                label=key,
                capsize=3,
                color=st["color"],
                marker=st["marker"],
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training network passes (teacher included)")
        ax.set_ylabel(f"{r['table'][0]['metric'] if r['table'] else ''} at NFE 1")
        ax.set_title(f"{r['dataset']}: quality vs total training cost")
        ax.legend(fontsize=8)

    return figure_png(FigureSpec(r["dataset"], "budget", "", "", draw))
