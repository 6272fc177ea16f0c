"""The ``bench`` command line (Typer + rich)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.errors import BenchError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train and evaluate one-step generative models side by side.",
)
console = Console(stderr=True)
out = Console()

DEFAULT_METHOD = "chargen"
DEFAULT_DATASET = "checkerboard"

MethodOpt = Annotated[str, typer.Option("--method", "-m", help="registered method (see `bench list`)")]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="registered data set (see `bench list`)")]
ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="YAML file of config overrides")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override, e.g. train.steps=2000 (repeatable)")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="training seed (config key `seed`)")]
SmokeOpt = Annotated[
    bool, typer.Option("--smoke", metavar="", help="flag: tiny budget for tests/CI (< 1 min on 2 CPU cores)")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or auto")]
OutOpt = Annotated[Path, typer.Option("--out", help="results folder (records + leaderboard)")]
RunsOpt = Annotated[Path, typer.Option("--runs-dir", help="folder for run artefacts (checkpoints, logs, samples)")]
RunDirOpt = Annotated[Path, typer.Option("--run", "--run-dir", help="run folder runs/<id> (--run-dir under torchrun)")]
PluginOpt = Annotated[list[str] | None, typer.Option("--plugin", help="import this module first (registers methods)")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="torch intra-op threads; default: $OMP_NUM_THREADS if set, else the cores this process may use",
    ),
]


class PlainProgress:
    """The part of rich's ``Progress`` API that training and evaluation use (``add_task``, ``update``), written
    as plain lines for logs and pipes: one per task every ``every_s`` seconds or ``every_frac`` of its total,
    and one when it ends, each with step/total, rate and ETA (the description carries stage and loss)."""

    def __init__(self, console: Console, every_s: float = 10.0, every_frac: float = 0.1) -> None:
        self.console, self.every_s, self.every_frac = console, every_s, every_frac
        self._tasks: list[dict[str, Any]] = []

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **_: Any) -> int:
        now = time.monotonic()
        task = {"description": description, "total": total, "completed": completed, "start": now}
        self._tasks.append({**task, "start_done": completed, "last_t": now, "last_done": completed, "ended": False})
        return len(self._tasks) - 1

    def update(
        self,
        task_id: int,
        *,
        total: float | None = None,
        completed: float | None = None,
        advance: float | None = None,
        description: str | None = None,
        **_: Any,
    ) -> None:
        t = self._tasks[task_id]
        if total is not None:
            t["total"] = total
        if completed is not None:
            t["completed"] = completed
        if advance is not None:
            t["completed"] += advance
        if description is not None:
            t["description"] = description
        now, done, total = time.monotonic(), t["completed"], t["total"]
        ended = total is not None and done >= total
        due = now - t["last_t"] >= self.every_s or (total and done - t["last_done"] >= self.every_frac * total)
        if (ended and not t["ended"]) or (due and not ended):
            t.update(last_t=now, last_done=done, ended=ended)
            self.console.print(self.line(t, now), highlight=False, markup=False, soft_wrap=True)

    @staticmethod
    def line(t: dict[str, Any], now: float) -> str:
        done, total, elapsed = t["completed"], t["total"], max(now - t["start"], 1e-9)
        rate = (done - t["start_done"]) / elapsed
        of = f"{done:g}/{total:g} ({100 * done / total:.0f}%)" if total else f"{done:g}"
        eta = f", ETA {_hms((total - done) / rate)}" if total and rate > 0 and done < total else ""
        return f"{t['description']}: {of}, {rate:.3g}/s, {_hms(elapsed)} elapsed{eta}"


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@contextmanager
def _progress():
    """A rich progress bar on a terminal; plain progress lines when stderr is a log, a file or a pipe."""
    from bench.core.distributed import current

    if not current().is_main:  # one progress display per job: rank 0's
        yield None
        return
    if not console.is_terminal:
        yield PlainProgress(console)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as p:
        yield p


def _print_table(tab: Table) -> None:
    """Never cut a cell: on a terminal, long cells fold inside their column; in a log or a file the table is
    printed at its full natural width, however wide."""
    for col in tab.columns:
        col.overflow = "fold"
    if out.is_terminal:
        out.print(tab)
        return
    width = out.measure(tab, options=out.options.update_width(100_000)).maximum
    Console(file=out.file, width=max(width, out.width), no_color=out.no_color).print(tab)


def _set_threads(threads: int | None) -> int:
    """``--threads``: torch's intra-op threads, set before any work. Default: ``$OMP_NUM_THREADS`` when it
    is a positive integer, else the cores this process may use (affinity), not the machine's total."""
    import torch

    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        if env.isdigit() and int(env) >= 1:
            threads = int(env)
        else:
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


def _check_dir(path: Path, flag: str) -> None:
    """An output folder must be a folder, or creatable as one where this user may write: checked up front,
    before any import of the engine or any work; nothing is created here."""
    p = Path(path)
    try:
        if p.exists() and not p.is_dir():
            raise BenchError(f"{flag} {p}: exists and is not a folder")
        base = p.absolute()
        while not base.exists():
            base = base.parent
        if not base.is_dir():
            raise BenchError(f"{flag} {p}: {base} is a file, not a folder")
        if not os.access(base, os.W_OK | os.X_OK):
            raise BenchError(f"{flag} {p}: {base} is not writable")
    except (OSError, ValueError) as e:  # a name too long, a NUL byte, a loop of links ...
        raise BenchError(f"{flag} {str(p)!r} is not a usable path: {e}") from None


def _make_dir(path: Path, flag: str) -> None:
    """Create an output folder once everything is validated, before the first step of work."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"{flag} {path}: cannot create the folder ({e.strerror or e})") from None


def _setup(plugins: list[str] | None) -> None:
    from bench.registry import load_builtins
    from bench.run.runner import load_plugins

    load_plugins(plugins or [])
    load_builtins()


def _print_tables(tables: list[dict], dataset: str | None = None) -> None:
    from bench.output.leaderboard import fmt_nfe, fmt_time, fmt_val

    for t in tables:
        if dataset and t["key"][0] != dataset:
            continue
        tab = Table(title=t["title"], title_justify="left")
        for c in ["method", "solver", "NFE", *t["metrics"], "time/sample", "× fwd", "device"]:
            tab.add_column(c)
        if any(t["floor"].values()):
            tab.add_row(
                "[i]reference floor[/i]", "", "", *[fmt_val(t["floor"].get(m, [])) for m in t["metrics"]], "", "", ""
            )
        for r in t["rows"]:
            tab.add_row(
                escape(r["method"]),
                r["solver"],
                fmt_nfe(r["nfe"]),
                *[fmt_val(r["values"][m]) for m in t["metrics"]],
                fmt_time(r["per_sample_s"]),
                f"{r['ratio']:.1f}" if r["ratio"] is not None else "-",
                escape(r["device"]),
            )
        _print_table(tab)


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
    run_id: Annotated[str | None, typer.Option("--run-id", help="run folder name (default: a fresh dated id)")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", metavar="", help="flag: continue --run-id from its last checkpoint")
    ] = False,
) -> None:
    """Train -> sample -> evaluate -> write a run record -> re-render the leaderboard."""
    _check_dir(out_dir, "--out")
    _check_dir(runs_dir, "--runs-dir")
    if nproc > 1:
        _launch_torchrun(nproc)
        return
    _set_threads(threads)
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

    _setup(plugin)
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
        _make_dir(out_dir, "--out")
        _make_dir(runs_dir, "--runs-dir")
        console.print(
            f"[bold]{cfg.method_name}[/bold] on [bold]{cfg.dataset_name}[/bold] (seed {cfg.seed}, {dev}"
            + (f", {dist.world} processes" if dist.active else "")
            + f") -> {run.folder}"
        )
    with _progress() as p:
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
    tables = _render(out_dir)
    _print_tables(tables, cfg.dataset_name)
    console.print(
        f"record: {path}\nleaderboard: {out_dir / 'LEADERBOARD.md'}\nrun folder: {run.folder}", soft_wrap=True
    )


def _render(out_dir: Path) -> list[dict]:
    """Re-render the leaderboards under the results lock; name every record file that was skipped."""
    from bench.output.leaderboard import render_all

    r = render_all(out_dir)
    for path, why in r.skipped:
        console.print(f"skipped {escape(str(path))}: {escape(why)}", highlight=False, soft_wrap=True)
    return r.tables


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
    run_id: Annotated[str | None, typer.Option("--run-id")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", metavar="", help="flag: continue --run-id from its last checkpoint")
    ] = False,
    plugin: PluginOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Train only; writes runs/<run-id>/{config.yaml, ckpt.pt, log.jsonl}."""
    _check_dir(runs_dir, "--runs-dir")
    _set_threads(threads)
    from bench.core import distributed
    from bench.run.runner import check_run_id, resolve_config, resolve_device, train_run

    if run_id is not None:
        check_run_id(run_id)
    _setup(plugin)
    if resume and run_id:
        wd = runs_dir / run_id
        if not (wd / "config.yaml").is_file():
            raise BenchError(f"nothing to resume: {wd / 'config.yaml'} does not exist")
        config, method, dataset = str(wd / "config.yaml"), None, None
    cfg = resolve_config(method, dataset, config, set_, seed, smoke)
    dev = resolve_device(device, distributed.init_from_env(device))
    if distributed.current().is_main:
        _make_dir(runs_dir, "--runs-dir")
    with _progress() as p:
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
        _check_dir(output.parent, "--output")
    _set_threads(threads)
    from bench.core.checkpoint import save_checkpoint
    from bench.eval.sampling import generate
    from bench.run.runner import load_run, resolve_device

    _setup(plugin)
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
    threads: ThreadsOpt = None,
) -> None:
    """Evaluate a trained run (eval.* may be overridden with --set), write its record, re-render."""
    _check_dir(out_dir, "--out")
    _set_threads(threads)
    from bench.output import leaderboard
    from bench.run.runner import evaluate_and_record, load_run, resolve_device, validate_eval

    _setup(plugin)
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
    _make_dir(out_dir, "--out")
    with _progress() as p:
        _, path = evaluate_and_record(cfg, run_dir.name, run_dir, ds, m, state, dev, out_dir, progress=p)
    tables = _render(out_dir)
    _print_tables(tables, cfg.dataset_name)
    console.print(f"record: {path}")


@app.command(name="leaderboard")
def leaderboard_(
    out_dir: OutOpt = Path("results"), quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="")] = False
) -> None:
    """Re-render results/LEADERBOARD.md and leaderboard.csv from the run records only."""

    tables = _render(out_dir)
    md = out_dir / "LEADERBOARD.md"
    if not quiet:
        _print_tables(tables)
    console.print(f"wrote {md} and {md.with_name('leaderboard.csv')} ({sum(len(t['rows']) for t in tables)} rows)")


def describe(obj: object) -> str:
    """One line about a registered class: the first sentence of its docstring, else of its module's."""
    import inspect
    import re

    doc = inspect.getdoc(obj) if isinstance(obj, type) and "__doc__" in vars(obj) and obj.__doc__ else None
    if not doc:
        doc = inspect.getdoc(sys.modules.get(getattr(obj, "__module__", ""), None)) or ""
    para = " ".join(doc.strip().split("\n\n")[0].split())
    return re.split(r"(?<!\bal\.)(?<!\be\.g\.)(?<!\bi\.e\.)(?<!\bvs\.)(?<=\S\.)\s+(?=[A-Z])", para, maxsplit=1)[0]


@app.command(name="list")
def list_(plugin: PluginOpt = None) -> None:
    """Registered methods, data sets and metrics."""
    from bench.registry import DATASETS, METHODS, METRICS

    _setup(plugin)
    for title, reg, desc in [
        ("methods", METHODS, describe),
        ("datasets", DATASETS, describe),
        ("metrics", METRICS, lambda o: "data: " + ", ".join(o.kinds)),
    ]:
        tab = Table(title=title, title_justify="left")
        tab.add_column("name", no_wrap=True)
        tab.add_column("")
        for name, obj in reg.items():
            tab.add_row(name, escape(desc(obj)))
        _print_table(tab)


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

    _setup(None)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        vals = [yaml.safe_load(v) for v in values.split(",")] if values else None
    except ValueError:
        raise BenchError(f"--seeds must be comma-separated integers (got {seeds!r})") from None
    dev = resolve_device(device)
    if name == "budget":
        if set_ or values:
            raise BenchError(
                "study budget takes no --set/--values: its recipes are fixed (see bench/studies/budget.py)"
            )
        from bench.studies.budget import render_budget, run_budget

        try:
            scale_list = [float(f) for f in scales.split(",") if f.strip()]
        except ValueError:
            raise BenchError(f"--scales must be comma-separated numbers (got {scales!r})") from None
        meths = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
        with _progress() as p:
            r = run_budget(dataset, scale_list, seed_list, out_dir, runs_dir, dev, meths, reuse or [], smoke, p)
        out.print(render_budget(r))
        return
    if name != "all" and name not in STUDIES:
        raise BenchError(f"unknown study {name!r}; valid: {', '.join(STUDIES)}, all, budget")
    names = list(STUDIES) if name == "all" else [name]
    for n in names:
        with _progress() as p:
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
    _render(out_dir)
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

    _setup(plugin)
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
        resolve_config(m, d, None, [*g.sets, *sw._override_sets(ov)], s, g.smoke)  # every job valid up front
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
    _render(out_dir)
    failed = [i for i, (c, _) in enumerate(results) if c != 0]
    if failed:
        raise BenchError(f"{len(failed)} of {len(jobs)} sweep jobs failed (numbers {[i + 1 for i in failed]})")


@app.command()
def doctor(
    gpu: Annotated[
        bool, typer.Option("--gpu", metavar="", help="flag: GPU check: tests marked gpu + sampling timings -> JSON")
    ] = False,
    out_file: Annotated[Path, typer.Option("--out-file", help="where --gpu writes its table")] = Path(
        "results/bench/device_check.json"
    ),
    budget_s: Annotated[float, typer.Option(help="--gpu: seconds after which compiled configs are skipped")] = 360.0,
) -> None:
    """Versions, device, and which optional weights/data are present locally (--gpu: the GPU check)."""
    if gpu:
        from bench.run.device_check import device_check

        res = device_check(out_file, budget_s)
        tab = Table(title=f"GPU check: {res['device']} (torch {res['torch']})", title_justify="left")
        for c in ["preset", "dtype", "compile", "method", "NFE", "batch", "per sample", "samples/s", "vs fwd"]:
            tab.add_column(c)
        for r in res["sampling"]:
            if "skipped" in r:
                tab.add_row(r["preset"], r["dtype"], "yes", "-", "-", "-", f"skipped ({r['skipped']})", "", "")
                continue
            tab.add_row(
                r["preset"],
                r["dtype"],
                "yes" if r["compile"] else "no",
                r["method"],
                str(r["nfe"]),
                str(r["batch"]),
                f"{r['per_sample_s'] * 1e6:.2f} us",
                f"{r['samples_per_s']:.0f}",
                f"{r['throughput_vs_forward']:.2f}",
            )
        _print_table(tab)
        console.print(f"gpu tests: {res['gpu_tests']['summary']}\nwrote {out_file}")
        return
    import torch

    from bench.core.records import package_versions
    from bench.eval.timing import device_name

    _setup(None)
    tab = Table(title="onestep-bench doctor", title_justify="left")
    tab.add_column("item")
    tab.add_column("value")
    for k, v in package_versions().items():
        tab.add_row(k, v)
    tab.add_row("cuda available", str(torch.cuda.is_available()))
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tab.add_row("device", device_name(dev))
    from bench.eval.assets import asset_report

    for k, v in asset_report():
        tab.add_row(k, v)
    _print_table(tab)


@app.command()
def report(out_dir: OutOpt = Path("results")) -> None:
    """Render figures (results/figures/<dataset>/*.png) and the static page results/index.html from records only."""
    from bench.output.page import render_page
    from bench.output.report import plan_report, render_report

    for path in render_report(out_dir):
        out.print(str(path))
    for title, note in plan_report(out_dir).skipped:
        console.print(f"not drawn ({escape(title)}): {escape(note)}", highlight=False, soft_wrap=True)
    out.print(str(render_page(out_dir)))


def _error(msg: str) -> None:
    console.print(f"[red]error:[/red] {escape(' '.join(msg.split()))}", highlight=False, soft_wrap=True)


def main() -> None:
    """Console entry point: user errors (bad names, keys, values, paths, usage) print one line and exit 2."""
    ok = False
    try:
        code = app(standalone_mode=False) if len(sys.argv) > 1 else app()
        ok = code in (None, 0)
    except BenchError as e:
        _error(str(e))
        sys.exit(2)
    except typer.TyperException as e:  # click's usage errors (unknown option, bad int, ...), one line here too
        usage = getattr(getattr(e, "ctx", None), "command_path", None)
        _error(e.format_message() + (f" (see `{usage} --help`)" if usage else ""))  # type: ignore[attr-defined]
        sys.exit(getattr(e, "exit_code", 2))
    except (KeyboardInterrupt, typer.Abort):
        console.print("interrupted")
        sys.exit(130)
    finally:  # leave the process group before exit: gloo threads alive at exit abort the process
        dist = sys.modules.get("bench.core.distributed")
        if dist is not None:
            with contextlib.suppress(Exception):  # a peer already gone must not turn the exit into a traceback
                dist.shutdown(sync=ok)
    if isinstance(code, int) and code != 0:
        sys.exit(code)


if __name__ == "__main__":
    main()
