"""Is a chargen fit short of its teacher because it cannot fit, or because it overfits its cached trajectories?
``python -m bench.studies.fit_gap RUN_DIR [--n 512] [--out FILE.json]``

Regenerates n of the run's own trajectories (seeds TRAJ_SEED + 0 .. n-1, the first rows of its cache, exactly)
and n fresh ones (seeds never cached) with the run's teacher, grid and solver, and reports the student's
squared error against the teacher's endpoint, E || g(t, 1, z_t) - z_K ||^2, from t = 0 (the one-step map) and
from the middle of the grid, on both sets, for the online and the EMA student. A fresh/cached ratio well
above 1 means the student memorised its trajectories (more or fresher trajectories help); a ratio near 1 with a
large error means it cannot fit (capacity, optimisation).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.core.checkpoint import atomic_write_json


@torch.no_grad()
def fit_gap(workdir: Path, n: int = 512, fresh_offset: int = 10**8) -> dict:
    from bench.core.noise import seeded_noise
    from bench.methods.chargen import characteristics
    from bench.methods.trajectories import TRAJ_SEED
    from bench.run.runner import load_run

    cfg, _, m, _ = load_run(Path(workdir), torch.device("cpu"))
    if not hasattr(m, "traj"):
        raise SystemExit(f"{workdir} is a {cfg.method_name} run; fit_gap needs a chargen run")
    shape, k_mid = tuple(m.spec.shape), m.K // 2
    sets = {
        lab: characteristics(
            m.v(), seeded_noise(shape, range(TRAJ_SEED + off, TRAJ_SEED + off + n)), m.grid, m.cfg.solver
        )
        for lab, off in (("cached", 0), ("fresh", fresh_offset))
    }
    out: dict = {"run": Path(workdir).name, "n": n, "n_traj": m.cfg.n_traj, "K": m.K, "solver": m.cfg.solver}
    for name, net in (("online", m.g), ("ema", m.g_ema)):
        for lab, tr in sets.items():
            for where, k in (("from_0", 0), ("from_mid", k_mid)):
                err = (net(m.grid[k], m.grid[-1], tr[:, k]) - tr[:, -1]).pow(2).flatten(1).sum(1).mean()
                out[f"{name}_{lab}_{where}"] = round(float(err), 5)
        out[f"{name}_fresh_over_cached_from_0"] = round(out[f"{name}_fresh_from_0"] / out[f"{name}_cached_from_0"], 3)
    out["endpoint_sq_norm"] = round(float(sets["cached"][:, -1].pow(2).flatten(1).sum(1).mean()), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    res = fit_gap(Path(a.run_dir), a.n)
    print(json.dumps(res, indent=1))
    if a.out:
        atomic_write_json(Path(a.out), res)


if __name__ == "__main__":
    main()
