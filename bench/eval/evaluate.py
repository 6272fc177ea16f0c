"""Sampling + metrics + timing for every eval point of a trained method -> record rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.core import distributed
from bench.core.noise import seeded_noise
from bench.core.stats import summary
from bench.eval.grids import GridTarget, write_eval_grid
from bench.eval.metrics import MetricContext
from bench.eval.metrics.registry import preflight
from bench.eval.sampling import Samples, TensorSamples, sampling_mode
from bench.eval.timing import cores_available, default_timing_batch, device_name, load_average, time_call, time_sampler


def reference_sets(dataset: Any, ev: Any) -> list[torch.Tensor]:
    return [dataset.reference(ev.n_ref, ev.ref_seed + r) for r in range(ev.repeats)]


def _batched(metrics: list) -> tuple[list, list]:
    """(metrics scored one repeat at a time, metrics with a ``many`` entry that score all repeats of a row at
    once, e.g. exact W2 whose solves then run concurrently)."""
    return [m for m in metrics if not hasattr(m.fn, "many")], [m for m in metrics if hasattr(m.fn, "many")]


def evaluate_points(
    method: Any,
    dataset: Any,
    ev: Any,
    device: torch.device,
    cache_dir: Path | None = None,
    progress: Any = None,
    sample_batch: int = 2500,
    grids: GridTarget | None = None,
) -> tuple[list[dict], dict, dict]:
    """Evaluate every eval point of ``method``; returns (rows, reference floor, timing reference).

    With ``grids`` (image data) each row also gets ``"grid"``: a PNG of seeds eval.sample_seed .. +63.
    """
    spec = dataset.spec
    metrics = preflight(dataset, ev)
    refs = reference_sets(dataset, ev) if spec.kind == "points" else [None] * ev.repeats
    points = method.eval_points(ev.nfe, ev.solvers)
    method.eval()
    task = progress.add_task("evaluate", total=len(points) * ev.repeats) if progress else None
    per_repeat, batched = _batched(metrics)
    values = [{m.name: [] for m in metrics} for _ in points]
    protos: list[dict[str, dict]] = [{} for _ in points]
    gens: list[list[Samples]] = [[] for _ in points]
    nfes: list[float | None] = []
    ctxs: list[list[MetricContext]] = [[] for _ in points]
    for i, p in enumerate(points):
        for r in range(ev.repeats):
            gen = Samples(method, p, ev.n_gen, ev.sample_seed + r * ev.n_gen, sample_batch, device, ev)
            ctx = MetricContext(refs[r], dataset, ev, r, cache_dir)
            for m in per_repeat:
                v, proto = m(gen, ctx)
                values[i][m.name].append(v)
                protos[i][m.name] = _merge_proto(protos[i].get(m.name), proto)
            if batched:  # kept (points: small) for the batched metrics below
                gen.tensor()  # drawn now, in seed order (under torch.distributed every rank takes part here)
                gens[i].append(gen)
                ctxs[i].append(ctx)
            if progress is not None:
                progress.update(task, advance=1, description=f"evaluate {p.label} {p.solver}@{p.nfe or 'adaptive'}")
        nfes.append(gen.nfe if ev.repeats else None)  # after the metrics: materialised samples know it
    for m in batched:  # every repeat of every row at once: the solves share the cores
        flat = m.fn.many([g for gs in gens for g in gs], [c for cs in ctxs for c in cs])
        for i in range(len(points)):
            for v, proto in flat[i * ev.repeats : (i + 1) * ev.repeats]:
                values[i][m.name].append(v)
                protos[i][m.name] = _merge_proto(protos[i].get(m.name), proto)
    rows = []
    for i, p in enumerate(points):
        nfe_used = nfes[i]
        rows.append(
            {
                "label": p.label,
                "solver": p.solver,
                "nfe_requested": p.nfe,
                "nfe": round(nfe_used, 2) if nfe_used is not None else None,
                "metrics": {
                    k: {**summary(v), "protocol": _metric_protocol(protos[i][k], ev, spec)}
                    for k, v in values[i].items()
                },
            }
        )
        if grids is not None:  # sample grid (image data): same seeds for every method
            rows[-1]["grid"] = write_eval_grid(method, p, ev.sample_seed, device, grids)
    floor = reference_floor(dataset, ev, refs, metrics, cache_dir)
    timing_ref = None
    if ev.timing:  # all timings back to back, after the metrics, under the same conditions
        timing_ref, timings = time_points(method, points, ev, device)
        for row, tm in zip(rows, timings, strict=True):
            row["timing"] = tm
    return rows, floor, timing_ref


def sampling_protocol(ev: Any, device: torch.device) -> dict:
    return {
        "device": device_name(device),
        "dtype": {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[ev.precision],
        "compile": ev.compile,
        "channels_last": ev.channels_last,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cores": cores_available(),
        "processes": distributed.current().world,
    }


@torch.no_grad()
def time_points(method: Any, points: list, ev: Any, device: torch.device) -> tuple[dict, list[dict]]:
    """Per-sample time (and batch-1 latency) of every eval point on pre-drawn noise, plus one bare
    forward pass of the sampling network (the unit of the ``ratio_to_forward`` column)."""
    method.eval()
    tb = default_timing_batch(device, ev.timing_batch)
    noise = seeded_noise(method.noise_shape, range(ev.sample_seed - tb, ev.sample_seed)).to(device)
    if ev.channels_last and noise.ndim == 4:
        noise = noise.contiguous(memory_format=torch.channels_last)
    proto = sampling_protocol(ev, device)
    with sampling_mode(method, ev, device):
        t = time_call(method.forward_reference(), noise, ev.timing_repeats, ev.timing_min_s)
        ref = {
            "what": "one forward pass of the sampling network",
            "batch": tb,
            "per_sample_s": t["median_s"] / tb,
            "load_avg_1min": load_average(),
            **proto,
        }
        out = []
        for p in points:
            tm = time_sampler(lambda z, p=p: method.sample(z, p), noise, ev.timing_repeats, ev.timing_min_s)
            tm.update(proto, ratio_to_forward=tm["per_sample_s"] / ref["per_sample_s"], load_avg_1min=load_average())
            out.append(tm)
    return ref, out


def reference_floor(dataset, ev, refs, metrics, cache_dir, sample_batch: int = 2500) -> dict:
    """Each metric of real data (``dataset.floor_reference``: fresh draws of the exact law, or a held-out
    split for images) against the metric's reference: how close to 0 a model can honestly get. Each
    summary carries ``what``, the line saying which real data was scored."""
    vals: dict[str, list[float]] = {m.name: [] for m in metrics}
    per_repeat, batched = _batched(metrics)
    what = ""
    gens: list[Samples] = []
    ctxs: list[MetricContext] = []
    for r in range(ev.repeats):
        x, what = dataset.floor_reference(ev.n_gen, ev.ref_seed + 500_000 + r)
        gen, ctx = TensorSamples(x, sample_batch), MetricContext(refs[r], dataset, ev, r, cache_dir)
        for m in per_repeat:
            vals[m.name].append(m(gen, ctx)[0])
        if batched:  # kept only for them (image features in ctx.shared can be large)
            gens.append(gen)
            ctxs.append(ctx)
    for m in batched:
        vals[m.name].extend(v for v, _ in m.fn.many(gens, ctxs))
    return {k: {**summary(v), "what": what} for k, v in vals.items()}


def _merge_proto(old: dict | None, new: dict) -> dict:
    if old is None:
        return dict(new)
    out = dict(old)
    if "hit_cap" in new:
        out["hit_cap"] = bool(old.get("hit_cap")) or bool(new["hit_cap"])
    return out


def _metric_protocol(proto: dict, ev: Any, spec: Any) -> dict:
    ref = "fresh samples of the exact data law" if spec.exact_reference else proto.get("reference", "see protocol")
    return {
        **proto,
        "n_gen": ev.n_gen,
        "n_ref": proto.get("n_ref_used", ev.n_ref),  # image metrics: the training images behind the statistics
        "repeats": ev.repeats,
        "reference": ref,
        "sample_seed": ev.sample_seed,
        "ref_seed": ev.ref_seed,
    }
