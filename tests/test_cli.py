import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import leaderboard


def test_smoke_run_writes_record_and_leaderboard(bench_cli):
    code, out, err = bench_cli("run", "--method", "flow", "--dataset", "8gaussians", "--smoke")
    assert code == 0, err
    (rec,) = bench_cli.records()
    assert rec["status"] == "ok" and rec["method"] == "flow" and rec["dataset"] == "8gaussians"
    nfes = {(r["solver"], r["nfe_requested"]) for r in rec["rows"]}
    assert {("euler", 1), ("euler", 4), ("heun", 4), ("dopri5", None)} <= nfes
    row = rec["rows"][0]
    assert {"w2", "sw2"} <= set(row["metrics"])
    w2 = row["metrics"]["w2"]
    assert len(w2["values"]) == 2 and w2["protocol"]["n_gen"] == 400 and "emd2" in w2["protocol"]["solver"]
    assert row["timing"]["per_sample_s"] > 0 and row["timing"]["batch"] == 64
    for key in ["config", "seed", "params", "train", "versions", "git_commit", "date", "reference_floor", "device"]:
        assert key in rec
    assert rec["config"]["train"]["steps"] == 150
    md = (bench_cli.results / "LEADERBOARD.md").read_text()
    assert "reference floor" in md and "flow[icfm]" in md
    assert "exact data law" in rec["reference_floor"]["w2"]["what"] and "*reference floor*: fresh samples" in md
    # the run folder holds the resolved config, the checkpoint and the log
    wd = Path(rec["workdir"])
    assert (wd / "config.yaml").exists() and (wd / "ckpt.pt").exists() and (wd / "log.jsonl").exists()

    # stages: eval from the run folder, sample to a file
    code, _, err = bench_cli("eval", "--run", str(wd), "--set", "eval.nfe=[2]", "--set", "eval.solvers=[euler]")
    assert code == 0, err
    # re-measure only the timing: metrics untouched, timing refreshed
    before = json.loads(next(bench_cli.results.glob("runs/**/*.json")).read_text())
    code, _, err = bench_cli("eval", "--run", str(wd), "--timing-only")
    assert code == 0, err
    after = json.loads(next(bench_cli.results.glob("runs/**/*.json")).read_text())
    assert [r["metrics"] for r in after["rows"]] == [r["metrics"] for r in before["rows"]]
    assert all("load_avg_1min" in r["timing"] for r in after["rows"])
    code, _, err = bench_cli("sample", "--run", str(wd), "--solver", "euler", "--nfe", "3", "-n", "10")
    assert code == 0, err
    assert (wd / "samples-euler-3.pt").exists()


def test_leaderboard_rerender_is_byte_identical(bench_cli):
    assert bench_cli("run", "--method", "flow", "--dataset", "moons", "--smoke")[0] == 0
    md = bench_cli.results / "LEADERBOARD.md"
    csv = bench_cli.results / "leaderboard.csv"
    first = md.read_bytes(), csv.read_bytes()
    leaderboard.render(bench_cli.results)
    assert (md.read_bytes(), csv.read_bytes()) == first
    code, _, _ = bench_cli("leaderboard", "--out", str(bench_cli.results), "-q")
    assert code == 0 and (md.read_bytes(), csv.read_bytes()) == first


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["run", "--method", "nope"], "valid: "),
        (["run", "--method", "flow", "--dataset", "nowhere"], "unknown dataset"),
        (["run", "--method", "flow", "--set", "train.stepz=1"], "allowed keys under 'train'"),
        (["run", "--method", "flow", "--set", "train.steps=abc"], "expected an integer"),
        (["run", "--method", "flow", "--set", "eval.nfe=[0, 4]"], "NFE|nfe"),
        (["run", "--method", "flow", "--set", "method.coupling=x"], "one of"),
        (["run", "--method", "flow", "--device", "tpu"], "unknown device"),
        (["eval", "--run", "/nonexistent/run"], "not a run folder"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(bench_cli, args, msg):
    import re

    code, out, err = bench_cli(*args)
    assert code == 2
    assert re.search(msg, err), err
    assert "Traceback" not in err
    assert not bench_cli.results.exists() or not list(bench_cli.results.glob("runs/**/*.json"))


def test_malformed_yaml_and_missing_checkpoint(bench_cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [unclosed\n")
    code, _, err = bench_cli("run", "--config", str(bad))
    assert code == 2 and "malformed YAML" in err
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("method: {name: flow}\ndata: {name: moons}\n")
    code, _, err = bench_cli("eval", "--run", str(run))
    assert code == 2 and "checkpoint not found" in err
    (run / "ckpt.pt").write_text("not a checkpoint")
    code, _, err = bench_cli("sample", "--run", str(run))
    assert code == 2 and "not a loadable checkpoint" in err


def test_list_and_doctor(bench_cli):
    code, out, _ = bench_cli("list")
    assert code == 0 and "chargen" in out and "checkerboard" in out and "w2" in out
    code, out, _ = bench_cli("doctor")
    assert code == 0 and "torch" in out


def test_resume_reproduces_an_uninterrupted_run(bench_cli, monkeypatch):
    """Interrupt after a checkpoint, resume, and get bit-identical weights to a straight run."""
    import torch

    from bench import engine
    from bench.runner import resolve_config, train_run

    cfg = resolve_config("flow", "moons", sets=["train.steps=40", "train.ckpt_every=20", "train.batch_size=64"])
    dev = torch.device("cpu")
    _, _, _, straight, _ = train_run(cfg, bench_cli.runs, dev, run_id="straight")

    real_train = engine.train
    calls = {"n": 0}

    def interrupting_loss(loss):
        def step(batch, i):
            calls["n"] += 1
            if calls["n"] == 31:
                raise KeyboardInterrupt
            return loss(batch, i)

        return step

    def train_with_interrupt(method, *a, **k):
        orig = method.stages

        def stages():
            st = orig()
            for s in st:
                for u in s.updates:
                    u.loss = interrupting_loss(u.loss)
            return st

        method.stages = stages
        return real_train(method, *a, **k)

    monkeypatch.setattr(engine, "train", train_with_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, bench_cli.runs, dev, run_id="interrupted")
    monkeypatch.setattr(engine, "train", real_train)
    _, _, _, resumed, state = train_run(cfg, bench_cli.runs, dev, run_id="interrupted", resume=True)
    assert state.stage == 1
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


PLUGIN = textwrap.dedent(
    '''
    """A third-party method living outside the repo: a Gaussian fitted by maximum likelihood.
    Config, network, loss, sample: the engine does the rest (optimiser, EMA, checkpoints, records)."""
    from dataclasses import dataclass

    import torch
    from torch import nn

    from bench.methods.base import Method
    from bench.registry import register_method


    @dataclass
    class Cfg:
        shrink: float = 1.0


    class Affine(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.mean = nn.Parameter(torch.zeros(dim))
            self.log_scale = nn.Parameter(torch.zeros(dim))

        def forward(self, z):
            return self.mean + torch.exp(self.log_scale) * z


    @register_method("moment-gauss")
    class MomentGauss(Method):
        """Diagonal Gaussian fitted by maximum likelihood."""

        Config = Cfg

        def __init__(self, cfg, spec, train, workdir=None):
            super().__init__(cfg, spec, train, workdir)
            self.net = Affine(spec.dim)

        def loss(self, batch, step):
            z = (batch.x - self.net.mean) * torch.exp(-self.net.log_scale)
            return (0.5 * z.pow(2) + self.net.log_scale).sum(1).mean(), {}

        def sample(self, noise, point):
            return self.net_ema(self.cfg.shrink * noise), 1
    '''
)


def _env(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _bench(tmp_path, *args):
    cmd = [sys.executable, "-c", "from bench.cli import main; main()", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)


def test_third_party_method_via_plugin_flag_reaches_the_leaderboard(tmp_path):
    (tmp_path / "my_methods.py").write_text(PLUGIN)
    r = _bench(
        tmp_path,
        "run",
        "--plugin",
        "my_methods",
        "--method",
        "moment-gauss",
        "--dataset",
        "8gaussians",
        "--smoke",
        "--set",
        "train.lr=0.05",
        "--out",
        "res",
        "--runs-dir",
        "runs",
    )
    assert r.returncode == 0, r.stderr
    assert "moment-gauss" in (tmp_path / "res" / "LEADERBOARD.md").read_text()


def test_third_party_method_via_entry_point_is_listed(tmp_path):
    (tmp_path / "my_methods.py").write_text(PLUGIN.replace('@register_method("moment-gauss")\n', ""))
    dist = tmp_path / "my_methods-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-methods\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bench.methods]\nmoment-gauss = my_methods:MomentGauss\n")
    r = _bench(tmp_path, "list")
    assert r.returncode == 0, r.stderr
    assert "moment-gauss" in r.stdout
    r = _bench(
        tmp_path,
        "run",
        "--method",
        "moment-gauss",
        "--dataset",
        "moons",
        "--smoke",
        "--set",
        "train.lr=0.05",
        "--out",
        "res",
        "--runs-dir",
        "runs",
    )
    assert r.returncode == 0, r.stderr
    rec = json.loads(next((tmp_path / "res" / "runs" / "moons").glob("*.json")).read_text())
    assert rec["method"] == "moment-gauss" and rec["rows"][0]["metrics"]["w2"]["mean"] < 1.0
