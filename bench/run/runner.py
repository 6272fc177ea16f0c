"""Glue between the CLI and the engine: resolve configs, build objects, train, evaluate, record."""

from __future__ import annotations

import importlib
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from bench.core import distributed
from bench.core.checkpoint import atomic_write_text
from bench.core.config import (
    RunConfig,
    build_run_config,
    deep_merge,
    legacy_filled,
    load_yaml,
    parse_sets,
    run_config_dict,
)
from bench.core.distributed import Dist
from bench.core.records import git_commit, now_utc, package_versions, write_record
from bench.core.resources import check_fits
from bench.errors import BenchError
from bench.eval.metrics.registry import preflight
from bench.registry import DATASETS, METHODS, load_builtins
from bench.run import engine

# --smoke on image data: every U-Net left at "auto" becomes this preset (the smoke run checks the pipeline, not
# quality; steps/s of the presets at 28 px: results/bench/unet_presets_28px.json)
SMOKE_UNET = "micro"

# --smoke: a tiny budget that finishes any method on any synthetic data set in well under a minute.
SMOKE: dict[str, Any] = {
    "train": {"steps": 150, "batch_size": 256, "warmup_steps": 10, "ckpt_every": 0, "log_every": 50},
    "eval": {"n_gen": 400, "n_ref": 400, "repeats": 2, "nfe": [1, 4], "timing_repeats": 3, "timing_batch": 64},
}
# ... and on image data a smaller one on top (a conv net step at 28 px costs ~100x a 2-D MLP step on a CPU: the
# point budget took 5 minutes on Fashion-MNIST); n_gen stays above the suite classifiers' feature dimension (128);
# Euler only (an adaptive solve of an untrained image flow took 400 NFE and 6 of the run's 8 minutes)
SMOKE_IMAGE: dict[str, Any] = {
    "train": {"steps": 40, "batch_size": 64},
    "eval": {"n_gen": 256, "nfe": [1, 2], "solvers": ["euler"]},
}


def load_plugins(modules: list[str]) -> None:
    """``--plugin pkg.module``: import a module that registers methods/data sets/metrics."""
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise BenchError(f"cannot import plugin module {mod!r}: {e}") from None
        except Exception as e:  # noqa: BLE001 - a broken plugin is the user's input: one line, not a traceback
            raise BenchError(f"plugin module {mod!r} failed to import: {type(e).__name__}: {e}") from None


def resolve_device(name: str, dist: Dist | None = None) -> torch.device:
    """cpu / cuda / cuda:N / auto; under torchrun, cuda means this process's local GPU."""
    if name not in ("cpu", "cuda", "auto") and not name.startswith("cuda:"):
        raise BenchError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda requested but no CUDA device is available")
    if name == "cuda" and dist is not None and dist.active:
        name = f"cuda:{dist.local_rank}"
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
        if dname and _is_image(dname):
            raw = deep_merge(raw, SMOKE_IMAGE)
        if mname and dname and _is_image(dname):
            raw = deep_merge(raw, {"method": _smoke_unets(METHODS.get(mname).Config, raw.get("method") or {})})
    raw = deep_merge(raw, parse_sets(sets or []))
    if seed is not None:
        raw["seed"] = seed
    cfg = build_run_config(raw)
    validate_eval(cfg)
    return cfg


def _is_image(dataset: str) -> bool:
    from bench.datasets.images import ImageDataset

    cls = DATASETS.get(dataset)
    return isinstance(cls, type) and issubclass(cls, ImageDataset)


def _smoke_unets(config_cls: type, given: dict) -> dict:
    """Overrides setting ``unet`` to :data:`SMOKE_UNET` in every NetConfig of ``config_cls`` (nested dataclasses
    followed by their type hints) that the config so far (``given``) leaves at its default "auto"."""
    import dataclasses
    import typing

    from bench.methods.nets import NetConfig

    out: dict = {}
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        tp, sub = hints.get(f.name), given.get(f.name) if isinstance(given.get(f.name), dict) else {}
        if tp is NetConfig:
            if sub.get("unet", "auto") == "auto":
                out[f.name] = {"unet": SMOKE_UNET}
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
            inner = _smoke_unets(tp, sub)
            if inner:
                out[f.name] = inner
    return out


def validate_eval(cfg: RunConfig, spec: Any = None) -> None:
    """Ranges of the train and eval settings; given the data ``spec`` (known once the data set is built) also
    what evaluation would allocate: exact W2's cap per side and the memory, refused before any work."""
    ev = cfg.eval
    if any(n < 1 for n in ev.nfe):
        raise BenchError(f"eval.nfe values must be >= 1 (got {ev.nfe})")
    if ev.n_gen < 2 or ev.n_ref < 2 or ev.repeats < 1:
        raise BenchError("eval.n_gen and eval.n_ref must be >= 2 and eval.repeats >= 1")
    if ev.timing_repeats < 1 or ev.timing_min_s <= 0 or ev.timing_batch < 0 or ev.sliced_projections < 1:
        raise BenchError("eval: need timing_repeats >= 1, timing_min_s > 0, timing_batch >= 0, sliced_projections >= 1")
    if ev.n_ref_images < 0 or ev.n_ref_images == 1 or ev.exact_w2_max_dim < 0:
        raise BenchError("eval: need n_ref_images = 0 (whole split) or >= 2, and exact_w2_max_dim >= 0")
    top = 2**63 - 1  # torch seeds are 64-bit; sample i of repeat r uses sample_seed + r * n_gen + i
    for key, first, span in [
        ("seed", cfg.seed, 0),
        ("eval.sample_seed", ev.sample_seed, ev.repeats * ev.n_gen),
        ("eval.ref_seed", ev.ref_seed, 500_000 + ev.repeats),  # + r, and + 500,000 + r for the floor
    ]:
        if not 0 <= first <= top - span:
            raise BenchError(f"{key} must be in [0, {top - span}] (got {first})")
    tc = cfg.train
    if tc.steps < 0 or tc.batch_size < 1 or tc.lr <= 0 or not (0 <= tc.ema_decay < 1) or tc.grad_clip < 0:
        raise BenchError("train: need steps >= 0, batch_size >= 1, lr > 0, 0 <= ema_decay < 1, grad_clip >= 0")
    if tc.log_every < 1 or tc.ckpt_every < 0 or tc.warmup_steps < 0:
        raise BenchError("train: need log_every >= 1, ckpt_every >= 0, warmup_steps >= 0")
    if not 0.0 <= tc.lr_min_ratio <= 1.0:
        raise BenchError(f"train.lr_min_ratio must lie in [0, 1] (got {tc.lr_min_ratio})")
    if spec is None:
        return
    from bench.core.config import eval_memory_bytes
    from bench.eval.metrics.registry import applicable_metrics
    from bench.eval.metrics.w2 import EXACT_MAX_N, solver_workers

    names = {m.name for m in applicable_metrics(spec, ev)} if spec.kind == "points" else set()
    exact = "w2" in names
    need = eval_memory_bytes(ev, tuple(spec.shape), spec.kind, names, solver_workers(ev.repeats))
    shape = "x".join(map(str, spec.shape))
    what = (
        f"eval.n_gen={ev.n_gen}, n_ref={ev.n_ref}, repeats={ev.repeats}, timing_batch={ev.timing_batch}, "
        f"sliced_projections={ev.sliced_projections} on {shape} {spec.kind}" + (", exact W2" if exact else "")
    )
    avail = None
    try:
        with open("/proc/meminfo") as f:
            avail = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), None)
    except OSError:  # not Linux: no memory check
        pass
    if avail is not None and need > avail:
        raise BenchError(
            f"evaluation would need about {need / 2**30:.3g} GiB ({what}) but {avail / 2**30:.3g} GiB is available "
            "(MemAvailable); lower these settings"
        )
    batch = 4 * spec.dim * tc.batch_size
    if avail is not None and batch > avail:
        raise BenchError(
            f"one training batch (train.batch_size={tc.batch_size} of {shape} {spec.kind}) would need about "
            f"{batch / 2**30:.3g} GiB but {avail / 2**30:.3g} GiB is available (MemAvailable)"
        )
    if exact and max(ev.n_gen, ev.n_ref) > EXACT_MAX_N:
        raise BenchError(
            f"exact W2 (POT emd2) is limited to {EXACT_MAX_N} samples per side (PROTOCOL.md; it would need about "
            f"{need / 2**30:.3g} GiB with {what}): lower eval.n_gen / eval.n_ref or leave w2 out "
            "(e.g. --set 'eval.metrics=[sw2]')"
        )


def new_run_id(cfg: RunConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{cfg.method_name}-{cfg.dataset_name}-s{cfg.seed}-{stamp}-{secrets.token_hex(2)}"


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_run_id(run_id: str) -> str:
    """A run id is one plain folder name (no separators, no '..', no leading dot): it can never escape."""
    if not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise BenchError(
            f"invalid run id {run_id!r}: use 1-200 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return run_id


@dataclass
class Run:
    """One run from the CLI through the engine to its record: id, folder (known from the start, never
    guessed), resolved config, device, process group, and what training produced."""

    id: str
    folder: Path
    cfg: RunConfig
    device: torch.device
    dist: Dist = field(default_factory=Dist)
    dataset: Any = None
    method: Any = None
    state: Any = None

    @property
    def config_dict(self) -> dict:
        return run_config_dict(self.cfg)


def apply_backend_flags(cfg: RunConfig) -> None:
    """TF32 on CUDA as configured (recorded with the config); a no-op on CPU."""
    torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
    torch.backends.cudnn.allow_tf32 = cfg.train.tf32


def build(cfg: RunConfig, workdir: Path, device: torch.device):
    """(dataset, method) for ``cfg``, with the method on ``device``; nothing is written."""
    torch.manual_seed(cfg.seed)
    dataset = DATASETS.get(cfg.dataset_name)(cfg.data, cfg.seed)
    mcls = METHODS.get(cfg.method_name)
    if dataset.spec.kind not in getattr(mcls, "kinds", ("points",)):
        raise BenchError(f"method {cfg.method_name!r} does not support {dataset.spec.kind} data ({cfg.dataset_name})")
    check_fits(
        f"method {cfg.method_name!r} on {cfg.dataset_name}",
        lambda: mcls(cfg.method, dataset.spec, cfg.train, workdir),
        device,
    )
    method = mcls(cfg.method, dataset.spec, cfg.train, workdir)
    method.registered_name = cfg.method_name
    method = method.to(device)
    if cfg.train.channels_last and dataset.spec.kind == "image":
        method = method.to(memory_format=torch.channels_last)
    return dataset, method


def prepare_run(
    cfg: RunConfig, runs_dir: Path, device: torch.device, run_id: str | None = None, resume: bool = False
) -> Run:
    """Check everything about a new (or resumed) run before any work: its id, its folder, the data set
    and method it builds, and the metrics it will need. Writes nothing."""
    dist = distributed.current()
    if resume and not run_id:
        raise BenchError("--resume needs --run-id")
    run_id = check_run_id(run_id) if run_id else dist.broadcast_object(new_run_id(cfg))
    folder = Path(runs_dir) / run_id
    if resume and not (folder / "ckpt.pt").exists():
        raise BenchError(f"nothing to resume: {folder / 'ckpt.pt'} does not exist")
    if not resume and (folder / "ckpt.pt").exists():
        raise BenchError(f"run {run_id} already exists in {runs_dir}; use --resume or another --run-id")
    run = Run(run_id, folder, cfg, device, dist)
    run.dataset, run.method = build(cfg, folder, device)
    preflight(run.dataset, cfg.eval)
    return run


def train_prepared(run: Run, resume: bool = False, progress: Any = None) -> Run:
    """Train a prepared run in its folder (config.yaml, ckpt.pt, log.jsonl)."""
    apply_backend_flags(run.cfg)
    if run.dist.is_main:
        run.folder.mkdir(parents=True, exist_ok=True)
        for stale in run.folder.glob(".*.tmp"):  # a killed atomic write's leftover (the target is intact)
            stale.unlink(missing_ok=True)
        atomic_write_text(run.folder / "config.yaml", yaml.safe_dump(run.config_dict, sort_keys=False))
    run.dist.barrier()
    run.state = engine.train(
        run.method,
        run.dataset,
        run.cfg,
        run.config_dict,
        run.folder,
        run.device,
        resume=resume,
        progress=progress,
        dist=run.dist,
    )
    return run


def train_run(
    cfg: RunConfig,
    runs_dir: Path,
    device: torch.device,
    run_id: str | None = None,
    resume: bool = False,
    progress: Any = None,
):
    """Train a run in ``runs_dir/<run_id>``; returns (run_id, workdir, dataset, method, train_state)."""
    run = train_prepared(prepare_run(cfg, runs_dir, device, run_id, resume), resume, progress)
    return run.id, run.folder, run.dataset, run.method, run.state


def load_run(workdir: Path, device: torch.device, eval_sets: list[str] | None = None):
    """Rebuild a finished run from its folder: (cfg, dataset, method, train_state)."""
    load_builtins()
    workdir = Path(workdir)
    if not (workdir / "config.yaml").is_file():
        raise BenchError(f"{workdir} is not a run folder (no config.yaml)")
    raw = legacy_filled(load_yaml(workdir / "config.yaml"))
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
    from bench.eval.evaluate import evaluate_points
    from bench.eval.grids import GridTarget

    grids = None  # sample grids for image data: <results>/grids/<dataset>/<run_id>/ (written by rank 0)
    if dataset.spec.kind == "image" and distributed.current().is_main:
        grids = GridTarget(Path(results_dir), f"grids/{cfg.dataset_name}/{run_id}")
    rows, floor, tref = evaluate_points(
        method, dataset, cfg.eval, device, cache_dir=Path(results_dir) / "cache", progress=progress, grids=grids
    )
    record = base_record(cfg, run_id, workdir, dataset, method, state, device)
    record.update(rows=rows, reference_floor=floor, timing_reference=tref)
    path = write_record(results_dir, record) if distributed.current().is_main else None
    return record, path


def base_record(cfg: RunConfig, run_id: str, workdir: Path, dataset, method, state, device) -> dict:
    from bench.eval.timing import device_name

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
            "cost": training_cost(state, method.prior_cost(), device_name(device)),
        },
        "extra": method.record_extra(),
        "device": device_name(device),
        "processes": distributed.current().world,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "date": now_utc(),
        "workdir": str(workdir),
        "rows": [],
    }


def training_cost(state, prior: dict, device: str) -> dict:
    """What it cost to be able to sample (PROTOCOL.md "Cost"): this run's stages plus what it reused."""
    own_s, own_p = sum(state.wall_s.values()), sum(getattr(state, "passes", {}).values())
    prior_s = sum(v for v in (prior.get("wall_clock_s") or {}).values() if v is not None)
    prior_p = prior.get("network_passes")
    return {
        "wall_clock_s": {
            **dict(state.wall_s),
            **{f"reused: {k}": v for k, v in (prior.get("wall_clock_s") or {}).items()},
        },
        "network_passes_by_stage": dict(getattr(state, "passes", {})),
        "network_passes": own_p + (prior_p or 0),
        "total_wall_clock_s": own_s + prior_s,
        "device": device,
        "reused": prior or None,
        "complete": not prior or prior_p is not None,  # False: a reused artefact's passes were not counted
        "unit": "network passes over samples: forward 1, backward 2; frozen teachers included",
    }


def _finished_record(workdir: Path, results_dir: Path, device: torch.device, what: str):
    """A finished run's loaded method and its record: (cfg, method, record path, record); a missing or
    unreadable record is a BenchError naming what could not be done (``what``, e.g. "re-time")."""
    from bench.core.records import read_record, record_path

    cfg, _, method, _ = load_run(workdir, device)
    path = record_path(results_dir, cfg.dataset_name, Path(workdir).name)
    if not path.is_file():
        raise BenchError(f"no record for run {Path(workdir).name} in {results_dir}")
    rec, why = read_record(path)
    if why is not None:
        raise BenchError(f"cannot {what} {path}: {why}")
    return cfg, method, path, rec


def regrid_run(workdir: Path, results_dir: Path, device: torch.device) -> list[Path]:
    """Re-draw the sample grids a finished run's record links (image data: same seeds, same files under
    ``results_dir``), e.g. on a machine where ``results/grids/`` was not kept; the record is not touched."""
    from bench.eval.grids import GridTarget, write_eval_grid
    from bench.methods.base import EvalPoint

    cfg, method, path, rec = _finished_record(workdir, results_dir, device, "re-draw the grids of")
    rows = [r for r in rec["rows"] if r.get("grid")]
    if not rows:
        raise BenchError(f"{path} links no sample grids (only image runs have them)")
    method.eval()
    written = []
    for r in rows:
        rel = Path(r["grid"])
        got = write_eval_grid(
            method,
            EvalPoint(r["label"], r["solver"], r["nfe_requested"]),
            cfg.eval.sample_seed,
            device,
            GridTarget(Path(results_dir), rel.parent.as_posix()),
        )
        if got != rel.as_posix():
            raise BenchError(f"{path}: row {r['label']} {r['solver']} links {rel}, this code names it {got}")
        written.append(Path(results_dir) / got)
    return written


def retime_run(workdir: Path, results_dir: Path, device: torch.device) -> Path:
    """Re-measure only the timing of a finished run's record (e.g. on a quiet machine); metrics untouched."""
    from bench.eval.evaluate import time_points
    from bench.methods.base import EvalPoint

    cfg, method, _, rec = _finished_record(workdir, results_dir, device, "re-time")
    points = [EvalPoint(r["label"], r["solver"], r["nfe_requested"]) for r in rec["rows"]]
    ref, timings = time_points(method, points, cfg.eval, device)
    for row, tm in zip(rec["rows"], timings, strict=True):
        row["timing"] = tm
    rec["timing_reference"] = ref
    rec.pop("schema", None)
    return write_record(results_dir, rec)
