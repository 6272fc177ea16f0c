"""`bench study budget`: scaled recipes, one teacher per (scale, seed), reuse of finished runs, outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench.studies.budget import budget_table, plan

GRID = Path(__file__).resolve().parents[1] / "results" / "benchmark.yaml"


def test_plan_scales_every_step_count_of_the_benchmark_recipes_and_the_teachers():
    from bench.studies.budget import grid_recipes

    tsets, jobs = plan("points", 0.5, grid=grid_recipes(GRID, "checkerboard"))
    assert tsets == ["train.steps=2000"]  # the flow job: the teacher the students share
    by = {j.key: j for j in jobs}
    assert {"chargen", "cd", "ct", "reflow", "shortcut", "meanflow", "sct", "scd", "imeanflow"} <= set(by)
    assert "flow" not in by
    assert "method.fit_steps=1500" in by["chargen"].sets and by["chargen"].teacher  # its default 3,000
    assert not any(s.startswith("train.steps=") for s in by["chargen"].sets)  # a student's is its teacher's
    assert {"method.reflow_steps=1500", "method.distill_steps=1500"} <= set(by["reflow"].sets)
    assert "train.steps=3500" in by["shortcut"].sets and not by["shortcut"].teacher
    assert "train.steps=7000" not in by["shortcut"].sets  # the job's own value is replaced, not repeated
    assert "method.mode=ct" in by["ct"].sets
    assert {"method.fit_steps=3500", "method.tangent_warmup=500"} <= set(by["sct"].sets)
    assert {"method.adaptive_p=0.5", "method.time_sampler=uniform"} <= set(by["meanflow"].sets)  # recipe kept
    x1 = {j.key: j for j in plan("points", 1.0, grid=grid_recipes(GRID, "checkerboard"))[1]}
    assert "train.steps=7000" in x1["shortcut"].sets


def test_points_without_a_benchmark_file_is_one_clear_error():
    import pytest

    from bench.errors import BenchError
    from bench.studies.budget import grid_recipes

    with pytest.raises(BenchError, match="--grid"):
        plan("points", 0.5)
    assert grid_recipes(GRID, "no-such-set") is None


def test_image_reflow_solves_as_many_teacher_steps_as_chargen():
    _, jobs = plan("image", 0.25)
    by = {j.key: set(j.sets) for j in jobs}
    assert {"method.n_traj=8192", "method.euler_steps=32", "method.solver=heun"} <= by["chargen"]
    assert {"method.n_pairs=8192", "method.pair_steps=64"} <= by["reflow"]  # 32 Heun steps = 64 evaluations


def test_a_record_lacking_a_nested_defaulted_key_is_reused():
    """Reuse compares configs resolved against today's defaults, nested sections included (method.net)."""
    from bench.core.config import run_config_dict
    from bench.run.runner import resolve_config
    from bench.studies.budget import _matches

    want = run_config_dict(resolve_config("shortcut", "moons", sets=["train.steps=70"], seed=0))
    saved = json.loads(json.dumps(want))
    del saved["method"]["net"]["depth"], saved["train"]["grad_clip"], saved["method"]["nfe"]
    rec = {"status": "ok", "seed": 0, "dataset": "moons", "config": saved, "train": {"cost": {}}}
    assert _matches(rec, want, 0, None)
    saved["method"]["net"]["hidden"] += 1
    assert not _matches(rec, want, 0, None)
    assert not _matches({**rec, "seed": 1}, want, 0, None)


def test_table_ranks_means_within_each_budget():
    pts = [
        {"scale": 1, "method": "a", "metric": "w2", "value": v, "passes": 10, "train_s": 1.0} for v in (0.3, 0.5)
    ] + [{"scale": 1, "method": "b", "metric": "w2", "value": 0.2, "passes": 12, "train_s": 1.0}]
    t = {r["method"]: r for r in budget_table(pts)}
    assert t["b"]["rank"] == 1 and t["a"]["rank"] == 2 and t["a"]["n_seeds"] == 2
    assert abs(t["a"]["mean"] - 0.4) < 1e-12 and t["a"]["std"] > 0


def test_budget_study_smoke_runs_reuses_and_writes_figure(bench_cli):
    args = ["study", "budget", "--dataset", "moons", "--scales", "0.5,1", "--seeds", "0", "--smoke"]
    args += ["--methods", "chargen,shortcut", "--device", "cpu", "--grid", str(GRID)]
    code, stdout, err = bench_cli(*args)
    assert code == 0, err
    res = json.loads((bench_cli.results / "study" / "budget-moons.json").read_text())
    pts = res["points"]
    assert len(pts) == 4 and {p["method"] for p in pts} == {"chargen", "shortcut"}
    by = {(p["method"], p["scale"]): p for p in pts}
    for m in ("chargen", "shortcut"):  # twice the budget, about twice the passes (teacher included)
        assert 1.6 < by[(m, 1.0)]["passes"] / by[(m, 0.5)]["passes"] <= 2.05
    assert (bench_cli.results / "figures" / "moons" / "quality_vs_budget.png").stat().st_size > 1000
    assert "| x1 | 1 |" in (bench_cli.results / "study" / "budget-moons.md").read_text()
    n_records = len(list((bench_cli.results / "study" / "budget" / "moons" / "runs").glob("**/*.json")))
    code, _, err = bench_cli(*args)  # everything is reused: no new run, same table
    assert code == 0, err
    assert len(list((bench_cli.results / "study" / "budget" / "moons" / "runs").glob("**/*.json"))) == n_records == 4
    assert json.loads((bench_cli.results / "study" / "budget-moons.json").read_text())["table"] == res["table"]
    shutil.rmtree(bench_cli.runs)  # checkpoints gone (a fresh clone): the study still reuses every record
    code, _, err = bench_cli(*args)
    assert code == 0, err
    assert not bench_cli.runs.exists(), "the teacher was trained again though no job needed it"
    assert json.loads((bench_cli.results / "study" / "budget-moons.json").read_text())["table"] == res["table"]
    runs = bench_cli.results / "study" / "budget" / "moons" / "runs"
    steps = {json.loads(p.read_text())["config"]["method"]["fit_steps"]: p for p in runs.glob("**/chargen-*.json")}
    steps[min(steps)].unlink()  # chargen x0.5 has no record now: its teacher is trained again for it
    code, _, err = bench_cli(
        *args[:4], "--scales", "0.5", "--seeds", "0", "--smoke", "--methods", "chargen", *args[-2:]
    )
    assert code == 0, err
    assert len(list(runs.glob("**/*.json"))) == n_records and len(list(bench_cli.runs.glob("budget-*/ckpt.pt"))) == 1
    code, _, err = bench_cli(
        *args[:4], "--scales", "0.5", "--seeds", "0", "--smoke", "--methods", "shortcut", *args[-2:]
    )
    assert code == 0, err  # a later subset keeps the other jobs' points and recipes at the same scale
    again = json.loads((bench_cli.results / "study" / "budget-moons.json").read_text())
    assert set(again["recipes"]["x0.5"]) == {"teacher", "chargen", "shortcut"}
    timeless = [[{k: v for k, v in r.items() if k != "train_s"} for r in t["table"]] for t in (again, res)]
    assert timeless[0] == timeless[1]  # chargen trained again from a retrained teacher: same W2, same passes
    code, _, err = bench_cli("study", "budget", "--dataset", "moons", "--methods", "nope", "--smoke", *args[-2:])
    assert code == 2 and "unknown method" in err
    code, _, err = bench_cli("study", "budget", "--dataset", "moons", "--smoke")  # the results hold grid points
    assert code == 2 and "other recipes" in err and "Traceback" not in err


def test_equal_cost_interpolates_log_log_and_never_extrapolates():
    from bench.studies.budget import equal_cost

    t = [{"method": "chargen", "passes": p, "mean": q} for p, q in ((2.0, 0.3), (8.0, 0.2))]
    t += [{"method": "b", "passes": p, "mean": q} for p, q in ((1.0, 1.0), (4.0, 0.25))]  # q = 1 / p
    eq = equal_cost(t)
    assert [e["passes"] for e in eq] == [2.0, 8.0]
    assert abs(eq[0]["values"]["b"] - 0.5) < 1e-12 and eq[0]["ranks"] == {"chargen": 1, "b": 2}
    assert eq[1]["values"]["b"] is None and eq[1]["ranks"] == {"chargen": 1}  # 8 is beyond b's budgets


def test_main_table_gets_quality_at_chargens_passes_from_a_grid_budget_study(tmp_path):
    from bench.output.leaderboard import attach_equal_cost, render_markdown

    pts = [("chargen", "chargen[k]", 0.5, 4.0, 0.4), ("chargen", "chargen[k]", 1, 8.0, 0.3)]
    pts += [("sct", "scm[sct]", 0.5, 2.0, 1.0), ("sct", "scm[sct]", 1, 16.0, 0.125)]  # q = 2 / p
    pts += [("tvm", "tvm", 0.5, 10.0, 0.5), ("tvm", "tvm", 1, 20.0, 0.4)]  # starts above chargen's cost
    points = [
        {"method": m, "label": lab, "scale": f, "seed": 0, "passes": p, "value": q, "metric": "w2", "train_s": 1.0}
        for m, lab, f, p, q in pts
    ]
    study = {"recipe_source": "results/benchmark.yaml", "seeds": [0], "scales": [0.5, 1], "points": points}
    study["table"] = budget_table(points)
    (tmp_path / "budget-moons.json").write_text(json.dumps(study))
    row = {"solver": "onestep", "nfe": 1, "nfe_sort": 1, "values": {"w2": [0.3]}, "per_sample_s": None}
    row |= {"ratio": None, "loaded": False, "train_s": None, "train_teacher_added": False, "train_passes": None}
    row |= {"seeds": 1, "copies_dropped": 0, "device": "cpu", "config": "c"}
    rows = [{**row, "method": m} for m in ("chargen[k]", "scm[sct]", "tvm", "flow")]
    rows.append({**row, "method": "scm[sct]", "nfe": 2, "nfe_sort": 2})
    table = {"title": "moons", "kind": "main", "key": ("moons", "{}", None), "metrics": ["w2"], "main": ["w2"]}
    table |= {"rows": rows, "floor": {}, "floor_what": [], "proto": {"w2": {}}, "ambiguous": []}
    table |= {"dropped_runs": [], "diverged": []}
    attach_equal_cost([table], tmp_path)
    got = {(r["method"], r["nfe_sort"]): r.get("equal_cost", "absent") for r in rows}
    assert abs(got[("scm[sct]", 1)] - 0.25) < 1e-12 and abs(got[("chargen[k]", 1)] - 0.3) < 1e-12
    assert got[("tvm", 1)] is None and got[("flow", 1)] == "absent" and got[("scm[sct]", 2)] == "absent"
    md = render_markdown([table])
    assert "w2 at chargen's passes" in md and "| 0.25 |" in md and "| n/a |" in md and "8.0e-06" not in md
    study["recipe_source"] = "built-in (bench/studies/budget.py RECIPES)"  # other recipes: no column
    (tmp_path / "budget-moons.json").write_text(json.dumps(study))
    for r in rows:
        r.pop("equal_cost", None)
    table.pop("equal_cost")
    attach_equal_cost([table], tmp_path)
    assert "equal_cost" not in table and "chargen's passes" not in render_markdown([table])
