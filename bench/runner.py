"""Glue between the CLI and the engine: resolve configs, build objects, train, evaluate, record."""

from __future__ import annotations

import importlib
import secrets
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml

from bench import engine
from bench.checkpoint import atomic_write_text
from bench.config import RunConfig, build_run_config, deep_merge, load_yaml, parse_sets, run_config_dict
from bench.errors import BenchError
from bench.metrics.registry import preflight
from bench.records import git_commit, now_utc, package_versions, write_record
from bench.registry import DATASETS, METHODS

# --smoke: a tiny budget that finishes any method on any synthetic data set in well under a minute.
SMOKE: dict[str, Any] = {
    "train": {"steps": 150, "batch_size": 256, "warmup_steps": 10, "ckpt_every": 0, "log_every": 50},
    "eval": {"n_gen": 400, "n_ref": 400, "repeats": 2, "nfe": [1, 4], "timing_repeats": 3, "timing_batch": 64},
}

_loaded = False


def load_builtins() -> None:
    """Import the built-in registrations and the ``bench.methods`` entry points of installed packages."""
    global _loaded
    if _loaded:
        return
    import bench.datasets  # noqa: F401
    import bench.methods  # noqa: F401
    import bench.metrics  # noqa: F401

    for ep in metadata.entry_points(group="bench.methods"):
        if ep.name in METHODS:
            continue
        try:
            METHODS.register(ep.name, ep.load())
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break the suite
            raise BenchError(f"entry point bench.methods:{ep.name} ({ep.value}) failed to load: {e}") from None
    _loaded = True


def load_plugins(modules: list[str]) -> None:
    """``--plugin pkg.module``: import a module that registers methods/data sets/metrics."""
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise BenchError(f"cannot import plugin module {mod!r}: {e}") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise BenchError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda requested but no CUDA device is available")
    return torch.device(name)


def resolve_config(
    method: str | None,
    dataset: str | None,
    config_file: str | None = None,
    sets: list[str] | None = None,
    seed: int | None = None,
    smoke: bool = False,
) -> RunConfig:
    """defaults < config file < CLI names < --smoke budget < --set overrides < --seed."""
    load_builtins()
    raw: dict = load_yaml(config_file) if config_file else {}
    if method:
        raw = deep_merge(raw, {"method": {"name": method}})
    if dataset:
        raw = deep_merge(raw, {"data": {"name": dataset}})
    if smoke:
        mname = (raw.get("method") or {}).get("name")
        dname = (raw.get("data") or {}).get("name")
        raw = deep_merge(raw, SMOKE)
        if mname:
            raw = deep_merge(raw, {"method": dict(getattr(METHODS.get(mname), "smoke", {}))})
        if dname:
            raw = deep_merge(raw, {"data": dict(getattr(DATASETS.get(dname), "smoke", {}))})
    raw = deep_merge(raw, parse_sets(sets or []))
    if seed is not None:
        raw["seed"] = seed
    cfg = build_run_config(raw)
    validate_eval(cfg)
    return cfg


def validate_eval(cfg: RunConfig) -> None:
    ev = cfg.eval
    if any(n < 1 for n in ev.nfe):
        raise BenchError(f"eval.nfe values must be >= 1 (got {ev.nfe})")
    if ev.n_gen < 2 or ev.n_ref < 2 or ev.repeats < 1:
        raise BenchError("eval.n_gen and eval.n_ref must be >= 2 and eval.repeats >= 1")
    tc = cfg.train
    if tc.steps < 0 or tc.batch_size < 1 or tc.lr <= 0 or not (0 <= tc.ema_decay < 1) or tc.grad_clip < 0:
        raise BenchError("train: need steps >= 0, batch_size >= 1, lr > 0, 0 <= ema_decay < 1, grad_clip >= 0")
    if tc.log_every < 1 or tc.ckpt_every < 0 or tc.warmup_steps < 0:
        raise BenchError("train: need log_every >= 1, ckpt_every >= 0, warmup_steps >= 0")


def new_run_id(cfg: RunConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{cfg.method_name}-{cfg.dataset_name}-s{cfg.seed}-{stamp}-{secrets.token_hex(2)}"


def build(cfg: RunConfig, workdir: Path, device: torch.device):
    """(dataset, method) for ``cfg``, with the method on ``device``; nothing is written."""
    torch.manual_seed(cfg.seed)
    dataset = DATASETS.get(cfg.dataset_name)(cfg.data, cfg.seed)
    mcls = METHODS.get(cfg.method_name)
    if dataset.spec.kind not in getattr(mcls, "kinds", ("points",)):
        raise BenchError(f"method {cfg.method_name!r} does not support {dataset.spec.kind} data ({cfg.dataset_name})")
    method = mcls(cfg.method, dataset.spec, cfg.train, workdir)
    return dataset, method.to(device)


def train_run(
    cfg: RunConfig,
    runs_dir: Path,
    device: torch.device,
    run_id: str | None = None,
    resume: bool = False,
    progress: Any = None,
):
    """Train a run in ``runs_dir/<run_id>``; returns (run_id, workdir, dataset, method, train_state)."""
    if resume and not run_id:
        raise BenchError("--resume needs --run-id")
    run_id = run_id or new_run_id(cfg)
    workdir = Path(runs_dir) / run_id
    cdict = run_config_dict(cfg)
    if resume and not (workdir / "ckpt.pt").exists():
        raise BenchError(f"nothing to resume: {workdir / 'ckpt.pt'} does not exist")
    if not resume and (workdir / "ckpt.pt").exists():
        raise BenchError(f"run {run_id} already exists in {runs_dir}; use --resume or another --run-id")
    dataset, method = build(cfg, workdir, device)
    preflight(dataset, cfg.eval)
    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(workdir / "config.yaml", yaml.safe_dump(cdict, sort_keys=False))
    state = engine.train(method, dataset, cfg, cdict, workdir, device, resume=resume, progress=progress)
    return run_id, workdir, dataset, method, state


def load_run(workdir: Path, device: torch.device, eval_sets: list[str] | None = None):
    """Rebuild a finished run from its folder: (cfg, dataset, method, train_state)."""
    load_builtins()
    workdir = Path(workdir)
    if not (workdir / "config.yaml").is_file():
        raise BenchError(f"{workdir} is not a run folder (no config.yaml)")
    raw = load_yaml(workdir / "config.yaml")
    cdict = build_run_config(raw)
    saved = run_config_dict(cdict)
    cfg = build_run_config(deep_merge(raw, parse_sets(eval_sets or [])))
    validate_eval(cfg)
    dataset, method = build(cfg, workdir, device)
    state = engine.load_trained(method, workdir, device, saved)
    return cfg, dataset, method, state


def evaluate_and_record(
    cfg: RunConfig,
    run_id: str,
    workdir: Path,
    dataset,
    method,
    state,
    device: torch.device,
    results_dir: Path,
    progress: Any = None,
) -> tuple[dict, Path]:
    from bench.evaluate import evaluate_points
    from bench.grids import GridTarget

    grids = None  # sample grids for image data: <results>/grids/<dataset>/<run_id>/
    if dataset.spec.kind == "image":
        grids = GridTarget(Path(results_dir), f"grids/{cfg.dataset_name}/{run_id}")
    rows, floor, tref = evaluate_points(
        method, dataset, cfg.eval, device, cache_dir=Path(results_dir) / "cache", progress=progress, grids=grids
    )
    record = base_record(cfg, run_id, workdir, dataset, method, state, device)
    record.update(rows=rows, reference_floor=floor, timing_reference=tref)
    path = write_record(results_dir, record)
    return record, path


def base_record(cfg: RunConfig, run_id: str, workdir: Path, dataset, method, state, device) -> dict:
    from bench.timing import device_name

    return {
        "run_id": run_id,
        "status": "ok",
        "method": cfg.method_name,
        "method_label": method.label(),
        "dataset": cfg.dataset_name,
        "data_spec": {
            "kind": dataset.spec.kind,
            "shape": list(dataset.spec.shape),
            "exact_reference": dataset.spec.exact_reference,
        },
        "seed": cfg.seed,
        "config": run_config_dict(cfg),
        "params": method.sampling_params(),
        "train": {
            "wall_clock_s": dict(state.wall_s),
            "total_s": sum(state.wall_s.values()),
            "final_logs": state.last_logs,
            "stage_info": state.stage_info,
        },
        "extra": method.record_extra(),
        "device": device_name(device),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "date": now_utc(),
        "workdir": str(workdir),
        "rows": [],
    }


def retime_run(workdir: Path, results_dir: Path, device: torch.device) -> Path:
    """Re-measure only the timing of a finished run's record (e.g. on a quiet machine); metrics untouched."""
    import json

    from bench.evaluate import time_points
    from bench.methods.base import EvalPoint
    from bench.records import record_path

    cfg, _, method, _ = load_run(workdir, device)
    path = record_path(results_dir, cfg.dataset_name, Path(workdir).name)
    if not path.is_file():
        raise BenchError(f"no record for run {Path(workdir).name} in {results_dir}")
    rec = json.loads(path.read_text())
    points = [EvalPoint(r["label"], r["solver"], r["nfe_requested"]) for r in rec["rows"]]
    ref, timings = time_points(method, points, cfg.eval, device)
    for row, tm in zip(rec["rows"], timings, strict=True):
        row["timing"] = tm
    rec["timing_reference"] = ref
    rec.pop("schema", None)
    return write_record(results_dir, rec)
