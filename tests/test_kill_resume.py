"""SIGKILL a real ``bench`` process at points across the whole life of a run, resume it, and get what an
uninterrupted run gets, bit for bit (CPU): final weights, optimiser/RNG state, samples, record metrics.

How a point is hit without editing the code under test:
- training points: the test polls the run folder (``ckpt.pt``'s ``train_state``, loaded with
  ``weights_only=True``; the trajectory ``.npy`` of the disk cache) and kills while the process is still alive,
  then checks from the checkpoint left behind that the kill landed in the intended stage;
- points inside evaluation, checkpoint and record writes: the killed process imports a probe
  (``--plugin killprobe``, written below) that pauses it when it reaches the named point and touches a marker
  file; the test kills it there. The probe only observes and pauses; it never changes what is computed.

The uninterrupted reference of each config runs in this process (one thread, as the subprocesses), while
the killed subprocess starts up; the resume, ``bench sample`` and ``bench eval`` run in this process too.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch


def _sets(*kv: str) -> list[str]:
    return [x for k in kv for x in ("--set", k)]


EVAL = _sets(
    "eval.n_gen=300",
    "eval.n_ref=300",
    "eval.repeats=2",
    "eval.nfe=[1,4]",
    "eval.solvers=[euler]",
    "eval.timing_repeats=2",
    "eval.timing_min_s=0.01",
    "eval.timing_batch=64",
)
TRAIN = _sets("train.batch_size=64", "train.ckpt_every=25", "train.log_every=5", "train.warmup_steps=10")
CONFIGS: dict[str, list[str]] = {
    "flow": [
        *("--method", "flow", "--dataset", "moons"),
        *TRAIN,
        *_sets("train.steps=200", "method.net.hidden=64"),
        *EVAL,
    ],
    "gan-ns": [
        *("--method", "gan-ns", "--dataset", "moons"),
        *TRAIN,
        *_sets("train.steps=200", "method.g.hidden=64", "method.d.hidden=64"),
        *EVAL,
    ],
}
# chargen: teacher 100 steps, 8 Euler steps, fit 200 steps. 20,000 trajectories where the test kills inside
# their generation (it then lasts about a second), 2,048 elsewhere.
for _name, _cache, _m in [
    ("chargen-memory", "memory", 2048),
    ("chargen-memory-m20k", "memory", 20000),
    ("chargen-disk", "disk", 20000),
]:
    CONFIGS[_name] = [
        *("--method", "chargen", "--dataset", "moons"),
        *TRAIN,
        *_sets(
            "train.steps=100",
            "method.teacher.flow.net.hidden=64",
            "method.euler_steps=8",
            f"method.n_traj={_m}",
            "method.chunk=2048",
            "method.fit_steps=200",
            "method.fit_batch=64",
            "method.compose=[1,2]",
            f"method.cache={_cache}",
        ),
        *EVAL,
    ]
CHARGEN_STAGES = ["teacher", "trajectories", "fit"]
STAGES = {"flow": ["train"], "gan-ns": ["gan"], **{k: CHARGEN_STAGES for k in CONFIGS if k.startswith("chargen")}}
STEPS = {"train": 200, "gan": 200, "teacher": 100, "fit": 200}


PROBE = textwrap.dedent(
    '''
    """Kill probe, imported with --plugin: KILLPROBE=<point>[:<n>] pauses this process the n-th time it
    reaches <point>, after touching KILLPROBE_MARK, so that the test can SIGKILL it exactly there."""
    import os
    import time
    from pathlib import Path

    import bench.core.checkpoint as _ck
    import bench.eval.evaluate as _ev
    import bench.eval.metrics.w2 as _w2
    import bench.eval.sampling as _smp

    POINT, _, _N = os.environ.get("KILLPROBE", "").partition(":")
    _seen = [0]


    def reached(point):
        if point != POINT:
            return
        _seen[0] += 1
        if _seen[0] == int(_N or 1):
            Path(os.environ["KILLPROBE_MARK"]).write_text(point)
            while True:
                time.sleep(60)


    if POINT == "sample":  # a batch of samples drawn, not yet handed to the metric (or to `bench sample`)
        _draw = _smp.Samples._draw

        def _draw_probe(self, seeds):
            out = _draw(self, seeds)
            reached("sample")
            return out

        _smp.Samples._draw = _draw_probe

    if POINT == "metric":  # inside an exact W2 computation, its optimal transport just solved
        _solve = _w2._solve

        def _solve_probe(*a, **k):
            out = _solve(*a, **k)
            reached("metric")
            return out

        _w2._solve = _solve_probe

    for _name, _point in (("reference_floor", "floor"), ("time_points", "timing")):
        if POINT == _point:  # entering the reference floor / the timing, all metrics done
            def _wrap(fn, point):
                def probe(*a, **k):
                    reached(point)
                    return fn(*a, **k)

                return probe

            setattr(_ev, _name, _wrap(getattr(_ev, _name), _point))

    if POINT == "unpack":  # unpacking an official .gz data file: half of it written
        import shutil

        import bench.datasets.images as _img

        class _Shutil:
            def __getattr__(self, name):
                return getattr(shutil, name)

            def copyfileobj(self, src, dst, *a, **k):
                data = src.read()
                dst.write(data[: len(data) // 2])
                dst.flush()
                reached("unpack")
                dst.write(data[len(data) // 2 :])

        _img.shutil = _Shutil()

    if POINT in ("record", "ckpt", "output"):  # inside an atomic write: temporary file complete, not renamed
        class _OS:
            def __getattr__(self, name):
                return getattr(os, name)

            def replace(self, src, dst):
                d = Path(dst)
                kind = "ckpt" if d.name == "ckpt.pt" else "record" if d.suffix == ".json" else "output"
                reached(kind)
                return os.replace(src, dst)

        _ck.os = _OS()
    '''
)


# -- running bench --------------------------------------------------------------------------------------------


def _env(tmp: Path, probe: str | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(tmp) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if probe:
        env.update(KILLPROBE=probe, KILLPROBE_MARK=str(tmp / "probe-hit"))
    return env


def cli(*args: str) -> int:
    """The real CLI in this process (one thread, as the subprocesses); its exit code."""
    from bench.cli import main

    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    old, sys.argv = sys.argv, ["bench", *args]
    try:
        main()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
        torch.set_num_threads(threads)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = omp
    return 0


class Killer:
    """``bench <args>`` in a subprocess, SIGKILLed by a watcher thread as soon as ``when()`` holds."""

    def __init__(self, tmp: Path, args: list[str], when: Callable[[], bool], probe: str | None = None) -> None:
        (tmp / "killprobe.py").write_text(PROBE)
        self.log = tmp / "killed.log"
        cmd = [sys.executable, "-m", "bench.cli", *args]
        if probe:
            cmd += ["--plugin", "killprobe"]
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(cmd, cwd=tmp, env=_env(tmp, probe), stdout=f, stderr=subprocess.STDOUT)
        self.when, self.missed = when, ""
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        deadline = time.monotonic() + 400
        while True:
            if self.proc.poll() is not None:
                self.missed = f"exited with {self.proc.returncode} before the kill point"
                return
            if time.monotonic() > deadline:
                self.missed = "kill point not reached within 400 s"
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                return
            if self.when():
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                return
            time.sleep(0.005)

    def join(self) -> None:
        self.thread.join(timeout=450)
        assert not self.missed, f"{self.missed}; output:\n{self.log.read_text()[-3000:]}"
        assert self.proc.returncode == -signal.SIGKILL, self.log.read_text()[-3000:]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


class CkptWatch:
    """``ckpt.pt``'s train_state (stage, step), reloaded only when the file was replaced."""

    def __init__(self, runs: Path, run_id: str | None = None) -> None:
        self.runs, self.run_id, self.key, self.state = runs, run_id, None, None

    def path(self) -> Path | None:
        if self.run_id:
            return self.runs / self.run_id / "ckpt.pt"
        found = sorted(self.runs.glob("*/ckpt.pt"))
        return found[0] if found else None

    def __call__(self) -> tuple[int, int] | None:
        p = self.path()
        try:
            st = p.stat() if p is not None else None
        except FileNotFoundError:
            st = None
        if st is None:
            return None
        if (st.st_ino, st.st_mtime_ns) != self.key:
            ts = _load(p)["train_state"]  # every version a reader sees is complete: the writes are atomic
            self.key, self.state = (st.st_ino, st.st_mtime_ns), (ts["stage"], ts["step"])
        return self.state


# -- the uninterrupted reference ------------------------------------------------------------------------------

_REFS: dict[str, dict] = {}


def reference(name: str, base: Path, evaluate: bool = False) -> dict:
    """Config ``name`` trained uninterrupted (``bench train``), sampled (``bench sample``) and, when asked,
    evaluated (``bench eval``); each once per session."""
    run = base / f"ref-{name}" / "runs" / "ref"
    if name not in _REFS:
        assert cli("train", *CONFIGS[name], "--device", "cpu", "--runs-dir", str(run.parent), "--run-id", "ref") == 0
        out = run.parent.parent / "samples.pt"
        assert cli("sample", "--run", str(run), "-n", "200", "--output", str(out), "--device", "cpu") == 0
        _REFS[name] = {"run": run, "ckpt": _load(run / "ckpt.pt"), "samples": _load(out)}
    if evaluate and "record" not in _REFS[name]:
        results = run.parent.parent / "results"
        assert cli("eval", "--run", str(run), "--out", str(results), "--device", "cpu") == 0
        (rec,) = records(results)
        _REFS[name]["record"] = json.loads(rec.read_text())
    return _REFS[name]


@pytest.fixture(scope="module")
def refs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("references")


# -- comparisons ----------------------------------------------------------------------------------------------


def assert_same(a, b, where: str = "") -> None:
    """Equal trees; tensors equal bit for bit (same dtype, shape and values)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max |diff| {(a.double() - b.double()).abs().max().item():.3g}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_training(ref: dict, ck: dict) -> None:
    """Final weights, optimiser, LR schedule and RNG states, and what training reported (except wall-clock)."""
    assert_same(ref["ckpt"]["method_state"], ck["method_state"], "method_state")
    assert_same(ref["ckpt"]["optim"], ck["optim"], "optim")
    assert_same(ref["ckpt"]["rng"], ck["rng"], "rng")
    assert_same(ref["ckpt"]["config"], ck["config"], "config")
    a, b = dict(ref["ckpt"]["train_state"]), dict(ck["train_state"])
    assert a.pop("wall_s").keys() == b.pop("wall_s").keys()
    assert_same(a, b, "train_state")


def assert_same_samples(ref: dict, run: Path) -> None:
    out = run.parent.parent / f"samples-{run.name}.pt"
    assert cli("sample", "--run", str(run), "-n", "200", "--output", str(out), "--device", "cpu") == 0
    got = _load(out)
    assert_same(ref["samples"]["samples"], got["samples"], "samples")
    assert (ref["samples"]["label"], ref["samples"]["nfe"]) == (got["label"], got["nfe"])


def _numbers(rec: dict) -> dict:
    """What a record measured (every metric value of every row and of the floor) and what training cost."""
    rows = {
        (r["label"], r["solver"], r["nfe_requested"]): (r["nfe"], {k: m["values"] for k, m in r["metrics"].items()})
        for r in rec["rows"]
    }
    floor = {k: v["values"] for k, v in rec["reference_floor"].items()}
    cost = rec["train"]["cost"]
    return {
        "rows": rows,
        "floor": floor,
        "passes": cost["network_passes"],
        "passes_by_stage": cost["network_passes_by_stage"],
        "stage_info": rec["train"]["stage_info"],
        "final_logs": rec["train"]["final_logs"],
        "params": rec["params"],
    }


def records(results: Path) -> list[Path]:
    return sorted((results / "runs").glob("**/*.json")) if (results / "runs").exists() else []


def resume_and_check(name: str, tmp: Path, refs_dir: Path, run_id: str, evaluate: bool) -> None:
    """Resume the killed run to the end, then compare weights, samples (and the record) with the reference."""
    ref = reference(name, refs_dir, evaluate)
    runs, results = tmp / "runs", tmp / "results"
    assert cli("train", "--run-id", run_id, "--resume", "--runs-dir", str(runs), "--device", "cpu") == 0
    run = runs / run_id
    assert_same_training(ref, _load(run / "ckpt.pt"))
    assert_same_samples(ref, run)
    if evaluate:
        assert records(results) == []
        assert cli("eval", "--run", str(run), "--out", str(results), "--device", "cpu") == 0
        (path,) = records(results)
        assert _numbers(json.loads(path.read_text())) == _numbers(ref["record"])


# -- kill points ----------------------------------------------------------------------------------------------


def kill_in_training(
    name: str, stage: str, tmp: Path, refs_dir: Path, evaluate: bool = False, command: str = "train"
) -> tuple[int, int]:
    """Kill ``bench train`` (or ``bench run``) inside ``stage`` after a checkpoint written inside it (or, for a
    one-shot stage such as the trajectories, while it runs), resume, compare. Returns the (stage, step) the
    kill left."""
    si = STAGES[name].index(stage)
    runs = tmp / "runs"
    watch = CkptWatch(runs, "x" if command == "train" else None)
    one_shot = stage == "trajectories"

    def when() -> bool:
        st = watch()
        if st is None or st[0] != si:
            return False
        if one_shot:  # the stage before it has checkpointed its end; the disk cache has created its file too
            return not name.endswith("disk") or (watch.path().parent / "trajectories-K8-m20000.npy").exists()
        return st[1] >= 25

    args = [command, *CONFIGS[name], "--device", "cpu", "--runs-dir", "runs"]
    args += ["--run-id", "x"] if command == "train" else ["--out", "results"]
    k = Killer(tmp, args, when)
    reference(name, refs_dir, evaluate)  # computed meanwhile
    k.join()
    left = watch()
    assert left is not None and left[0] == si, f"the kill landed at {left}, not inside stage {stage!r}"
    assert one_shot or 25 <= left[1] < STEPS[stage], left
    resume_and_check(name, tmp, refs_dir, watch.path().parent.name, evaluate)
    return left


def kill_in_evaluation(name: str, point: str | None, tmp: Path, refs_dir: Path) -> None:
    """Kill ``bench run`` during its evaluation (at a probe point, or as soon as training has finished):
    no record, no leaderboard; then resume, evaluate and compare."""
    runs, results = tmp / "runs", tmp / "results"
    watch = CkptWatch(runs)
    n_stages = len(STAGES[name])
    mark = tmp / "probe-hit"

    def when() -> bool:
        return mark.exists() if point else (watch() or (0, 0))[0] == n_stages

    args = ["run", *CONFIGS[name], "--device", "cpu", "--runs-dir", "runs", "--out", "results"]
    k = Killer(tmp, args, when, probe=point)
    reference(name, refs_dir, evaluate=True)
    k.join()
    assert watch() == (n_stages, 0), "training had not finished when the evaluation was killed"
    assert records(results) == [] and not (results / "LEADERBOARD.md").exists()
    if point == "record":  # killed inside the write: its temporary file is complete, the record is not there
        assert list((results / "runs").glob("*/.*.json.*.tmp"))
    (run,) = runs.iterdir()
    before = (run / "ckpt.pt").read_bytes()
    resume_and_check(name, tmp, refs_dir, run.name, evaluate=True)
    assert (run / "ckpt.pt").read_bytes() == before  # resuming a finished run rewrites nothing


# -- fast subset (default run) --------------------------------------------------------------------------------


def test_flow_killed_mid_training_resumes_bit_exact(tmp_path, refs_dir):
    kill_in_training("flow", "train", tmp_path, refs_dir)


def test_chargen_killed_mid_fit_resumes_bit_exact(tmp_path, refs_dir):
    """Memory cache: the resumed fit regenerates the trajectories and draws the same pairs."""
    kill_in_training("chargen-memory", "fit", tmp_path, refs_dir)


# -- slow set -------------------------------------------------------------------------------------------------

TRAINING_POINTS = [
    ("chargen-memory", "teacher", "train"),
    ("chargen-memory-m20k", "trajectories", "train"),
    ("chargen-disk", "teacher", "train"),
    ("chargen-disk", "trajectories", "train"),
    ("chargen-disk", "fit", "train"),
    ("gan-ns", "gan", "run"),  # `bench run` killed while training: no record; resumed with `bench train`
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "stage", "command"), TRAINING_POINTS)
def test_killed_in_every_training_stage_resumes_bit_exact(tmp_path, refs_dir, name, stage, command):
    kill_in_training(name, stage, tmp_path, refs_dir, evaluate=True, command=command)


EVAL_POINTS = [
    ("flow", None),  # as soon as the final checkpoint is on disk (first eval point's samples)
    ("flow", "sample"),
    ("flow", "metric"),
    ("flow", "floor"),
    ("flow", "timing"),
    ("flow", "record"),
    ("chargen-memory", "sample"),
    ("chargen-memory", "metric"),
    ("chargen-disk", "timing"),
    ("gan-ns", "metric"),
    ("gan-ns", "record"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "point"), EVAL_POINTS, ids=[f"{n}-{p or 'final-checkpoint'}" for n, p in EVAL_POINTS])
def test_killed_during_evaluation_leaves_no_record_and_evaluates_the_same(tmp_path, refs_dir, name, point):
    kill_in_evaluation(name, point, tmp_path, refs_dir)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "nth", "left"),
    [("flow", 3, (0, 50)), ("gan-ns", 5, (0, 100)), ("chargen-memory", 5, (1, 0))],
    ids=["flow-mid-stage", "gan-mid-stage", "chargen-end-of-trajectories"],
)
def test_killed_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, refs_dir, name, nth, left):
    """The n-th checkpoint's temporary file is complete but not renamed when the kill lands: ckpt.pt is the
    (n-1)-th, loadable, and the resume from it is exact. chargen's 5th is the end of its trajectories stage
    (after three teacher checkpoints and the teacher's end)."""
    args = ["train", *CONFIGS[name], "--device", "cpu", "--runs-dir", "runs", "--run-id", "x"]
    k = Killer(tmp_path, args, (tmp_path / "probe-hit").exists, probe=f"ckpt:{nth}")
    reference(name, refs_dir)
    k.join()
    run = tmp_path / "runs" / "x"
    assert list(run.glob(".ckpt.pt.*.tmp"))
    ts = _load(run / "ckpt.pt")["train_state"]
    assert (ts["stage"], ts["step"]) == left
    resume_and_check(name, tmp_path, refs_dir, "x", evaluate=False)


@pytest.mark.slow
def test_killed_before_the_first_checkpoint_restarts_under_the_same_id(tmp_path, refs_dir):
    """Nothing to resume from: ``--resume`` exits 2 with one line; the same command without it starts over."""
    args = ["train", *CONFIGS["flow"], "--device", "cpu", "--runs-dir", "runs", "--run-id", "x"]
    k = Killer(tmp_path, args, (tmp_path / "probe-hit").exists, probe="ckpt:1")
    reference("flow", refs_dir)
    k.join()
    runs = tmp_path / "runs"
    assert not (runs / "x" / "ckpt.pt").exists()
    assert cli("train", "--run-id", "x", "--resume", "--runs-dir", str(runs), "--device", "cpu") == 2
    assert cli("train", *CONFIGS["flow"], "--run-id", "x", "--runs-dir", str(runs), "--device", "cpu") == 0
    ref = reference("flow", refs_dir)
    assert_same_training(ref, _load(runs / "x" / "ckpt.pt"))
    assert_same_samples(ref, runs / "x")


@pytest.mark.slow
def test_a_resumed_run_killed_again_resumes_bit_exact(tmp_path, refs_dir):
    """chargen killed in its teacher, resumed in a subprocess that is killed again in its fit, resumed again."""
    runs = tmp_path / "runs"
    watch = CkptWatch(runs, "x")
    args = ["train", *CONFIGS["chargen-memory"], "--device", "cpu", "--runs-dir", "runs", "--run-id", "x"]
    k = Killer(tmp_path, args, lambda: (watch() or (9, 0))[0] == 0 and watch()[1] >= 25)
    reference("chargen-memory", refs_dir)
    k.join()
    assert watch()[0] == 0
    k = Killer(
        tmp_path,
        ["train", "--run-id", "x", "--resume", "--runs-dir", "runs", "--device", "cpu"],
        lambda: (watch() or (0, 0))[0] == 2 and watch()[1] >= 50,
    )
    k.join()
    assert watch()[0] == 2 and 50 <= watch()[1] < 200
    resume_and_check("chargen-memory", tmp_path, refs_dir, "x", evaluate=False)


def _last_logged_step(run: Path) -> int:
    lines = (run / "log.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["step"] if lines else 0


@pytest.mark.slow
@pytest.mark.parametrize("where", ["mid-stage", "before-first-checkpoint"])
def test_resumed_log_holds_each_step_once_like_an_uninterrupted_run(tmp_path, refs_dir, where):
    """The killed attempt logged steps past its last checkpoint (or had no checkpoint at all): after the
    resume (or the restart) log.jsonl must read as the uninterrupted run's, line for line (values are
    bit-exact, so the lines are the same text)."""
    runs = tmp_path / "runs"
    args = ["train", *CONFIGS["flow"], "--device", "cpu", "--runs-dir", "runs", "--run-id", "x"]
    if where == "mid-stage":
        watch = CkptWatch(runs, "x")

        def when() -> bool:
            st = watch()
            return st is not None and st[1] >= 25 and _last_logged_step(runs / "x") > st[1]

        k = Killer(tmp_path, args, when)
    else:
        k = Killer(tmp_path, args, (tmp_path / "probe-hit").exists, probe="ckpt:1")
    ref = reference("flow", refs_dir)
    k.join()
    resumed = ["--resume"] if where == "mid-stage" else CONFIGS["flow"]
    assert cli("train", *resumed, "--run-id", "x", "--runs-dir", str(runs), "--device", "cpu") == 0
    assert_same_training(ref, _load(runs / "x" / "ckpt.pt"))
    assert (runs / "x" / "log.jsonl").read_text() == (ref["run"] / "log.jsonl").read_text()


@pytest.mark.slow
def test_killed_bench_sample_writes_no_samples_file(tmp_path, refs_dir):
    run = reference("flow", refs_dir)["run"]
    for point in ("sample", "output"):
        out = tmp_path / f"{point}.pt"
        args = ["sample", "--run", str(run), "-n", "200", "--output", str(out), "--device", "cpu"]
        mark = tmp_path / "probe-hit"
        mark.unlink(missing_ok=True)
        k = Killer(tmp_path, args, mark.exists, probe=point)
        k.join()
        assert not out.exists()


@pytest.mark.slow
def test_killed_reevaluation_keeps_the_old_record_byte_for_byte(tmp_path, refs_dir):
    """A second ``bench eval`` of an evaluated run killed inside its record write (lock held, temporary file
    complete): the old record is untouched, the lock dies with the process, and the next eval merges."""
    ref = reference("flow", refs_dir, evaluate=True)
    run = ref["run"]
    results = tmp_path / "results"
    assert cli("eval", "--run", str(run), "--out", str(results), "--device", "cpu") == 0
    (path,) = records(results)
    old = path.read_bytes()
    args = ["eval", "--run", str(run), "--out", "results", "--device", "cpu", "--set", "eval.nfe=[1,2]"]
    k = Killer(tmp_path, args, (tmp_path / "probe-hit").exists, probe="record")
    k.join()
    assert path.read_bytes() == old
    assert records(results) == [path]
    assert cli("eval", "--run", str(run), "--out", str(results), "--device", "cpu", "--set", "eval.nfe=[1,2]") == 0
    rec = json.loads(path.read_text())
    assert [h["action"] for h in rec["history"]] == ["merged"]
    got = {(r["solver"], r["nfe_requested"]) for r in rec["rows"]}
    before = {(r["solver"], r["nfe_requested"]) for r in ref["record"]["rows"]}
    assert before < got and {n for _, n in got - before} == {2}


@pytest.mark.slow
def test_killed_while_unpacking_mnist_the_next_run_reads_the_data(tmp_path):
    import gzip
    import struct

    import numpy as np

    from bench.registry import DATASETS, load_builtins

    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    for split, img in (("train", images), ("t10k", images[:5])):
        for kind, arr in (("images-idx3", img), ("labels-idx1", img[:, 0, 0] % 10)):
            head = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
            (raw / f"{split}-{kind}-ubyte.gz").write_bytes(gzip.compress(head + arr.tobytes()))
    args = ["train", "--method", "flow", "--dataset", "mnist", "--set", f"data.root={tmp_path / 'data'}"]
    k = Killer(
        tmp_path,
        [*args, "--device", "cpu", "--runs-dir", "runs", "--run-id", "x"],
        (tmp_path / "probe-hit").exists,
        probe="unpack",
    )
    k.join()
    # killed with half of train-images-idx3-ubyte's bytes written: the next run must read the whole data
    load_builtins()
    cls = DATASETS.get("mnist")
    ds = cls(cls.Config(root=str(tmp_path / "data")), 0)
    assert torch.equal(ds.split_u8("train")[:, 0], torch.from_numpy(images))


def _write_forever(path: str, start: int) -> None:
    from bench.core.checkpoint import atomic_write_json

    pad = [list(range(500)) for _ in range(400)]  # about 1 MB of JSON per write
    i = start
    while True:
        atomic_write_json(Path(path), {"i": i, "pad": pad, "end": i})
        i += 1


@pytest.mark.slow
def test_atomic_json_write_killed_anywhere_leaves_the_old_or_the_new_file(tmp_path):
    """Kill a process looping ``atomic_write_json`` of a 1 MB record 30 times at random moments: the file
    always parses and is whole (old or new version); at least one kill landed in the middle of a write."""
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("needs fork")
    ctx = mp.get_context("fork")
    path = tmp_path / "rec.json"
    rng = random.Random(0)
    last, mid_write = -1, 0
    for _ in range(30):
        p = ctx.Process(target=_write_forever, args=(str(path), last + 1))
        p.start()
        while not path.exists():
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.3))
        for _ in range(3):  # a concurrent reader never sees a partial file either
            rec = json.loads(path.read_text())
            assert rec["i"] == rec["end"] and len(rec["pad"]) == 400
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        assert p.exitcode == -signal.SIGKILL
        rec = json.loads(path.read_text())
        assert rec["i"] == rec["end"] >= last and len(rec["pad"]) == 400
        last = rec["i"]
        leftovers = list(tmp_path.glob(".rec.json.*.tmp"))
        mid_write += bool(leftovers)
        for f in leftovers:
            f.unlink()
    assert mid_write >= 1


# -- the other guarantees RELIABILITY.md lists that no other test proves --------------------------------------


@pytest.mark.parametrize("run_id", ["..", ".", "a\\b", "x" * 201, ""])
def test_a_run_id_cannot_escape_the_runs_folder(tmp_path, run_id):
    """The cases tests/test_cli.py::test_run_id_with_path_traversal_creates_nothing leaves out."""
    runs = tmp_path / "deep" / "runs"
    code = cli("train", *CONFIGS["flow"], "--run-id", run_id, "--runs-dir", str(runs), "--device", "cpu")
    assert code == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == []  # nothing created, inside or outside the runs folder


class _Evil:
    """Unpickling this object opens (creates) a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    import pickle

    from bench.core.checkpoint import CKPT_FORMAT

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("method: {name: flow}\ndata: {name: moons}\n")
    marker = tmp_path / "code-ran"
    torch.save({"format": CKPT_FORMAT, "method_state": _Evil(marker)}, run / "ckpt.pt", pickle_module=pickle)
    assert cli("sample", "--run", str(run), "-n", "4", "--device", "cpu") == 2
    assert cli("train", "--run-id", "r", "--resume", "--runs-dir", str(tmp_path / "runs"), "--device", "cpu") == 2
    assert cli("eval", "--run", str(run), "--out", str(tmp_path / "results"), "--device", "cpu") == 2
    assert not marker.exists()
    assert not (tmp_path / "results").exists()


def test_a_yaml_config_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"method: !!python/object/apply:os.system ['touch {marker}']\n")
    runs = tmp_path / "runs"
    assert cli("train", "--config", str(evil), "--run-id", "r", "--runs-dir", str(runs), "--device", "cpu") == 2
    code = cli(
        "train",
        *CONFIGS["flow"],
        "--set",
        f"seed=!!python/object/apply:os.system ['touch {marker}']",
        "--run-id",
        "r",
        "--runs-dir",
        str(runs),
        "--device",
        "cpu",
    )
    assert code == 2
    assert not marker.exists() and not runs.exists()


@pytest.mark.parametrize("content", ['{"run_id": "ref", "rows": [', '{"run_id": "ref"}'], ids=["truncated", "no-rows"])
def test_retiming_a_corrupt_record_names_it_and_exits_2(tmp_path, refs_dir, content):
    run = reference("flow", refs_dir)["run"]
    path = tmp_path / "results" / "runs" / "moons" / "ref.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert cli("eval", "--run", str(run), "--out", str(tmp_path / "results"), "--timing-only", "--device", "cpu") == 2
    assert path.read_text() == content
