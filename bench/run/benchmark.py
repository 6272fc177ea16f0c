"""The committed benchmark definition (``results/benchmark.yaml``): every method at its named recipe on every
data set of a suite, over the suite's seeds. ``bench sweep results/benchmark.yaml`` expands it into plain
``bench run`` jobs with deterministic run ids, so a second call reuses finished runs (its record exists),
resumes interrupted ones (its checkpoint exists) and runs only what is missing.

    sets: ["eval.repeats=3"]              # optional: every job
    suites:
      points:
        datasets: [checkerboard, moons]
        seeds: [0, 1, 2]
        sets: []                          # optional: every job of this suite
        jobs:
          - name: flow                    # the run id starts with it; a teacher is named by it
            method: flow
            recipe: "independent coupling, Euler solver rows (Lipman et al. 2023)"   # provenance, shown
            sets: [train.steps=4000]
          - name: chargen
            method: chargen
            teacher: flow                 # reuses this suite's `flow` run of the same data set and seed
            recipe: "..."

A job with ``teacher`` gets ``method.teacher.run=<that job's run id>`` and runs after it. The run id is
``<name>-<dataset>-s<seed>-<hash>``, the hash over the method, every set and the teacher's run id: changing a
recipe gives new runs instead of silently mixing two recipes under one name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.config import from_dict, load_yaml
from bench.errors import BenchError


@dataclass
class BenchJob:
    name: str
    method: str
    recipe: str  # where the recipe comes from (paper table, official config, this suite's measurement)
    sets: list[str] = field(default_factory=list)
    teacher: str = ""  # name of an earlier job of the same suite whose run is this job's method.teacher.run
    seeds: list[int] = field(default_factory=list)  # [] = the suite's seeds; else a subset of them

    def validate(self) -> None:
        if not self.name or not self.method or not self.recipe.strip():
            raise BenchError("benchmark job: name, method and recipe must not be empty")


@dataclass
class Suite:
    datasets: list[str]
    seeds: list[int]
    jobs: list[Any]  # mappings, each a BenchJob
    sets: list[str] = field(default_factory=list)


@dataclass
class Benchmark:
    suites: Any  # {suite name: Suite mapping}
    sets: list[str] = field(default_factory=list)
    smoke: bool = False  # every job with --smoke (tests, a first look)


@dataclass(frozen=True)
class Planned:
    """One expanded job: its run id, ``bench run`` options and the run id it waits for (or "")."""

    suite: str
    job: str
    method: str
    dataset: str
    seed: int
    run_id: str
    sets: tuple[str, ...]
    after: str
    smoke: bool = False


def is_benchmark(raw: Any) -> bool:
    return isinstance(raw, dict) and "suites" in raw


def _hash(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:6]


def plan(path_or_raw: str | Path | dict) -> list[Planned]:
    """Every job of the benchmark, in run order: seed by seed (so a cut-short sweep still covers every data
    set and method), within a seed first the jobs others wait for, then the rest, each in file order."""
    raw = path_or_raw if isinstance(path_or_raw, dict) else load_yaml(path_or_raw)
    bm = from_dict(Benchmark, raw, prefix="benchmark.")
    if not isinstance(bm.suites, dict) or not bm.suites:
        raise BenchError("benchmark: suites must be a non-empty mapping {name: {datasets, seeds, jobs}}")
    out: list[Planned] = []
    names_seen: set[str] = set()
    for sname, sraw in bm.suites.items():
        suite = from_dict(Suite, sraw, prefix=f"benchmark.suites.{sname}.")
        jobs = [from_dict(BenchJob, j, prefix=f"benchmark.suites.{sname}.jobs.") for j in suite.jobs]
        for j in jobs:
            j.validate()
        if not suite.datasets or not suite.seeds or not jobs:
            raise BenchError(f"benchmark suite {sname}: datasets, seeds and jobs must not be empty")
        names = [j.name for j in jobs]
        if len(set(names)) != len(names) or names_seen & set(names):
            raise BenchError(f"benchmark suite {sname}: job names must be unique across the file ({names})")
        names_seen |= set(names)
        by_name = {j.name: j for j in jobs}
        for i, j in enumerate(jobs):
            if j.teacher and j.teacher not in names[:i]:
                raise BenchError(f"benchmark job {j.name}: teacher {j.teacher!r} is not an earlier job of {sname}")
            if not set(j.seeds) <= set(suite.seeds):
                raise BenchError(f"benchmark job {j.name}: seeds {j.seeds} are not all among the suite's {suite.seeds}")
            if j.teacher and not set(j.seeds or suite.seeds) <= set(by_name[j.teacher].seeds or suite.seeds):
                raise BenchError(f"benchmark job {j.name}: its seeds must be among its teacher {j.teacher}'s seeds")
        teachers = {j.teacher for j in jobs if j.teacher}
        ordered = [j for j in jobs if j.name in teachers] + [j for j in jobs if j.name not in teachers]
        for seed in suite.seeds:
            ids: dict[tuple[str, str], str] = {}
            batch: list[Planned] = []
            for j in ordered:
                if j.seeds and seed not in j.seeds:
                    continue
                for d in suite.datasets:
                    after = ids[(j.teacher, d)] if j.teacher else ""
                    sets = [*bm.sets, *suite.sets, *j.sets] + ([f"method.teacher.run={after}"] if after else [])
                    key = [j.method, d, seed, sets] + (["smoke"] if bm.smoke else [])
                    rid = f"{j.name}-{d}-s{seed}-{_hash(*key)}"
                    ids[(j.name, d)] = rid
                    batch.append(Planned(sname, j.name, j.method, d, seed, rid, tuple(sets), after, bm.smoke))
            out += batch
    return out


def recipes(path_or_raw: str | Path | dict) -> dict[str, tuple[str, str]]:
    """{job name: (method, recipe provenance)} of every job in the file."""
    raw = path_or_raw if isinstance(path_or_raw, dict) else load_yaml(path_or_raw)
    bm = from_dict(Benchmark, raw, prefix="benchmark.")
    out = {}
    for sname, sraw in bm.suites.items():
        for j in from_dict(Suite, sraw, prefix=f"benchmark.suites.{sname}.").jobs:
            job = from_dict(BenchJob, j, prefix=f"benchmark.suites.{sname}.jobs.")
            out[job.name] = (job.method, job.recipe)
    return out


def train_argv(p: Planned, runs_dir: Path, device: str = "auto") -> list[str]:
    """``bench train`` of job ``p`` into its run folder (no evaluation, no record): the teacher checkpoint of a
    job whose record exists but whose run folder is gone (a fresh clone keeps records, not ``runs/``)."""
    a = argv(p, Path("."), runs_dir, False, device)
    i = a.index("--out")
    return ["train", *a[1:i], *a[i + 2 :]]


def argv(p: Planned, out: Path, runs_dir: Path, resume: bool, device: str = "auto") -> list[str]:
    a = ["run", "--method", p.method, "--dataset", p.dataset, "--seed", str(p.seed), "--device", device]
    a += ["--out", str(out), "--runs-dir", str(runs_dir), "--run-id", p.run_id]
    a += ["--resume"] if resume else []
    a += ["--smoke"] if p.smoke else []
    return a + [x for kv in p.sets for x in ("--set", kv)]


def flat_config(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as {dotted key: value}."""
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flat_config(v, f"{prefix}{k}."))
    return out


def stale_keys(p: Planned, record: dict) -> list[str]:
    """Config keys where ``record`` (a finished run of job ``p``) differs from what the job resolves to with
    today's defaults; [] = the record is this commit's. A run id hashes the job's sets, not the defaults, so a
    changed default must not let an older record pass for the new recipe."""
    from bench.core.config import resolved_config, run_config_dict
    from bench.run.runner import resolve_config

    want = flat_config(run_config_dict(resolve_config(p.method, p.dataset, None, list(p.sets), p.seed, p.smoke)))
    have = flat_config(resolved_config(record.get("config", {})))
    return sorted(k for k in set(want) | set(have) if want.get(k, "<absent>") != have.get(k, "<absent>"))
