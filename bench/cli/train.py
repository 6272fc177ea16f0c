"""``bench run``, ``train``, ``sample``, ``eval``: one run from config to record."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from bench.cli.common import (
    DEFAULT_DATASET,
    DEFAULT_METHOD,
    ConfigOpt,
    DatasetOpt,
    DeviceOpt,
    MethodOpt,
    OutOpt,
    PluginOpt,
    ResumeOpt,
    RunIdOpt,
    RunsOpt,
    SeedOpt,
    SetOpt,
    SmokeOpt,
    ThreadsOpt,
    app,
    check_dir,
    console,
    make_dir,
    out,
    print_tables,
    progress,
    render,
    set_threads,
    setup,
)
from bench.errors import BenchError


@app.command()
def run(
    method: MethodOpt = DEFAULT_METHOD,
    dataset: DatasetOpt = DEFAULT_DATASET,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    smoke: SmokeOpt = False,
    device: DeviceOpt = "auto",
    out_dir: OutOpt = Path("results"),
    runs_dir: RunsOpt = Path("runs"),
    plugin: PluginOpt = None,
    nproc: Annotated[
        int, typer.Option("--nproc", min=1, help="processes on this machine (launches torchrun); 1 = plain")
    ] = 1,
    threads: ThreadsOpt = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", metavar="", help="flag: resolve and check everything, print the config; train nothing"
        ),
    ] = False,
    run_id: RunIdOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Train -> sample -> evaluate -> write a run record -> re-render the leaderboard."""
    check_dir(out_dir, "--out")
    check_dir(runs_dir, "--runs-dir")
    if nproc > 1:
        _launch_torchrun(nproc)
        return
    set_threads(threads)
    from bench.core import distributed
    from bench.run.engine import TrainingDiverged
    from bench.run.runner import (
        evaluate_and_record,
        prepare_run,
        resolve_config,
        resolve_device,
        train_prepared,
        validate_eval,
    )

    setup(plugin)
    cfg = resolve_config(method, dataset, config, set_, seed, smoke)
    dev = resolve_device(device, distributed.init_from_env(device))
    dist = distributed.current()
    run = prepare_run(cfg, runs_dir, dev, run_id, resume)
    validate_eval(cfg, run.dataset.spec)  # exact-W2 cap and memory: refused before anything is allocated
    run.method.eval_points(cfg.eval.nfe, cfg.eval.solvers)  # unknown solvers fail now, not after training
    if dry_run:
        import yaml

        if dist.is_main:
            out.print(yaml.safe_dump(run.config_dict, sort_keys=False).rstrip(), markup=False, highlight=False)
            console.print(
                f"dry run: {cfg.method_name} on {cfg.dataset_name} ({dev}) checked; nothing trained or written"
            )
        return
    if dist.is_main:
        make_dir(out_dir, "--out")
        make_dir(runs_dir, "--runs-dir")
        console.print(
            f"[bold]{cfg.method_name}[/bold] on [bold]{cfg.dataset_name}[/bold] (seed {cfg.seed}, {dev}"
            + (f", {dist.world} processes" if dist.active else "")
            + f") -> {run.folder}"
        )
    with progress() as p:
        try:
            train_prepared(run, resume, progress=p)
        except TrainingDiverged as e:
            if dist.is_main:
                _record_divergence(run, out_dir, str(e))
            raise
        record, path = evaluate_and_record(
            cfg, run.id, run.folder, run.dataset, run.method, run.state, dev, out_dir, progress=p
        )
    if not dist.is_main:
        return
    tables = render(out_dir)
    print_tables(tables, cfg.dataset_name)
    console.print(
        f"record: {path}\nleaderboard: {out_dir / 'LEADERBOARD.md'}\nrun folder: {run.folder}", soft_wrap=True
    )


def _launch_torchrun(nproc: int) -> None:
    """``bench run --nproc N ...``: the same command under torchrun, N processes on this machine."""
    import os
    import subprocess

    argv = [a for a in sys.argv[1:]]
    i = argv.index("--nproc")
    del argv[i : i + 2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "bench.cli", *argv]
    console.print("launching: " + " ".join(cmd[2:]), highlight=False)
    from bench.eval.timing import cores_available

    env = dict(os.environ)  # N processes share the cores: no oversubscribed OpenMP threads unless asked for
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores_available() // nproc)))
    code = subprocess.call(cmd, env=env)
    if code != 0:
        raise BenchError(f"torchrun exited with code {code} (see the ranks' messages above)")


def _record_divergence(run, out_dir: Path, msg: str) -> None:
    from bench.core.records import write_record
    from bench.output import leaderboard
    from bench.run.engine import TrainState
    from bench.run.runner import base_record

    rec = base_record(run.cfg, run.id, run.folder, run.dataset, run.method, run.state or TrainState(), run.device)
    rec.update(status="diverged", message=msg)
    write_record(out_dir, rec)
    leaderboard.render(out_dir)


@app.command()
def train(
    method: MethodOpt = DEFAULT_METHOD,
    dataset: DatasetOpt = DEFAULT_DATASET,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    smoke: SmokeOpt = False,
    device: DeviceOpt = "auto",
    runs_dir: RunsOpt = Path("runs"),
    run_id: RunIdOpt = None,
    resume: ResumeOpt = False,
    plugin: PluginOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Train only; writes runs/<run-id>/{config.yaml, ckpt.pt, log.jsonl}."""
    check_dir(runs_dir, "--runs-dir")
    set_threads(threads)
    from bench.core import distributed
    from bench.run.runner import check_run_id, resolve_config, resolve_device, train_run

    if run_id is not None:
        check_run_id(run_id)
    setup(plugin)
    if resume and run_id:
        wd = runs_dir / run_id
        if not (wd / "config.yaml").is_file():
            raise BenchError(f"nothing to resume: {wd / 'config.yaml'} does not exist")
        config, method, dataset = str(wd / "config.yaml"), None, None
    cfg = resolve_config(method, dataset, config, set_, seed, smoke)
    dev = resolve_device(device, distributed.init_from_env(device))
    if distributed.current().is_main:
        make_dir(runs_dir, "--runs-dir")
    with progress() as p:
        rid, workdir, *_ = train_run(cfg, runs_dir, dev, run_id=run_id, resume=resume, progress=p)
    out.print(str(workdir), highlight=False, soft_wrap=True)


@app.command()
def sample(
    run_dir: Annotated[
        Path, typer.Option("--run", "--run-dir", help="run folder (runs/<run-id>); --run-dir under torchrun")
    ],
    solver: Annotated[str | None, typer.Option(help="sampler; default: the run's first eval point")] = None,
    nfe: Annotated[int | None, typer.Option(help="number of function evaluations")] = None,
    label: Annotated[str | None, typer.Option(help="eval-point label (e.g. a chargen run's teacher)")] = None,
    n: Annotated[int, typer.Option("-n", help="number of samples")] = 1000,
    first_seed: Annotated[int, typer.Option(help="sample i uses seed first_seed + i")] = 1_000_000,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="default: <run>/samples-*.pt")] = None,
    device: DeviceOpt = "auto",
    plugin: PluginOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Draw samples from a trained run into a .pt file (tensor under key 'samples')."""
    if output is not None:
        if output.is_dir():
            raise BenchError(f"--output {output}: is a folder; name a file, e.g. {output / 'samples.pt'}")
        check_dir(output.parent, "--output")
    set_threads(threads)
    from bench.core.checkpoint import save_checkpoint
    from bench.eval.sampling import generate
    from bench.run.runner import load_run, resolve_device

    setup(plugin)
    if nfe is not None and nfe < 1:
        raise BenchError(f"NFE must be >= 1 (got {nfe})")
    if n < 1:
        raise BenchError("-n must be >= 1")
    from bench.core import distributed

    dev = resolve_device(device, distributed.init_from_env(device))
    cfg, ds, m, _ = load_run(run_dir, dev)
    pts = m.eval_points(cfg.eval.nfe if nfe is None else [nfe], [solver] if solver else cfg.eval.solvers)
    pts = [p for p in pts if (label is None or p.label == label) and (nfe is None or p.nfe in (nfe, None))]
    if not pts:
        raise BenchError("no eval point of this run matches --solver/--nfe/--label")
    pt = pts[0]
    x, used = generate(m, pt, n, first_seed, 2500, dev)
    output = output or run_dir / f"samples-{pt.solver}-{pt.nfe or 'adaptive'}.pt"
    if not distributed.current().is_main:  # every rank drew its share of the seeds; rank 0 writes
        return
    save_checkpoint(
        output, {"samples": x, "label": pt.label, "solver": pt.solver, "nfe": used, "first_seed": first_seed}
    )
    out.print(escape(f"{n} samples ({pt.label}, {pt.solver}, NFE {used:g}) -> {output}"))


@app.command(name="eval")
def eval_(
    run_dir: Annotated[
        Path, typer.Option("--run", "--run-dir", help="run folder (runs/<run-id>); --run-dir under torchrun")
    ],
    set_: SetOpt = None,
    device: DeviceOpt = "auto",
    out_dir: OutOpt = Path("results"),
    plugin: PluginOpt = None,
    timing_only: Annotated[
        bool, typer.Option("--timing-only", metavar="", help="flag: re-measure only the timing of its record")
    ] = False,
    grids_only: Annotated[
        bool,
        typer.Option("--grids-only", metavar="", help="flag: re-draw only the sample grids its record links"),
    ] = False,
    threads: ThreadsOpt = None,
) -> None:
    """Evaluate a trained run (eval.* may be overridden with --set), write its record, re-render."""
    check_dir(out_dir, "--out")
    set_threads(threads)
    from bench.output import leaderboard
    from bench.run.runner import evaluate_and_record, load_run, resolve_device, validate_eval

    setup(plugin)
    if timing_only and grids_only:
        raise BenchError("--timing-only and --grids-only: choose one")
    if grids_only:
        from bench.run.runner import regrid_run

        for p in regrid_run(run_dir, out_dir, resolve_device(device)):
            console.print(f"grid: {p}")
        return
    if timing_only:
        from bench.run.runner import retime_run

        path = retime_run(run_dir, out_dir, resolve_device(device))
        leaderboard.render(out_dir)
        console.print(f"re-timed: {path}")
        return
    for s in set_ or []:
        if not s.startswith("eval."):
            raise BenchError(f"bench eval only accepts eval.* overrides (got {s!r})")
    dev = resolve_device(device)
    cfg, ds, m, state = load_run(run_dir, dev, set_)
    validate_eval(cfg, ds.spec)
    m.eval_points(cfg.eval.nfe, cfg.eval.solvers)
    make_dir(out_dir, "--out")
    with progress() as p:
        _, path = evaluate_and_record(cfg, run_dir.name, run_dir, ds, m, state, dev, out_dir, progress=p)
    tables = render(out_dir)
    print_tables(tables, cfg.dataset_name)
    console.print(f"record: {path}")
