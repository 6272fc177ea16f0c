import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.output import leaderboard


def test_smoke_run_writes_record_and_leaderboard(bench_cli):
    code, out, err = bench_cli("run", "--method", "flow", "--dataset", "8gaussians", "--smoke", "--threads", "1")
    assert code == 0, err
    # stderr is not a terminal here (a CI log): plain progress lines, the last of each task at 100%
    assert re.search(r"^train loss \S+: 150/150 \(100%\), [\d.]+/s, \d+:\d\d:\d\d elapsed$", err, re.M), err
    assert re.search(r"^train loss \S+: 50/150 \(33%\), .* ETA \d+:\d\d:\d\d$", err, re.M), err
    assert re.search(r"^evaluate flow\[icfm\] \S+: 8/8 \(100%\)", err, re.M), err
    # the final table is printed whole, at its natural width, never cut to 80 columns
    assert "…" not in out and "flow[icfm]" in out and "reference floor" in out
    assert max(len(line) for line in out.splitlines()) > 80
    (rec,) = bench_cli.records()
    assert rec["status"] == "ok" and rec["method"] == "flow" and rec["dataset"] == "8gaussians"
    nfes = {(r["solver"], r["nfe_requested"]) for r in rec["rows"]}
    assert {("euler", 1), ("euler", 4), ("heun", 4), ("dopri5", None)} <= nfes
    row = rec["rows"][0]
    assert all(r["timing"]["threads"] == 1 for r in rec["rows"])  # --threads, set before any work
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
        # hostile values (issue 11): refused before any work, one line each
        (["run", "--method", "flow", "--set", "train.lr=nan"], "'train.lr': expected a finite number"),
        (["run", "--method", "flow", "--set", "train.grad_clip=.inf"], "'train.grad_clip': expected a finite number"),
        (["run", "--method", "flow", "--set", "method.t_eps0=-.inf"], "'method.t_eps0': expected a finite number"),
        (
            ["run", "--method", "flow", "--dataset", "moons", "--set", "eval.n_gen=100000000"],
            r"need about [\d.e+]+ GiB",
        ),
        (["run", "--method", "flow", "--dataset", "moons", "--set", "eval.n_gen=20000"], "limited to 10000 samples"),
        (["run", "--method", "flow", "--set", "train.batch_size=100000000000"], "one training batch"),
        (["run", "--method", "flow", "--set", "eval.solvers=[rk99]"], "unknown solver 'rk99'"),
        (["run", "--method", "flow", "--seed", "-1"], r"seed must be in \[0, "),
        (
            ["run", "--method", "chargen", "--set", "method.teacher.run=../../../etc"],
            "teacher run '../../../etc' not found",
        ),
        (
            ["run", "--method", "chargen", "--set", "method.teacher.run=no-such-run"],
            "teacher run 'no-such-run' not found",
        ),
        (["run", "--plugin", "json.decoder.nope"], "cannot import plugin module"),
        # usage errors: one line too, not Typer's box
        (["run", "--bogus"], "No such option: --bogus"),
        (["run", "--seed", "abc"], "Invalid value for '--seed'"),
        (["run", "--threads", "0"], "Invalid value for '--threads'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(bench_cli, args, msg):
    before = _tree(bench_cli.tmp)
    code, out, err = bench_cli(*args)
    assert code == 2
    assert re.search(msg, err), err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert _tree(bench_cli.tmp) == before  # nothing written: no results/, no runs/


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_output_folders_are_checked_before_any_work(bench_cli, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["run", "--out", str(a_file)], "--out .*exists and is not a folder"),
        (["run", "--runs-dir", str(a_file)], "--runs-dir .*exists and is not a folder"),
        (["run", "--runs-dir", str(a_file / "sub")], "--runs-dir .*is a file, not a folder"),
        (["train", "--runs-dir", str(a_file)], "--runs-dir .*exists and is not a folder"),
        (["eval", "--run", str(tmp_path), "--out", str(a_file / "r")], "--out .*is a file, not a folder"),
        (["sample", "--run", str(tmp_path), "-o", str(tmp_path)], "--output .*is a folder"),
        (["run", "--out", "bad\0name"], "'--out'.*null byte"),
    ]
    if os.geteuid() != 0:  # root may write anywhere: the permission check is only testable as a user
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        cases.append((["run", "--out", str(ro / "results")], "--out .*is not writable"))
    before = _tree(tmp_path)
    for args, msg in cases:
        code, _, err = bench_cli(*args, dirs=False)
        assert code == 2 and re.search(msg, err) and len(err.strip().splitlines()) == 1, (args, err)
    assert _tree(tmp_path) == before


def test_run_id_with_path_traversal_creates_nothing(bench_cli, tmp_path):
    before = _tree(tmp_path.parent)
    for rid in ["../../escape", "../x", "/abs", ".hidden", "a/b"]:
        code, _, err = bench_cli("train", "--method", "flow", "--dataset", "moons", "--smoke", "--run-id", rid)
        assert code == 2 and "invalid run id" in err and len(err.strip().splitlines()) == 1, err
    assert _tree(tmp_path.parent) == before


def test_dry_run_resolves_checks_and_writes_nothing(bench_cli, tmp_path, monkeypatch):
    import torch
    import yaml

    from bench.core.config import build_run_config, run_config_dict

    before = _tree(tmp_path)
    args = ["run", "--dry-run", "--method", "chargen", "--dataset", "moons", "--smoke", "--set", "method.euler_steps=7"]
    code, out, err = bench_cli(*args, "--threads", "3")
    assert code == 0, err
    assert torch.get_num_threads() == 3
    resolved = yaml.safe_load(out)
    assert resolved["method"]["euler_steps"] == 7 and resolved["train"]["steps"] == 150
    assert run_config_dict(build_run_config(resolved)) == resolved
    assert "dry run" in err and _tree(tmp_path) == before
    # default threads: $OMP_NUM_THREADS when set, else the cores this process may use
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert bench_cli(*args)[0] == 0 and torch.get_num_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert bench_cli(*args)[0] == 0 and torch.get_num_threads() == len(os.sched_getaffinity(0))


def test_plain_progress_lines_every_tenth_and_at_the_end():
    import io

    from rich.console import Console

    from bench.cli import PlainProgress

    buf = io.StringIO()
    p = PlainProgress(Console(file=buf, width=80), every_s=1e9)
    task = p.add_task("fit", total=200, completed=0)
    for step in range(1, 201):
        p.update(task, completed=step, description=f"fit loss {1 / step:.3g}")
    p.update(task, completed=200)  # a repeated final update prints nothing more
    ev = p.add_task("evaluate", total=3)
    for _ in range(3):
        p.update(ev, advance=1)
    lines = buf.getvalue().splitlines()
    want = [f"{20 * k}/200" for k in range(1, 11)] + ["1/3", "2/3", "3/3"]
    assert [ln.split(":")[1].split()[0] for ln in lines] == want
    assert lines[0].startswith("fit loss 0.05: 20/200 (10%), ") and "ETA" in lines[0]
    assert lines[9].startswith("fit loss 0.005: 200/200 (100%)") and "ETA" not in lines[9]
    assert max(len(ln) for ln in lines) < 80


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
    from bench.cli import describe
    from bench.registry import DATASETS, METHODS

    code, out, _ = bench_cli("list")
    assert code == 0 and "chargen" in out and "checkerboard" in out and "w2" in out
    assert "…" not in out
    for name, obj in [*METHODS.items(), *DATASETS.items()]:
        desc = describe(obj)
        assert desc and "\n" not in desc, name  # one line each, from the class (else its module) docstring
        assert re.search(rf"│ {re.escape(name)} +│ {re.escape(desc)} +│", out), (name, desc)
    code, out, _ = bench_cli("run", "--help")
    assert code == 0
    smoke = next(line for line in out.splitlines() if "--smoke" in line)
    assert "<bool>" not in smoke and "flag" in smoke  # a flag, not an option taking a value
    code, out, _ = bench_cli("doctor")
    assert code == 0 and "torch" in out


def test_resume_reproduces_an_uninterrupted_run(bench_cli, monkeypatch):
    """Interrupt after a checkpoint, resume, and get bit-identical weights to a straight run."""
    import torch

    from bench.run import engine
    from bench.run.runner import resolve_config, train_run

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


def test_a_run_saved_before_a_defaulted_option_existed_still_loads_and_resumes(bench_cli):
    """Configs are compared resolved against today's defaults: a key the older code did not have (its default
    is what that code did) does not orphan the run; a different value of a real option is still refused."""
    import torch
    import yaml

    from bench.core.checkpoint import save_checkpoint
    from bench.run.runner import load_run

    sets = ["--set", "method.cache=disk", "--set", "method.n_traj=64", "--set", "method.fit_steps=10"]
    code, _, err = bench_cli("train", "--method", "chargen", "--dataset", "moons", "--smoke", "--run-id", "old", *sets)
    assert code == 0, err
    run = bench_cli.runs / "old"
    ck = torch.load(run / "ckpt.pt", weights_only=True)
    del ck["config"]["method"]["trajectories_from"]  # as written before the option existed
    save_checkpoint(run / "ckpt.pt", ck)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    del raw["method"]["trajectories_from"]
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    load_run(run, torch.device("cpu"))  # no "trained with another config"
    code, _, err = bench_cli(
        "train", "--method", "chargen", "--dataset", "moons", "--smoke", "--run-id", "old", "--resume", *sets
    )
    assert code == 0, err
    ck["config"]["method"]["fit_lr"] = 0.5  # a real difference
    save_checkpoint(run / "ckpt.pt", ck)
    with pytest.raises(BenchError, match="another config"):
        load_run(run, torch.device("cpu"))
