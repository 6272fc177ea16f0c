"""Typed configs: nested dataclasses filled from YAML and ``--set a.b=value`` overrides.

Unknown keys and ill-typed values are errors that name the key and the allowed keys/type.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from bench.errors import BenchError


@dataclass
class TrainConfig:
    steps: int = 4000  # optimisation steps of the method's main stage (chargen: its teacher)
    batch_size: int = 512
    lr: float = 1e-3  # learning rate of single-optimiser stages
    warmup_steps: int = 100  # linear learning-rate warm-up
    # after warm-up: constant, or cosine decay to lr_min_ratio x lr at each stage's last step (every optimiser)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_min_ratio: float = 0.0
    ema_decay: float = 0.999  # EMA of weights used for sampling; 0 disables
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    ckpt_every: int = 1000  # checkpoint period in steps (atomic writes); 0 = only at stage ends
    log_every: int = 200  # log period; also the period of the divergence check (the one host sync)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype of the losses (fp16: with GradScaler)
    compile: bool = False  # torch.compile the trained networks
    channels_last: bool = False  # channels_last memory format for image networks and batches
    tf32: bool = False  # allow TF32 matmuls/convolutions on CUDA (off = true fp32)


@dataclass
class EvalConfig:
    n_gen: int = 5000  # generated samples per metric evaluation
    n_ref: int = 5000  # points data: fresh reference samples per evaluation (image metrics use n_ref_images)
    # image metrics (fid, kid, precision, recall, fd_digits, ...): training images behind the reference
    # statistics; 0 = the whole train split (the literature's protocol), N >= 2 = a seeded N-image subset
    # (recorded as not comparable)
    n_ref_images: int = 0
    repeats: int = 3  # independent (generated, reference) seed pairs; tables show mean +- std
    nfe: list[int] = field(default_factory=list)  # empty = the method's defaults (flow: 1, 2, 4, ..., 128)
    solvers: list[str] = field(default_factory=list)  # empty = the method's defaults
    metrics: list[str] = field(default_factory=list)  # empty = every registered metric that applies to the data
    sample_seed: int = 1_000_000  # sample i of repeat r uses seed sample_seed + r * n_gen + i
    ref_seed: int = 2_000_000
    timing_batch: int = 0  # 0 = 1024 on GPU, 256 on CPU
    timing_repeats: int = 7  # at least this many timed blocks (torch.utils.benchmark blocked_autorange)
    timing_min_s: float = 0.2  # minimum measured time per timing (blocked_autorange's min_run_time)
    timing: bool = True
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype of sampling (metrics and timing)
    compile: bool = False  # torch.compile the sampling networks (timed after compilation)
    channels_last: bool = False  # channels_last memory format for image sampling
    sliced_projections: int = 512  # for sliced W2 on high-dimensional data
    inception_weights: str = (
        ""  # torch-fidelity Inception state dict; "" = $BENCH_INCEPTION_WEIGHTS or the torch hub cache
    )
    cleanfid_weights: str = ""  # clean-fid TorchScript inception-2015-12-05.pt (fid_cleanfid / fid_clean)
    allow_download: bool = False  # fetch missing metric weights when online (or BENCH_ALLOW_DOWNLOAD=1)
    exact_w2_max_dim: int = 64  # exact W2 up to this dimension; sliced W2 is always reported too


def eval_memory_bytes(ev: EvalConfig, shape: tuple[int, ...], kind: str, metrics: set[str], solves: int = 1) -> int:
    """Bytes an evaluation holds at its peak, estimated before anything is allocated: one float32 set of
    ``n_gen`` generated samples (on points data also the ``repeats`` reference sets of ``n_ref``) and the
    timing batch; for exact ``w2`` the float64 copies of both sides and ``solves`` concurrent n_gen x n_ref
    float64 cost matrices; for sliced ``sw2`` both sides projected on ``sliced_projections`` directions."""
    dim = math.prod(shape)
    need = 4 * dim * (ev.n_gen + (ev.repeats * ev.n_ref if kind == "points" else 0))
    if ev.timing:
        need += 2 * 4 * dim * ev.timing_batch  # pre-drawn noise and the output
    if "w2" in metrics:
        need += 8 * dim * (ev.n_gen + ev.n_ref) + 8 * ev.n_gen * ev.n_ref * max(1, solves)
    if "sw2" in metrics:
        need += 8 * (ev.n_gen + ev.n_ref + dim) * ev.sliced_projections
    return need


@dataclass
class RunConfig:
    method_name: str
    dataset_name: str
    method: Any  # the method's own Config dataclass
    data: Any  # the data set's own Config dataclass
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0


# ----------------------------------------------------------------------------------------------
# generic dataclass <- dict conversion with strict checking


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        return f"list of {_type_name(inner)}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise BenchError(f"config key '{key}': {value!r} is not {_type_name(tp)}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except BenchError:
                pass
        raise BenchError(f"config key '{key}': {value!r} is not {_type_name(tp)}")
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and inner is not Any:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise BenchError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise BenchError(f"config key '{key}': expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise BenchError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise BenchError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int beyond the float range
                number = math.inf
        elif isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise BenchError(f"config key '{key}': expected a number, got {value!r}")
        if not math.isfinite(number):  # NaN passes every comparison check downstream (nan <= 0 is False)
            raise BenchError(f"config key '{key}': expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise BenchError(f"config key '{key}': expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp!r} for key {key}")


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise :class:`BenchError`."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.init}
    unknown = sorted(str(k) for k in set(data) - set(known))
    if unknown:
        raise BenchError(
            f"unknown config key '{prefix}{unknown[0]}'; allowed keys under "
            f"'{prefix.rstrip('.') or '<top>'}': {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in data.items():
        default = known[name].default_factory  # a section given in part keeps its parent's default for the rest
        if isinstance(value, dict) and default is not MISSING and is_dataclass(base := default()):
            value = deep_merge(to_dict(base), value)
        kwargs[name] = _coerce(value, hints[name], prefix + name)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise BenchError(f"config section '{prefix.rstrip('.') or '<top>'}': {e}") from None
    check = getattr(obj, "validate", None)
    if callable(check):
        check()
    return obj


def to_dict(obj: Any) -> Any:
    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_sets(items: list[str]) -> dict:
    """``["a.b=1", "c=[1, 2]"]`` -> nested dict, values parsed as YAML scalars/lists."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise BenchError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise BenchError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, ValueError):  # ValueError: a date like 2001-13-01, an int of 5,000 digits
            value = raw
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise BenchError(f"--set {item!r} conflicts with another --set")
        node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise BenchError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except (UnicodeDecodeError, OSError) as e:
        raise BenchError(f"config file {p} cannot be read as text: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise BenchError(f"malformed YAML in {p}{where}: {getattr(e, 'problem', e)}") from None
    except ValueError as e:  # a scalar YAML resolves but cannot build: a date like 2001-13-01, a 5,000-digit int
        raise BenchError(f"malformed YAML in {p}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BenchError(f"config file {p} must hold a mapping at the top level")
    return data


def build_run_config(raw: dict) -> RunConfig:
    """Resolve ``raw`` (merged YAML + overrides) into a :class:`RunConfig` using the registries."""
    from bench.registry import DATASETS, METHODS

    raw = dict(raw)
    allowed = ["method", "data", "train", "eval", "seed"]
    unknown = sorted(str(k) for k in set(raw) - set(allowed))
    if unknown:
        raise BenchError(f"unknown config key '{unknown[0]}'; allowed top-level keys: {', '.join(allowed)}")
    for sec in ("method", "data"):
        if not isinstance(raw.get(sec) or {}, dict):
            raise BenchError(f"config key '{sec}': expected a mapping, got {raw[sec]!r}")
    msec = dict(raw.get("method") or {})
    dsec = dict(raw.get("data") or {})
    if "name" not in msec:
        raise BenchError("no method given (use --method NAME or method.name in the config)")
    if "name" not in dsec:
        raise BenchError("no dataset given (use --dataset NAME or data.name in the config)")
    mname, dname = str(msec.pop("name")), str(dsec.pop("name"))
    mcfg = from_dict(METHODS.get(mname).Config, msec, prefix="method.")
    dcfg = from_dict(DATASETS.get(dname).Config, dsec, prefix="data.")
    return RunConfig(
        method_name=mname,
        dataset_name=dname,
        method=mcfg,
        data=dcfg,
        train=_coerce(raw.get("train") or {}, TrainConfig, "train"),
        eval=_coerce(raw.get("eval") or {}, EvalConfig, "eval"),
        seed=_coerce(raw.get("seed", 0), int, "seed"),
    )


def run_config_dict(cfg: RunConfig) -> dict:
    """The fully resolved config in the same nested form the YAML files use (round-trips)."""
    d = to_dict(cfg)
    d["method"] = {"name": d.pop("method_name"), **d["method"]}
    d["data"] = {"name": d.pop("dataset_name"), **d["data"]}
    return d


# Keys added with a default that differs from what the code did before they existed: a SAVED config (fully
# resolved when it was written, so a missing key means older code) takes this value instead of today's default.
# Keyed by the key's name and the keys that identify its section.
LEGACY_VALUES: list[tuple[str, frozenset[str], Any]] = [
    # the points MLP's time features were sin/cos at frequencies 1 .. 1000 until time_max_freq (default 0, raw) came
    ("time_max_freq", frozenset({"hidden", "depth", "unet"}), 1000.0),
]


def legacy_filled(saved: Any) -> Any:
    """A copy of a saved config in which every key of :data:`LEGACY_VALUES` missing from its section holds the
    value the older code used. Only for saved configs: a user's partial config takes today's defaults."""
    if isinstance(saved, list):
        return [legacy_filled(v) for v in saved]
    if not isinstance(saved, dict):
        return saved
    out = {k: legacy_filled(v) for k, v in saved.items()}
    for key, section, value in LEGACY_VALUES:
        if key not in out and section <= set(out):
            out[key] = value
    return out


def resolved_config(raw: dict) -> dict:
    """A saved config (a record's, a checkpoint's) resolved against this version's defaults, so that a run
    saved before a defaulted option existed compares equal to one saved after (the default is what the older
    code did; where it is not, :data:`LEGACY_VALUES` says what was); one this version cannot read (an unknown
    method or key, a plugin method not loaded here) comes back as saved."""
    from bench.registry import load_builtins

    raw = legacy_filled(raw)

    with contextlib.suppress(BenchError):  # a broken plugin entry point: the built-ins are registered before it
        load_builtins()
    with contextlib.suppress(BenchError):
        return run_config_dict(build_run_config(raw))
    return raw


def replace(obj: Any, **changes: Any) -> Any:
    return dataclasses.replace(obj, **changes)
