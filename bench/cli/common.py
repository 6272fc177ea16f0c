"""What every command of the ``bench`` CLI shares: the Typer app, the two consoles (stderr for progress and
messages, stdout for results), the option types, progress display, table printing and the checks run before any
work (output folders, threads, plugins)."""

from __future__ import annotations

import os
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
RunIdOpt = Annotated[str | None, typer.Option("--run-id", help="run folder name (default: a fresh dated id)")]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", metavar="", help="flag: continue --run-id from its last checkpoint")
]
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
def progress():
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


def print_table(tab: Table) -> None:
    """Never cut a cell: on a terminal, long cells fold inside their column; in a log or a file the table is
    printed at its full natural width, however wide."""
    for col in tab.columns:
        col.overflow = "fold"
    if out.is_terminal:
        out.print(tab)
        return
    width = out.measure(tab, options=out.options.update_width(100_000)).maximum
    Console(file=out.file, width=max(width, out.width), no_color=out.no_color).print(tab)


def set_threads(threads: int | None) -> int:
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


def check_dir(path: Path, flag: str) -> None:
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


def make_dir(path: Path, flag: str) -> None:
    """Create an output folder once everything is validated, before the first step of work."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"{flag} {path}: cannot create the folder ({e.strerror or e})") from None


def setup(plugins: list[str] | None) -> None:
    from bench.registry import load_builtins
    from bench.run.runner import load_plugins

    load_plugins(plugins or [])
    load_builtins()


def print_tables(tables: list[dict], dataset: str | None = None) -> None:
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
        print_table(tab)


def render(out_dir: Path) -> list[dict]:
    """Re-render the leaderboards under the results lock; name every record file that was skipped."""
    from bench.output.leaderboard import render_all

    r = render_all(out_dir)
    for path, why in r.skipped:
        console.print(f"skipped {escape(str(path))}: {escape(why)}", highlight=False, soft_wrap=True)
    return r.tables


def error(msg: str) -> None:
    console.print(f"[red]error:[/red] {escape(' '.join(msg.split()))}", highlight=False, soft_wrap=True)
