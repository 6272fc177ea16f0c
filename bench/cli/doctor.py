"""``bench doctor``: versions, device and local assets (``--gpu``: the GPU check)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bench.cli.common import (
    app,
    console,
    print_table,
    setup,
)


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
        print_table(tab)
        console.print(f"gpu tests: {res['gpu_tests']['summary']}\nwrote {out_file}")
        return
    import torch

    from bench.core.records import package_versions
    from bench.eval.timing import device_name

    setup(None)
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
    print_table(tab)
