"""`bench study`: the paper's checkable claims as sweeps, with log-log fits written to results/study/.

Each study varies one quantity, trains/evaluates chargen (and its teacher) over several seeds, and fits
log(error) = a + slope * log(x) by least squares on the per-point means (slope +- standard error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import linregress

from bench.core.checkpoint import atomic_write_json, atomic_write_text
from bench.core.stats import mean_std
from bench.errors import BenchError

# a small budget per point so that a full study runs in minutes on 2 CPU cores
BASE_SETS = [
    "train.steps=1500",
    "train.batch_size=256",
    "method.fit_steps=1000",
    "method.n_traj=5000",
    "eval.n_gen=2000",
    "eval.n_ref=2000",
    "eval.repeats=1",
    "eval.timing=false",
    "method.compose=[1]",
]


@dataclass
class Study:
    name: str
    claim: str
    dataset: str
    axis: str  # the config key that varies
    values: list[Any]
    x_label: str
    fixed: list[str] = field(default_factory=list)  # extra --set overrides
    reuse_teacher: bool = False  # the axis does not touch the teacher: train it once per seed


STUDIES: dict[str, Study] = {
    s.name: s
    for s in [
        Study(
            "euler_steps",
            "W2 of chargen (NFE 1) vs the number K of Euler steps of the characteristics",
            "checkerboard",
            "method.euler_steps",
            [2, 4, 8, 16, 32],
            "K",
            reuse_teacher=True,
        ),
        Study(
            "sample_size",
            "W2 of chargen (NFE 1) vs the training sample size n (teacher and fit on n points)",
            "checkerboard",
            "data.n_train",
            [250, 1000, 4000, 16000],
            "n",
        ),
        Study(
            "intrinsic_dim",
            "W2 vs intrinsic dimension d of a sphere S^d at fixed ambient D = 16",
            "sphere",
            "data.d",
            [1, 2, 4, 8],
            "d",
            fixed=["data.D=16"],
        ),
        Study(
            "ambient_dim",
            "W2 vs ambient dimension D at fixed intrinsic dimension d = 2 (sphere S^2)",
            "sphere",
            "data.D",
            [4, 8, 16, 32],
            "D",
            fixed=["data.d=2"],
        ),
    ]
}


def loglog_fit(xs: list[float], ys: list[float]) -> dict:
    """Least-squares slope of log y on log x (``scipy.stats.linregress``) with its standard error and R^2."""
    if len(xs) < 2:
        return {"slope": float("nan"), "slope_se": float("nan"), "intercept": float("nan"), "r2": float("nan")}
    fit = linregress(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)))
    return {
        "slope": float(fit.slope),
        "slope_se": float(fit.stderr),
        "intercept": float(fit.intercept),
        "r2": float(fit.rvalue**2),
    }


def run_study(
    name: str,
    seeds: list[int],
    out_dir: Path,
    runs_dir: Path,
    device: torch.device,
    extra_sets: list[str] | None = None,
    values: list[Any] | None = None,
    progress: Any = None,
) -> dict:
    from bench.run.runner import evaluate_and_record, resolve_config, train_run

    if name not in STUDIES:
        raise BenchError(f"unknown study {name!r}; valid: {', '.join(STUDIES)}")
    st = STUDIES[name]
    values = values or st.values
    rec_dir = Path(out_dir) / "study" / name
    sets0 = BASE_SETS + st.fixed + list(extra_sets or [])
    points = []
    for v in values:
        per_seed = []
        for seed in seeds:
            sets = sets0 + [f"{st.axis}={v}"]
            teacher_nfe = v if st.axis == "method.euler_steps" else 20
            sets.append(f"eval.nfe=[{teacher_nfe}]")
            if st.reuse_teacher:
                sets.append(f"method.teacher.run={_teacher_for(st, seed, sets0, runs_dir, device, progress)}")
            cfg = resolve_config("chargen", st.dataset, sets=sets, seed=seed)
            rid, wd, ds, m, state = train_run(cfg, runs_dir, device, progress=progress)
            rec, _ = evaluate_and_record(cfg, rid, wd, ds, m, state, device, rec_dir, progress=progress)
            one = next(r for r in rec["rows"] if r["solver"] == "onestep")
            teach = next(r for r in rec["rows"] if r["label"].endswith("(teacher)"))
            per_seed.append(
                {
                    "seed": seed,
                    "run_id": rid,
                    "chargen_w2": one["metrics"]["w2"]["mean"],
                    "teacher_w2": teach["metrics"]["w2"]["mean"],
                    "teacher_nfe": teacher_nfe,
                    "floor_w2": rec["reference_floor"]["w2"]["mean"],
                    "train_s": rec["train"]["total_s"],
                }
            )
        points.append(
            {
                "x": v,
                "seeds": per_seed,
                **{
                    f"{k}_{agg}": v
                    for k in ("chargen_w2", "teacher_w2", "floor_w2")
                    for agg, v in zip(("mean", "std"), mean_std([p[k] for p in per_seed]), strict=True)
                },
            }
        )
    result = {
        "study": name,
        "claim": st.claim,
        "dataset": st.dataset,
        "axis": st.axis,
        "x_label": st.x_label,
        "seeds": seeds,
        "budget": sets0,
        "device": rec["device"],
        "points": points,
        "fit_chargen": loglog_fit([p["x"] for p in points], [p["chargen_w2_mean"] for p in points]),
        "fit_teacher": loglog_fit([p["x"] for p in points], [p["teacher_w2_mean"] for p in points]),
        "fit_floor": loglog_fit([p["x"] for p in points], [p["floor_w2_mean"] for p in points]),
    }
    out = Path(out_dir) / "study"
    atomic_write_json(out / f"{name}.json", result)
    atomic_write_text(out / f"{name}.md", render_study(result))
    return result


_teachers: dict[tuple, str] = {}


def _teacher_for(st: Study, seed: int, sets0: list[str], runs_dir: Path, device, progress) -> str:
    from bench.run.runner import resolve_config, train_run

    key = (st.name, seed, tuple(sets0))
    if key not in _teachers:
        tsets = [s for s in sets0 if s.startswith(("train.", "data."))]
        cfg = resolve_config("flow", st.dataset, sets=tsets, seed=seed)
        _, wd, *_ = train_run(cfg, runs_dir, device, progress=progress)
        _teachers[key] = str(wd)
    return _teachers[key]


def render_study(r: dict) -> str:
    f, ft, ff = r["fit_chargen"], r["fit_teacher"], r["fit_floor"]
    lines = [
        f"# Study `{r['study']}`: {r['claim']}",
        "",
        f"Data set `{r['dataset']}`, varying `{r['axis']}`; seeds {r['seeds']}; device {r['device']}.",
        "Budget per point: " + ", ".join(f"`{s}`" for s in r["budget"]) + ".",
        "W2: exact (POT emd2) between n_gen generated and n_ref fresh reference samples; the floor is W2",
        "between two independent reference sets of the same size (the estimator's own bias at this n).",
        "",
        f"| {r['x_label']} | chargen W2 (NFE 1) | teacher W2 (Euler, NFE) | reference floor |",
        "|---|---|---|---|",
    ]
    for p in r["points"]:
        lines.append(
            f"| {p['x']} | {p['chargen_w2_mean']:.4f} ± {p['chargen_w2_std']:.4f} | "
            f"{p['teacher_w2_mean']:.4f} ± {p['teacher_w2_std']:.4f} ({p['seeds'][0]['teacher_nfe']}) | "
            f"{p['floor_w2_mean']:.4f} ± {p['floor_w2_std']:.4f} |"
        )
    lines += [
        "",
        "Log-log least-squares fits, log W2 = a + slope · log x (slope ± standard error, R²):",
        "",
        f"- chargen: slope {f['slope']:.3f} ± {f['slope_se']:.3f}, R² {f['r2']:.2f}",
        f"- teacher: slope {ft['slope']:.3f} ± {ft['slope_se']:.3f}, R² {ft['r2']:.2f}",
        f"- reference floor: slope {ff['slope']:.3f} ± {ff['slope_se']:.3f}, R² {ff['r2']:.2f}",
        "",
    ]
    return "\n".join(lines)
