"""The shared training loop. It owns everything generic: optimisers and LR warm-up (torch.optim.lr_scheduler,
checkpointed), zero_grad/backward/clip/step, mixed precision (autocast, GradScaler for fp16), DDP and
torch.compile of the trained networks, one fused EMA update, atomic checkpoints, resume, logging, the
training-cost count and divergence checks with no host sync per step. It never looks at a method's name."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad

from bench.core.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from bench.core.distributed import Dist
from bench.core.netswap import PRECISIONS, resolve_net, swapped
from bench.errors import BenchError
from bench.methods.base import Batch, Method, Stage, Update, ema_update, step_seed


class TrainingDiverged(BenchError):
    """A loss or gradient norm became NaN/Inf; the last good checkpoint is kept."""


@dataclass
class TrainState:
    stage: int = 0  # index of the stage in progress (== len(stages) when done)
    step: int = 0  # steps done inside that stage
    wall_s: dict[str, float] = field(default_factory=dict)  # per-stage wall-clock
    last_logs: dict[str, dict[str, float]] = field(default_factory=dict)
    stage_info: dict[str, Any] = field(default_factory=dict)
    passes: dict[str, int] = field(default_factory=dict)  # per-stage network passes over samples (fwd 1, bwd 2)


def _training_part(config: dict) -> dict:
    """The config minus its evaluation section (which never changes what is trained), resolved against this
    version's defaults (:func:`bench.core.config.resolved_config`)."""
    from bench.core.config import resolved_config

    return {k: v for k, v in resolved_config(config).items() if k != "eval"}


def _rng_state(data_gen: torch.Generator) -> dict:
    st = {"torch": torch.get_rng_state(), "data": data_gen.get_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict, data_gen: torch.Generator) -> None:
    torch.set_rng_state(st["torch"])
    data_gen.set_state(st["data"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def network_modules(method: nn.Module) -> dict[str, nn.Module]:
    """The method's networks: its direct child modules, recursing into child methods (a teacher)."""
    out: dict[str, nn.Module] = {}
    for name, child in method.named_children():
        if isinstance(child, Method):
            out.update({f"{name}.{k}": v for k, v in network_modules(child).items()})
        else:
            out[name] = child
    return out


class PassCounter:
    """Counts network passes over samples with forward hooks: each forward of a batch of B counts B, B more
    when it is a forward-mode JVP (its output is a dual tensor: the tangent is propagated alongside the primal,
    about a forward's work), and twice those when its output carries a graph (the backward through it): 3B for
    a forward with backward, 2B for a JVP under no_grad, 6B for a JVP differentiated through.
    No host sync: shapes only."""

    def __init__(self, method: nn.Module) -> None:
        self.total = 0
        nets = [m for m in network_modules(method).values() if not getattr(m, "pass_free", False)]
        self._handles = [m.register_forward_hook(self._hook) for m in nets]

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        first = next((a for a in args if isinstance(a, Tensor) and a.ndim > 0), None)
        n = first.shape[0] if first is not None else 1
        if not isinstance(output, Tensor):
            self.total += n
            return
        dual = forward_ad.unpack_dual(output).tangent is not None
        graph = output.requires_grad
        if dual and not graph:  # inside torch.func.jvp the output hides its graph: ask grad mode and the weights
            graph = torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())
        self.total += n * (1 + dual) * (1 + 2 * graph)

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _trim_log(path: Path, stage_names: list[str], state: TrainState) -> None:
    """Keep the log lines up to the checkpoint being resumed (stage < state.stage, or its step <= state.step)."""
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            si = stage_names.index(rec["stage"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by the kill, or from a config that no longer exists
        if si < state.stage or (si == state.stage and rec.get("step", 0) <= state.step):
            keep.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in keep))


@contextlib.contextmanager
def _frozen(modules: list[nn.Module]):
    flags = [[p.requires_grad for p in m.parameters()] for m in modules]
    for m in modules:
        m.requires_grad_(False)
    try:
        yield
    finally:
        for m, fl in zip(modules, flags, strict=True):
            for p, f in zip(m.parameters(), fl, strict=True):
                p.requires_grad_(f)


def lr_factor(warmup: int, steps: int, schedule: str, min_ratio: float, s: int) -> float:
    """Multiplier of the base LR at optimiser step ``s`` (0-based) of a ``steps``-step stage: linear warm-up over
    ``warmup`` steps, then constant or a half cosine from 1 down to ``min_ratio`` at the last step."""
    if warmup > 0 and s < warmup:
        return (s + 1) / warmup
    if schedule == "constant" or steps <= warmup + 1:
        return 1.0
    frac = min(1.0, (s - warmup) / (steps - warmup - 1))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))


class _UpdateRunner:
    """One Update's optimiser, LR schedule, grad scaler and wrapped networks."""

    def __init__(self, method: Method, u: Update, tc: Any, device: torch.device, dist: Dist, steps: int) -> None:
        self.u = u
        self.nets = {p: getattr(*resolve_net(method, p)) for p in u.nets}
        self.params = [p for m in self.nets.values() for p in m.parameters() if p.requires_grad]
        self.opt = u.build_optimizer(self.params)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, partial(lr_factor, tc.warmup_steps, steps, tc.lr_schedule, tc.lr_min_ratio)
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=tc.precision == "fp16")
        self.wrapped = {}
        for p, m in self.nets.items():
            w = dist.wrap(m, device)
            if tc.compile:
                w = torch.compile(w)
            if w is not m:
                self.wrapped[p] = w

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, st: dict) -> None:
        self.opt.load_state_dict(st["opt"])
        self.sched.load_state_dict(st["sched"])
        self.scaler.load_state_dict(st["scaler"])


def train(
    method: Method,
    dataset: Any,
    cfg: Any,
    config_dict: dict,
    workdir: Path,
    device: torch.device,
    resume: bool = False,
    progress: Any = None,
    dist: Dist | None = None,
) -> TrainState:
    """Run all of ``method``'s stages; rank 0 writes ``workdir/ckpt.pt`` (atomic) and ``workdir/log.jsonl``."""
    tc = cfg.train
    dist = dist or Dist()
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_path = workdir / "ckpt.pt"
    data_gen = torch.Generator().manual_seed(cfg.seed + 1)
    stages = method.stages()
    runners = {s.name: [_UpdateRunner(method, u, tc, device, dist, s.steps) for u in s.updates] for s in stages}
    state = TrainState()
    if resume:
        ck = load_checkpoint(ckpt_path, map_location=device)
        if _training_part(ck["config"]) != _training_part(config_dict):
            raise BenchError(f"cannot resume {ckpt_path}: the resolved config differs from the checkpoint's")
        method.load_state_dict(ck["method_state"])
        for name, rs in runners.items():
            for r, st in zip(rs, ck["optim"].get(name, []), strict=False):
                r.load_state_dict(st)
        state = TrainState(**ck["train_state"])
        _set_rng_state(ck["rng"], data_gen)

    amp_dtype = PRECISIONS[tc.precision]
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=tc.precision != "fp32")
    counter = PassCounter(method)
    log_path = workdir / "log.jsonl"
    if dist.is_main and resume and log_path.exists():  # drop what the killed attempt logged past its checkpoint
        _trim_log(log_path, [s.name for s in stages], state)
    log_f = open(log_path, "a" if resume else "w") if dist.is_main else None  # noqa: SIM115 - closed in finally

    def checkpoint() -> None:
        if dist.is_main:
            save_checkpoint(
                ckpt_path,
                {
                    "config": config_dict,
                    "method_state": method.state_dict(),
                    "optim": {n: [r.state_dict() for r in rs] for n, rs in runners.items()},
                    "train_state": state.__dict__,
                    "rng": _rng_state(data_gen),
                },
            )
        dist.barrier()

    def data_batch(n: int) -> Tensor:
        x = dataset.train_batch(n, data_gen).to(device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if tc.channels_last and x.ndim == 4 else x

    def one_update(si: int, ui: int, r: _UpdateRunner, stage: Stage, step: int) -> dict[str, Tensor]:
        u = r.u
        others = [m for o in runners[stage.name] if o is not r for m in o.nets.values()]
        n = u.batch_size or tc.batch_size
        lo, hi = dist.range(n).start, dist.range(n).stop
        logs: dict[str, Tensor] = {}
        for rep in range(u.repeats):
            full = data_batch(n) if u.data else None
            b = Batch(full, n, lo, hi, step_seed(cfg.seed, si, ui, rep, step), device, step)
            with _frozen(others):
                with swapped(method, r.wrapped), autocast:
                    loss, logs = u.loss(b, step)
                r.opt.zero_grad(set_to_none=True)
                r.scaler.scale(loss).backward()
            r.scaler.unscale_(r.opt)
            norm = torch.nn.utils.clip_grad_norm_(r.params, tc.grad_clip if tc.grad_clip > 0 else math.inf)
            r.scaler.step(r.opt)
            r.scaler.update()
        r.sched.step()
        sfx = "_" + u.name if u.name else ""
        return {f"loss{sfx}": loss.detach(), **{k: v.detach() for k, v in logs.items()}, f"grad_norm{sfx}": norm}

    def check(logs: dict[str, Tensor], first_bad: dict[str, Tensor], stage: Stage) -> dict[str, float]:
        """The one host sync: every log_every steps and before every checkpoint."""
        keys = list(logs)
        vals = torch.stack([v.float().reshape(()) for v in logs.values()])
        none = torch.full((), -1, dtype=torch.long, device=vals.device)
        first = torch.stack([first_bad.get(k, none) for k in keys])
        if dist.active:  # logged values averaged over ranks; any rank's NaN stops every rank
            vals, first = dist.sum(vals) / dist.world, dist.max(first)
        bad_at = {k: int(b) for k, b in zip(keys, first.tolist(), strict=True) if b >= 0}
        if bad_at:
            key = min(bad_at, key=bad_at.get)
            kept = "" if ckpt_path.exists() else " (none was written yet)"
            raise TrainingDiverged(
                f"training diverged in stage '{stage.name}' at step {bad_at[key]}: {key} is NaN/Inf"
                f"; last good checkpoint kept at {ckpt_path}{kept}"
            )
        vals = vals.tolist()
        return dict(zip(keys, vals, strict=True))

    try:
        for si, stage in enumerate(stages):
            if si < state.stage:
                if stage.setup is not None:
                    stage.setup(True)
                continue
            if stage.setup is not None:
                stage.setup(state.step > 0)
            t_start = time.perf_counter() - state.wall_s.get(stage.name, 0.0)
            counter.total = 0
            passes0 = state.passes.get(stage.name, 0)
            if stage.run is not None:
                state.stage_info[stage.name] = stage.run(dist)
            else:
                task = progress.add_task(stage.name, total=stage.steps, completed=state.step) if progress else None
                # per watched logged value: the first step it was NaN/Inf (-1 = never), one vector for all of them
                first_keys: tuple[str, ...] = ()
                first_vec = torch.zeros(0, dtype=torch.long, device=device)
                for step in range(state.step, stage.steps):
                    logs: dict[str, Tensor] = {}
                    for ui, r in enumerate(runners[stage.name]):
                        logs.update(one_update(si, ui, r, stage, step))
                    # device ops only, no sync (fp16: inf grad norms are the GradScaler's business, not divergence)
                    watched = tuple(k for k in logs if tc.precision != "fp16" or k.startswith("loss"))
                    if watched != first_keys:  # the set of logged values changed: bring it along
                        old = dict(zip(first_keys, first_vec.unbind(), strict=True)) if first_keys else {}
                        first_keys = watched
                        neg = torch.full((), -1, dtype=torch.long, device=device)
                        first_vec = torch.stack([old.get(k, neg) for k in first_keys])
                    nonfinite = ~torch.isfinite(torch.stack([logs[k].float().reshape(()) for k in first_keys]))
                    first_vec = torch.where((first_vec < 0) & nonfinite, step, first_vec)
                    # EMA with the usual warm-up (decay <= (1 + step) / (10 + step)); decay 0 copies the weights
                    ema_update(stage.ema, min(stage.ema_decay, (1 + step) / (10 + step)))
                    state.step = step + 1
                    last = step + 1 == stage.steps
                    ckpt_now = tc.ckpt_every > 0 and (step + 1) % tc.ckpt_every == 0 and not last
                    if (step + 1) % tc.log_every == 0 or last or ckpt_now:
                        vals = check(logs, dict(zip(first_keys, first_vec.unbind(), strict=True)), stage)
                        state.last_logs[stage.name] = vals
                        if log_f is not None and ((step + 1) % tc.log_every == 0 or last):
                            log_f.write(json.dumps({"stage": stage.name, "step": step + 1, **vals}) + "\n")
                            log_f.flush()
                        if progress is not None:
                            loss_key = next((k for k in vals if k.startswith("loss")), None)
                            desc = f"{stage.name} {loss_key} {vals[loss_key]:.4g}" if loss_key else stage.name
                            progress.update(task, completed=step + 1, description=desc)
                    if ckpt_now:
                        state.wall_s[stage.name] = time.perf_counter() - t_start
                        state.passes[stage.name] = passes0 + int(dist.sum(torch.tensor(counter.total)).item())
                        checkpoint()
                        counter.total, passes0 = 0, state.passes[stage.name]
            state.wall_s[stage.name] = time.perf_counter() - t_start
            state.passes[stage.name] = passes0 + int(dist.sum(torch.tensor(counter.total)).item())
            state.stage, state.step = si + 1, 0
            checkpoint()
    finally:
        counter.close()
        if log_f is not None:
            log_f.close()
    return state


def load_trained(method: Method, workdir: Path, device: torch.device, config_dict: dict | None = None) -> TrainState:
    """Load the final weights of a finished run into ``method`` (for sampling and evaluation)."""
    ck = load_checkpoint(workdir / "ckpt.pt", map_location=device)
    if config_dict is not None and _training_part(ck["config"]) != _training_part(config_dict):
        raise BenchError(f"{workdir}/ckpt.pt was trained with another config")
    stages = method.stages()
    state = TrainState(**ck["train_state"])
    if state.stage < len(stages):
        raise BenchError(f"{workdir}/ckpt.pt is unfinished (stage {state.stage} of {len(stages)}); use --resume")
    method.load_state_dict(ck["method_state"])
    return state
