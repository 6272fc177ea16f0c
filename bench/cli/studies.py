"""``bench study`` and ``bench sweep``: many runs (a study, a grid, the benchmark file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from bench.cli.common import (
    DeviceOpt,
    OutOpt,
    PluginOpt,
    RunsOpt,
    SetOpt,
    SmokeOpt,
    app,
    console,
    out,
    progress,
    render,
    setup,
)
from bench.errors import BenchError


@app.command()
def study(
    name: Annotated[str, typer.Argument(help="euler_steps, sample_size, intrinsic_dim, ambient_dim, all, or budget")],
    seeds: Annotated[str, typer.Option(help="comma-separated training seeds")] = "0,1,2",
    values: Annotated[str | None, typer.Option(help="comma-separated values of the varied key")] = None,
    dataset: Annotated[str, typer.Option(help="budget: the data set")] = "checkerboard",
    scales: Annotated[
        str, typer.Option(help="budget: comma-separated budget factors of the base recipes")
    ] = "0.25,0.5,1",
    methods: Annotated[str | None, typer.Option(help="budget: comma-separated subset of the one-step methods")] = None,
    reuse: Annotated[
        list[Path] | None, typer.Option(help="budget: results folder whose matching runs are reused")
    ] = None,
    grid: Annotated[
        Path | None,
        typer.Option(help="budget: take the recipes from this benchmark file's jobs (e.g. results/benchmark.yaml)"),
    ] = None,
    smoke: SmokeOpt = False,
    set_: SetOpt = None,
    device: DeviceOpt = "auto",
    out_dir: OutOpt = Path("results"),
    runs_dir: RunsOpt = Path("runs"),
) -> None:
    """Run one of the paper's checkable claims as a sweep (results/study/NAME.{json,md}), or `budget`: every
    one-step method at several total training budgets (results/study/budget-DATA.{json,md} and a figure)."""
    import yaml

    from bench.run.runner import resolve_device
    from bench.studies.study import STUDIES, render_study, run_study

    setup(None)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        vals = [yaml.safe_load(v) for v in values.split(",")] if values else None
    except ValueError:
        raise BenchError(f"--seeds must be comma-separated integers (got {seeds!r})") from None
    dev = resolve_device(device)
    if name == "budget":
        if set_ or values:
            raise BenchError(
                "study budget takes no --set/--values: its recipes are fixed (bench/studies/budget.py or --grid)"
            )
        if grid is not None and not grid.is_file():
            raise BenchError(f"--grid {grid}: no such benchmark file")
        from bench.studies.budget import render_budget, run_budget

        try:
            scale_list = [float(f) for f in scales.split(",") if f.strip()]
        except ValueError:
            raise BenchError(f"--scales must be comma-separated numbers (got {scales!r})") from None
        meths = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
        with progress() as p:
            r = run_budget(dataset, scale_list, seed_list, out_dir, runs_dir, dev, meths, reuse or [], smoke, p, grid)
        out.print(render_budget(r))
        return
    if name != "all" and name not in STUDIES:
        raise BenchError(f"unknown study {name!r}; valid: {', '.join(STUDIES)}, all, budget")
    names = list(STUDIES) if name == "all" else [name]
    for n in names:
        with progress() as p:
            r = run_study(n, seed_list, out_dir, runs_dir, dev, set_, vals, progress=p)
        out.print(render_study(r))


def _sweep_benchmark(
    path: Path,
    executor: str,
    workers: int,
    out_dir: Path,
    runs_dir: Path,
    dry_run: bool,
    suites: list[str],
    jobs: list[str] | None = None,
) -> None:
    """A benchmark file (``suites:``): deterministic run ids, finished runs reused, teachers first."""
    from bench.core.records import record_path
    from bench.run import benchmark as bm
    from bench.run.runner import resolve_config
    from bench.studies import sweep as sw

    if executor != "local":
        raise BenchError("a benchmark file (suites:) runs with --executor local; its jobs wait for their teachers")
    planned = bm.plan(path)
    unknown = sorted(set(suites) - {p.suite for p in planned})
    if unknown:
        raise BenchError(f"--suite {unknown[0]!r} is not in {path} (suites: {sorted({p.suite for p in planned})})")
    planned = [p for p in planned if not suites or p.suite in suites]
    if jobs:  # these jobs and the teacher runs they wait for (reused when finished)
        missing = sorted(set(jobs) - {p.job for p in planned})
        if missing:
            raise BenchError(f"--job {missing[0]!r} is not a job of {path}" + (f" suite {suites}" if suites else ""))
        needed = {p.after for p in planned if p.job in jobs}
        planned = [p for p in planned if p.job in jobs or p.run_id in needed]
    for p in planned:  # every job valid up front (a teacher run id need not exist yet)
        resolve_config(
            p.method, p.dataset, None, [s for s in p.sets if not s.startswith("method.teacher.run=")], p.seed, p.smoke
        )
    todo = [p for p in planned if not record_path(out_dir, p.dataset, p.run_id).is_file()]
    console.print(f"{len(planned)} benchmark jobs, {len(planned) - len(todo)} finished (reused), {len(todo)} to run")
    if dry_run:
        for p in planned:
            state = "done" if p not in todo else "todo"
            out.print(
                f"{state} bench " + " ".join(bm.argv(p, out_dir, runs_dir, False)), highlight=False, soft_wrap=True
            )
        return

    def report(i: int, p, code: int, tail: str) -> None:
        state = "ok" if code == 0 else f"FAILED (exit {code})"
        console.print(f"[{i + 1}/{len(planned)}] {state}: {p.run_id}\n{escape(tail)}", highlight=False)

    results = sw.run_benchmark_local(planned, out_dir, runs_dir, workers, report=report)
    render(out_dir)
    failed = [rid for rid, c, _ in results if c != 0]
    if failed:
        raise BenchError(f"{len(failed)} of {len(planned)} benchmark jobs failed: {', '.join(failed)}")


@app.command()
def sweep(
    grid: Annotated[Path, typer.Argument(help="YAML grid: methods, datasets, seeds, overrides, sets, smoke")],
    executor: Annotated[str, typer.Option(help="local (this machine) or slurm (submitit)")] = "local",
    workers: Annotated[int, typer.Option(help="local: jobs at a time (threads split between them)")] = 1,
    partition: Annotated[str | None, typer.Option(help="slurm: partition")] = None,
    gpus_per_node: Annotated[int | None, typer.Option(help="slurm: GPUs per job (>1 runs it with --nproc)")] = None,
    cpus_per_task: Annotated[int | None, typer.Option(help="slurm: CPUs per job")] = None,
    timeout_min: Annotated[int, typer.Option(help="slurm: time limit per job (minutes)")] = 240,
    out_dir: OutOpt = Path("results"),
    runs_dir: RunsOpt = Path("runs"),
    plugin: PluginOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", metavar="", help="flag: validate every job and print them; run nothing")
    ] = False,
    suite: Annotated[
        list[str] | None, typer.Option("--suite", help="benchmark file: run only this suite (repeatable)")
    ] = None,
    job: Annotated[
        list[str] | None,
        typer.Option("--job", help="benchmark file: run only this job and the teachers it waits for (repeatable)"),
    ] = None,
) -> None:
    """Run a grid of `bench run` jobs (one normal record each), locally or on SLURM; then re-render."""
    import itertools

    from bench.run.runner import resolve_config
    from bench.studies import sweep as sw

    setup(plugin)
    if executor not in ("local", "slurm"):
        raise BenchError(f"--executor must be local or slurm (got {executor!r})")
    if workers < 1:
        raise BenchError("--workers must be >= 1")
    from bench.core.config import load_yaml
    from bench.run import benchmark as bm

    if bm.is_benchmark(load_yaml(grid)):
        _sweep_benchmark(grid, executor, workers, out_dir, runs_dir, dry_run, suite or [], job or [])
        return
    if job:
        raise BenchError("--job selects jobs of a benchmark file (suites:); this grid has none")
    g = sw.load_grid(grid)
    jobs = sw.jobs(g, out_dir, runs_dir, plugin or [])
    for m, d, ov, s in itertools.product(g.methods, g.datasets, g.overrides, g.seeds):
        resolve_config(m, d, None, [*g.sets, *sw.override_sets(ov)], s, g.smoke)  # every job valid up front
    if executor == "slurm" and (gpus_per_node or 0) > 1:
        jobs = [[*j, "--nproc", str(gpus_per_node)] for j in jobs]
    console.print(f"{len(jobs)} jobs ({executor})")
    if dry_run:
        for j in jobs:
            out.print("bench " + " ".join(j), highlight=False, soft_wrap=True)
        return
    if executor == "slurm":
        folder = Path(runs_dir) / "slurm"
        handles = sw.submit_slurm(
            jobs,
            folder,
            slurm_partition=partition,
            gpus_per_node=gpus_per_node,
            cpus_per_task=cpus_per_task,
            timeout_min=timeout_min,
        )
        for h in handles:
            out.print(f"submitted {h.job_id}")
        console.print(f"logs in {folder}; when they finish: bench leaderboard --out {out_dir}")
        return

    def report(i: int, argv: list[str], code: int, tail: str) -> None:
        state = "ok" if code == 0 else f"FAILED (exit {code})"
        console.print(f"[{i + 1}/{len(jobs)}] {state}: bench {' '.join(argv[:5])} ...\n{escape(tail)}", highlight=False)

    results = sw.run_local(jobs, workers, report)
    render(out_dir)
    failed = [i for i, (c, _) in enumerate(results) if c != 0]
    if failed:
        raise BenchError(f"{len(failed)} of {len(jobs)} sweep jobs failed (numbers {[i + 1 for i in failed]})")
