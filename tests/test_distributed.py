"""torch.distributed on CPU (gloo): N processes reproduce 1 process, and a dead rank fails the job."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.distributed

TINY = {
    "flow": ["--set", "train.steps=40", "--set", "train.batch_size=64", "--set", "train.ckpt_every=20"],
    "chargen": [
        *("--set", "train.steps=30", "--set", "train.batch_size=64", "--set", "method.fit_steps=30"),
        *("--set", "method.n_traj=256", "--set", "method.euler_steps=4", "--set", "method.teacher.flow.net.hidden=32"),
        *("--set", "train.ckpt_every=20"),
    ],
}


def _env(extra: Path | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", BENCH_DIST_TIMEOUT_S="60")
    if extra is not None:
        env["PYTHONPATH"] = str(extra) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _bench(cwd: Path, *args: str, nproc: int = 1, extra: Path | None = None) -> subprocess.CompletedProcess:
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*head, "-m", "bench.cli", *args] if nproc > 1 else [sys.executable, "-m", "bench.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(extra), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("method", ["flow", "chargen"])
def test_two_processes_train_and_sample_like_one(tmp_path, method):
    """Same seed, same global batch: the 2-process gloo run ends with the 1-process weights (up to the order of
    floating-point reductions) and draws the same samples; the passes counted are the same."""
    args = ["--method", method, "--dataset", "moons", "--device", "cpu", "--runs-dir", "runs", *TINY[method]]
    one = _bench(tmp_path, "train", *args, "--run-id", "one")
    two = _bench(tmp_path, "train", *args, "--run-id", "two", nproc=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    a = torch.load(tmp_path / "runs/one/ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "runs/two/ckpt.pt", weights_only=True)
    for k, v in a["method_state"].items():
        assert torch.allclose(v.float(), b["method_state"][k].float(), atol=2e-5, rtol=1e-4), k
    assert a["train_state"]["passes"] == b["train_state"]["passes"]
    assert len((tmp_path / "runs/two/log.jsonl").read_text().splitlines()) == len(
        (tmp_path / "runs/one/log.jsonl").read_text().splitlines()
    )  # one writer
    sample = ["sample", "--run-dir", "runs/one", "-n", "300", "--device", "cpu"]
    s1 = _bench(tmp_path, *sample, "--output", "s1.pt")
    s2 = _bench(tmp_path, *sample, "--output", "s2.pt", nproc=2)
    assert s1.returncode == 0 and s2.returncode == 0, s1.stderr + s2.stderr
    x1 = torch.load(tmp_path / "s1.pt", weights_only=True)["samples"]
    x2 = torch.load(tmp_path / "s2.pt", weights_only=True)["samples"]
    assert x1.shape == x2.shape == (300, 2) and torch.allclose(x1, x2, atol=1e-6)


DYING = textwrap.dedent(
    '''
    import os
    from dataclasses import dataclass

    import torch

    from bench.methods.base import Method
    from bench.registry import register_method


    @dataclass
    class Cfg:
        die_at: int = 3


    @register_method("dies")
    class Dies(Method):
        """Rank 1 exits abruptly at step die_at (a crashed process)."""

        Config = Cfg

        def __init__(self, cfg, spec, train, workdir=None):
            super().__init__(cfg, spec, train, workdir)
            self.net = torch.nn.Linear(spec.dim, spec.dim)

        def loss(self, batch, step):
            if step == self.cfg.die_at and os.environ.get("RANK") == "1":
                os._exit(3)
            return (self.net(batch.x) - batch.x).pow(2).mean(), {}

        def sample(self, noise, point):
            return self.net_ema(noise), 1
    '''
)


def test_a_dead_rank_fails_the_job_with_a_message(tmp_path):
    (tmp_path / "dies_plugin.py").write_text(DYING)
    args = ["run", "--plugin", "dies_plugin", "--method", "dies", "--dataset", "moons", "--smoke", "--device", "cpu"]
    cmd = [sys.executable, "-m", "bench.cli", *args, "--nproc", "2", "--out", "res", "--runs-dir", "runs"]
    r = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "torchrun exited with code" in r.stderr
    assert not list(tmp_path.glob("res/runs/**/*.json"))  # no record for an unfinished run
