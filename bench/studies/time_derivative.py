"""How smooth a trained flow is in time: the check behind sCD's failure on Fashion-MNIST (issue 26).

sCD (and MeanFlow, iMF, TVM) differentiate the network in t by a JVP; CD and ECT only ever see finite time steps.
For a flow teacher v(t, x) this measures, at times t on the data path x_t = (1 - t) z + t x1, the median over
images of

- ``|v|``, ``|dv/dt|`` (the JVP in t), ``|dv/dx v|`` (the x part of the total derivative along the ODE), and
- ``fd_gap``: |(v(t + h) - v(t - h)) / 2h - dv/dt| / |dv/dt| for a central difference over ``h``.

A smooth time dependence has ``fd_gap`` near 0 at h = 0.01; a large one means dv/dt is dominated by wiggles
shorter than h, which is what the paper's stable time conditioning (a smooth embedding) removes.

``python -m bench.studies.time_derivative --teacher RUN`` (a finished flow run: id under ``--runs-dir``, folder or
ckpt.pt) prints the table and writes it to ``--out`` (markdown) with the run and its time bandwidth.
"""

from __future__ import annotations

from pathlib import Path

import torch
import typer

from bench.core.checkpoint import atomic_write_text
from bench.errors import BenchError
from bench.pixels import from_uint8

TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


def _median_norm(a: torch.Tensor) -> float:
    return float(a.flatten(1).norm(dim=1).median())


@torch.no_grad()
def time_smoothness(v, x1: torch.Tensor, times=TIMES, h: float = 1e-2, seed: int = 0) -> list[dict]:
    """One row per time of ``v`` (a velocity ``v(t, x)``, t a (B,) tensor) on data ``x1``: the norms and fd_gap."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for tv in times:
        t = torch.full((x1.shape[0],), tv, dtype=x1.dtype)
        z = torch.randn(x1.shape, generator=gen, dtype=x1.dtype)
        xt = (1 - tv) * z + tv * x1
        vel = v(t, xt)
        _, dvdt = torch.func.jvp(lambda a, x=xt: v(a, x), (t,), (torch.ones_like(t),))
        _, dvdx = torch.func.jvp(lambda x, a=t: v(a, x), (xt,), (vel,))
        fd = (v(t + h, xt) - v(t - h, xt)) / (2 * h)
        n_dt = _median_norm(dvdt)
        rows.append({"t": tv, "v": _median_norm(vel), "dv_dt": n_dt, "dv_dx_v": _median_norm(dvdx),
                     "fd_gap": _median_norm(fd - dvdt) / max(n_dt, 1e-12)})  # fmt: skip
    return rows


def render(rows: list[dict], what: str, h: float) -> str:
    lines = [f"Time smoothness of {what} (medians over images; fd_gap: central difference over h = {h:g} vs JVP)", "",
             "| t | \\|v\\| | \\|dv/dt\\| | \\|dv/dx v\\| | fd_gap |", "|---|---|---|---|---|"]  # fmt: skip
    cells = ("v", "dv_dt", "dv_dx_v")
    lines += [f"| {r['t']:g} | " + " | ".join(f"{r[k]:.1f}" for k in cells) + f" | {r['fd_gap']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(
    teacher: str = typer.Option(..., help="finished flow run: id under --runs-dir, run folder or ckpt.pt"),
    runs_dir: Path = typer.Option(Path("runs"), help="folder of run folders"),
    n: int = typer.Option(128, help="training images"),
    h: float = typer.Option(1e-2, help="finite-difference half step"),
    out: Path | None = typer.Option(None, help="write the markdown table here"),
) -> None:
    from bench.core.checkpoint import load_checkpoint
    from bench.core.config import TrainConfig, from_dict
    from bench.methods.flow import Flow
    from bench.methods.teacher import find_run_checkpoint, resolve_teacher
    from bench.registry import DATASETS, load_builtins

    load_builtins()
    try:
        ck_path = find_run_checkpoint(teacher, runs_dir / "_", "teacher")  # an id resolves beside runs_dir/_
        data = dict(load_checkpoint(ck_path)["config"]["data"])
        cls = DATASETS.get(data.pop("name"))
        ds = cls(from_dict(cls.Config, data), 0)
        run, tcfg, ck = resolve_teacher(str(ck_path), ds.spec, None)
    except BenchError as e:  # bad input: one line, exit 2 (as the bench CLI)
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    flow = Flow(tcfg, ds.spec, TrainConfig(), None)
    flow.load_state_dict(ck["method_state"])
    x1 = from_uint8(ds.split_u8("train")[:n]).float()
    what = f"flow run {run} (U-Net time features up to {tcfg.net.unet_time_max_freq:g} rad; 0 = raw time)"
    text = render(time_smoothness(flow.velocity(ema=True), x1, h=h), what, h)
    print(text)
    if out is not None:
        cmd = f"python -m bench.studies.time_derivative --teacher {teacher} --n {n} --h {h:g} --out {out}"
        atomic_write_text(out, f"{text}\n{n} training images, noise seed 0. Reproduce: `{cmd}`.\n")


if __name__ == "__main__":
    typer.run(main)
