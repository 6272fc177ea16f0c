"""results/benchmark.yaml: it validates; its sweep reuses finished runs and runs teachers first; the leaderboard's
main tables hold only its jobs, one row per (method, solver, NFE), and archived records are never rendered."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.registry import load_builtins
from bench.run.benchmark import plan, recipes
from bench.run.runner import resolve_config

ROOT = Path(__file__).resolve().parents[1]
FAST = ["eval.nfe=[1]", "eval.solvers=[euler]", "eval.timing=false", "eval.n_gen=300", "eval.n_ref=300"]

TINY = {
    "smoke": True,
    "sets": FAST,
    "suites": {
        "points": {
            "datasets": ["moons"],
            "seeds": [0],
            "jobs": [
                {"name": "flow", "method": "flow", "recipe": "test", "sets": ["train.steps=30"]},
                {"name": "chargen", "method": "chargen", "teacher": "flow", "recipe": "test"},
            ],
        }
    },
}


def test_committed_benchmark_validates():
    load_builtins()
    jobs = plan(ROOT / "results" / "benchmark.yaml")
    assert len({p.run_id for p in jobs}) == len(jobs)
    for p in jobs:  # every job resolves (its teacher's run id need not exist yet)
        resolve_config(p.method, p.dataset, None, [s for s in p.sets if "teacher.run" not in s], p.seed, False)
    points = [p for p in jobs if p.suite == "points"]
    assert {p.dataset for p in points} == {"checkerboard", "8gaussians", "moons"}
    assert {p.seed for p in points} == {0, 1, 2}
    order = {p.run_id: i for i, p in enumerate(jobs)}
    assert all(order[p.after] < order[p.run_id] for p in jobs if p.after)  # teachers first
    names = recipes(ROOT / "results" / "benchmark.yaml")
    assert {"flow", "chargen", "cd", "ct", "reflow", "shortcut", "meanflow", "gan-ns"} <= set(names)
    assert all(len(r) > 20 for _, r in names.values())  # every recipe says where it comes from


def test_run_ids_are_deterministic_and_follow_the_recipe():
    a, b = plan(TINY), plan(json.loads(json.dumps(TINY)))
    assert [p.run_id for p in a] == [p.run_id for p in b]
    changed = json.loads(json.dumps(TINY))
    changed["suites"]["points"]["jobs"][0]["sets"] = ["train.steps=31"]
    c = plan(changed)
    assert a[0].run_id != c[0].run_id and a[1].run_id != c[1].run_id  # the student follows its teacher
    assert c[1].after == c[0].run_id and f"method.teacher.run={c[0].run_id}" in c[1].sets


@pytest.mark.parametrize(
    ("edit", "msg"),
    [
        (lambda d: d["suites"]["points"]["jobs"][1].update(teacher="nope"), "not an earlier job"),
        (lambda d: d["suites"]["points"]["jobs"][1].update(name="flow"), "unique"),
        (lambda d: d["suites"]["points"]["jobs"][0].update(recipe=" "), "recipe"),
        (lambda d: d["suites"]["points"].update(colour="red"), "unknown config key"),
        (lambda d: d.update(suites={}), "non-empty mapping"),
        (lambda d: d["suites"]["points"]["jobs"][1].update(seeds=[5]), "not all among the suite's"),
        (
            lambda d: d["suites"]["points"]["jobs"][0].update(seeds=[0]) or d["suites"]["points"].update(seeds=[0, 1]),
            "among its teacher flow's seeds",
        ),
    ],
)
def test_bad_benchmark_files_are_one_clear_error(edit, msg):
    d = json.loads(json.dumps(TINY))
    edit(d)
    with pytest.raises(BenchError, match=msg):
        plan(d)


def test_a_job_can_run_fewer_seeds_than_its_suite():
    d = json.loads(json.dumps(TINY))
    d["suites"]["points"]["seeds"] = [0, 1, 2]
    d["suites"]["points"]["jobs"][1]["seeds"] = [0]
    jobs = plan(d)
    assert [(p.job, p.seed) for p in jobs] == [("flow", 0), ("chargen", 0), ("flow", 1), ("flow", 2)]
    d["suites"]["points"]["jobs"][1]["seeds"] = []
    assert plan(d)[1].run_id == jobs[1].run_id  # the job's own seed list does not enter its run ids


def test_sweep_job_filter_runs_a_job_and_the_teachers_it_waits_for(tmp_path):
    import yaml

    d = json.loads(json.dumps(TINY))
    d["suites"]["points"]["jobs"].append({"name": "flow2", "method": "flow", "recipe": "test"})
    grid = tmp_path / "benchmark.yaml"
    grid.write_text(yaml.safe_dump(d))
    p = _bench(tmp_path, "sweep", str(grid), "--dry-run", "--job", "chargen")
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(("todo", "done"))]
    assert [ln.split("--method ")[1].split()[0] for ln in lines] == ["flow", "chargen"]
    p = _bench(tmp_path, "sweep", str(grid), "--dry-run", "--job", "nope")
    assert p.returncode == 2 and "--job 'nope' is not a job" in p.stderr


def _bench(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_sweep_reuses_finished_runs_and_main_table_holds_only_benchmark_rows(tmp_path):
    import yaml

    results = tmp_path / "results"
    results.mkdir()
    (results / "benchmark.yaml").write_text(yaml.safe_dump(TINY))
    args = ["sweep", str(results / "benchmark.yaml"), "--out", str(results), "--runs-dir", str(tmp_path / "runs")]
    p = _bench(tmp_path, *args)
    assert p.returncode == 0, p.stdout + p.stderr
    recs = sorted(results.glob("runs/**/*.json"))
    assert [json.loads(r.read_text())["run_id"] for r in recs] == sorted(j.run_id for j in plan(TINY))
    stamp = [r.stat().st_mtime_ns for r in recs]
    p = _bench(tmp_path, *args)  # everything finished: nothing runs again
    assert p.returncode == 0 and "2 finished (reused), 0 to run" in p.stdout + p.stderr, p.stdout + p.stderr
    assert [r.stat().st_mtime_ns for r in recs] == stamp

    # a fresh clone has the records but no run folders: a student still to run gets its teacher re-trained
    # (checkpoint only; the teacher's record is kept as it is)
    teacher_id, student_id = (j.run_id for j in plan(TINY))
    student = next(r for r in recs if json.loads(r.read_text())["run_id"] == student_id)
    teacher = next(r for r in recs if r != student)
    shutil.rmtree(tmp_path / "runs")
    student.unlink()
    p = _bench(tmp_path, *args)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (tmp_path / "runs" / teacher_id / "ckpt.pt").is_file() and student.is_file()
    assert teacher.stat().st_mtime_ns == stamp[recs.index(teacher)]
    assert "checkpoint re-trained" in p.stdout + p.stderr

    # a user's extra run goes to "more rows"; an archived record is not rendered at all
    p = _bench(
        tmp_path,
        "run",
        "--method",
        "flow",
        "--dataset",
        "moons",
        "--smoke",
        "--set",
        "train.steps=31",
        *[x for s in FAST for x in ("--set", s)],
        "--out",
        str(results),
        "--runs-dir",
        str(tmp_path / "runs"),
    )
    assert p.returncode == 0, p.stderr
    extra = next(r for r in results.glob("runs/**/*.json") if r not in recs)
    archived = results / "archive" / "runs" / "moons" / "old-run.json"
    archived.parent.mkdir(parents=True)
    old = json.loads(recs[0].read_text())
    old.update(run_id="old-run", method_label="archived-method")
    for row in old["rows"]:
        row["label"] = "archived-method"
    archived.write_text(json.dumps(old))
    p = _bench(tmp_path, "leaderboard", "--out", str(results))
    assert p.returncode == 0, p.stderr
    from bench.core.records import scan_records
    from bench.output.leaderboard import benchmark_run_ids, split_tables

    records, _ = scan_records(results)
    tables = split_tables(records, benchmark_run_ids(results))
    main = [t for t in tables if t["kind"] == "main"]
    more = [t for t in tables if t["kind"] == "more"]
    assert len(main) == 1 and len(more) == 1
    keys = Counter((r["method"], r["solver"], r["nfe_sort"]) for r in main[0]["rows"])
    assert keys and max(keys.values()) == 1
    assert not any(r["method"].endswith("(teacher)") for r in main[0]["rows"])
    assert set(more[0]["rows"][0]["runs"]) == {json.loads(extra.read_text())["run_id"]}
    md = (results / "LEADERBOARD.md").read_text()
    assert "archived-method" not in md and "more rows (not benchmark jobs)" in md
    shutil.rmtree(tmp_path / "runs")


def test_headline_table_from_benchmark_records(tmp_path):
    """The README's headline block is rebuilt from the benchmark's records (here: none yet -> dashes)."""
    import yaml

    from bench.output import headline

    results = tmp_path / "results"
    results.mkdir()
    (results / "benchmark.yaml").write_text(yaml.safe_dump(TINY))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{headline.START}\nold\n{headline.END}\nrest\n")
    headline.write(readme, results)
    text = readme.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert "| chargen | 1 | - | - |" in text and "moons W2 (seeds)" in text


def test_students_of_per_seed_teachers_share_one_config_group():
    """The benchmark trains one teacher per seed; the run folder a student read it from is provenance, not
    config, so the seeds' records share a row, while a different teacher config does not."""
    from bench.output.leaderboard import _config_key

    def rec(seed: int, teacher_run: str, hidden: int = 256) -> dict:
        flow = {"net": {"hidden": hidden}}
        return {
            "config": {
                "method_name": "chargen",
                "seed": seed,
                "method": {"teacher": {"run": teacher_run, "flow": flow}},
            }
        }

    a, b = rec(0, "flow-checkerboard-s0-aaaaaa"), rec(1, "flow-checkerboard-s1-bbbbbb")
    assert _config_key(a) == _config_key(b)
    assert _config_key(a) != _config_key(rec(0, "flow-checkerboard-s0-aaaaaa", hidden=128))


def test_a_record_made_with_other_defaults_is_stale():
    """Run ids hash the job's sets, not the defaults: the sweep compares a finished record's resolved config with
    what the job resolves to today and refuses to reuse one that differs (it names the keys)."""
    from bench.core.config import run_config_dict
    from bench.run.benchmark import stale_keys

    job = next(j for j in plan(TINY) if j.method == "flow")
    config = run_config_dict(resolve_config(job.method, job.dataset, None, list(job.sets), job.seed, job.smoke))
    assert stale_keys(job, {"config": config}) == []
    config["train"]["grad_clip"] = 0.5  # as if the default had changed since the record was made
    del config["method"]["net"]["time_max_freq"]  # a key the record predates is filled with its legacy value
    assert stale_keys(job, {"config": config}) == ["method.net.time_max_freq", "train.grad_clip"]


def test_headline_cells_count_the_seeds_of_their_own_data_set(tmp_path):
    """A headline cell is the mean ± sample std of that data set's values and names how many training seeds it
    has: a job with 2 seeds on moons and 1 on 8gaussians shows (2) and (1), not one union of seeds for the row."""
    import statistics

    import yaml
    from test_records import _record, _row

    from bench.core.records import write_record
    from bench.output import headline
    from bench.run.benchmark import plan

    raw = {**TINY, "suites": {"points": {**TINY["suites"]["points"], "datasets": ["moons", "8gaussians"]}}}
    raw["suites"]["points"]["seeds"] = [0, 1]
    results = tmp_path / "results"
    results.mkdir()
    (results / "benchmark.yaml").write_text(yaml.safe_dump(raw))
    values = {("moons", 0): (0.30, 0.32), ("moons", 1): (0.40, 0.42), ("8gaussians", 0): (0.20, 0.22)}
    for p in plan(results / "benchmark.yaml"):
        if p.job == "flow" and (p.dataset, p.seed) in values:
            rec = _record(p.run_id, [_row(1, values[p.dataset, p.seed], solver="euler")], seed=p.seed,
                          dataset=p.dataset)  # fmt: skip
            write_record(results, rec)
    text = headline.headline(results)
    (row,) = [ln for ln in text.splitlines() if ln.startswith("| flow | 1 |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    moons = [0.30, 0.32, 0.40, 0.42]
    assert cells[2] == f"{statistics.fmean(moons):.3f} ± {statistics.stdev(moons):.3f} (2)"
    assert cells[4] == "0.210 ± 0.014 (1)"
