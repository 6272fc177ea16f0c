"""``bench leaderboard``, ``list``, ``report``: what the records and registries hold, rendered."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from bench.cli.common import (
    OutOpt,
    PluginOpt,
    app,
    console,
    out,
    print_table,
    print_tables,
    render,
    setup,
)


@app.command(name="leaderboard")
def leaderboard_(
    out_dir: OutOpt = Path("results"), quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="")] = False
) -> None:
    """Re-render results/LEADERBOARD.md and leaderboard.csv from the run records only."""

    tables = render(out_dir)
    md = out_dir / "LEADERBOARD.md"
    if not quiet:
        print_tables(tables)
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

    setup(plugin)
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
        print_table(tab)


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
