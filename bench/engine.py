"""The shared training loop: stages, warm-up, EMA, gradient clipping (via StepContext), atomic
checkpoints, resume, logging and divergence detection. It never looks at a method's name."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.checkpoint import load_checkpoint, save_checkpoint
from bench.errors import BenchError
from bench.methods.base import Method, StepContext, ema_update


class TrainingDiverged(BenchError):
    """A loss became NaN/Inf; the last good checkpoint is kept."""


@dataclass
class TrainState:
    stage: int = 0  # index of the stage in progress (== len(stages) when done)
    step: int = 0  # steps done inside that stage
    wall_s: dict[str, float] = field(default_factory=dict)  # per-stage wall-clock
    last_logs: dict[str, dict[str, float]] = field(default_factory=dict)
    stage_info: dict[str, Any] = field(default_factory=dict)


def _training_part(config: dict) -> dict:
    """The config minus its evaluation section (which never changes what is trained)."""
    return {k: v for k, v in config.items() if k != "eval"}


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


def train(
    method: Method,
    dataset: Any,
    cfg: Any,
    config_dict: dict,
    workdir: Path,
    device: torch.device,
    resume: bool = False,
    progress: Any = None,
) -> TrainState:
    """Run all of ``method``'s stages; write ``workdir/ckpt.pt`` (atomic) and ``workdir/log.jsonl``."""
    tc = cfg.train
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_path = workdir / "ckpt.pt"
    data_gen = torch.Generator().manual_seed(cfg.seed + 1)
    stages = method.stages()
    state = TrainState()
    if resume:
        ck = load_checkpoint(ckpt_path, map_location=device)
        if _training_part(ck["config"]) != _training_part(config_dict):
            raise BenchError(f"cannot resume {ckpt_path}: the resolved config differs from the checkpoint's")
        method.load_state_dict(ck["method_state"])
        for s in stages:
            for opt, st in zip(s.optimizers, ck["optim"].get(s.name, []), strict=False):
                opt.load_state_dict(st)
        state = TrainState(**ck["train_state"])
        _set_rng_state(ck["rng"], data_gen)

    def batch_fn(n: int | None) -> torch.Tensor:
        return dataset.train_batch(n or tc.batch_size, data_gen).to(device, non_blocking=True)

    ctx = StepContext(batch_fn, tc.grad_clip)
    log_f = open(workdir / "log.jsonl", "a")  # noqa: SIM115 - closed in finally

    def checkpoint() -> None:
        save_checkpoint(
            ckpt_path,
            {
                "config": config_dict,
                "method_state": method.state_dict(),
                "optim": {s.name: [o.state_dict() for o in s.optimizers] for s in stages},
                "train_state": state.__dict__,
                "rng": _rng_state(data_gen),
            },
        )

    try:
        for si, stage in enumerate(stages):
            if si < state.stage:
                if stage.setup is not None:
                    stage.setup(True)
                continue
            if stage.setup is not None:
                stage.setup(state.step > 0)
            t_start = time.perf_counter() - state.wall_s.get(stage.name, 0.0)
            if stage.run is not None:
                state.stage_info[stage.name] = stage.run()
            else:
                base_lrs = [[g.setdefault("initial_lr", g["lr"]) for g in o.param_groups] for o in stage.optimizers]
                task = progress.add_task(stage.name, total=stage.steps, completed=state.step) if progress else None
                for step in range(state.step, stage.steps):
                    warm = min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps > 0 else 1.0
                    for o, lrs in zip(stage.optimizers, base_lrs, strict=True):
                        for g, lr in zip(o.param_groups, lrs, strict=True):
                            g["lr"] = lr * warm
                    ctx.step = step
                    logs = stage.step(ctx)
                    bad = [k for k, v in logs.items() if not math.isfinite(v)]
                    if bad:
                        raise TrainingDiverged(
                            f"training diverged in stage '{stage.name}' at step {step}: {bad[0]} = {logs[bad[0]]}"
                            f"; last good checkpoint kept at {ckpt_path}"
                            + ("" if ckpt_path.exists() else " (none was written yet)")
                        )
                    # EMA with the usual warm-up (decay <= (1 + step) / (10 + step)); decay 0 copies the weights
                    decay = min(stage.ema_decay, (1 + step) / (10 + step))
                    for ema, online in stage.ema:
                        ema_update(ema, online, decay)
                    state.step = step + 1
                    state.last_logs[stage.name] = logs
                    if (step + 1) % tc.log_every == 0 or step + 1 == stage.steps:
                        log_f.write(json.dumps({"stage": stage.name, "step": step + 1, **logs}) + "\n")
                        log_f.flush()
                    if progress is not None:
                        progress.update(task, advance=1, description=f"{stage.name} loss {logs.get('loss', 0):.4f}")
                    if tc.ckpt_every > 0 and (step + 1) % tc.ckpt_every == 0 and step + 1 < stage.steps:
                        state.wall_s[stage.name] = time.perf_counter() - t_start
                        checkpoint()
            state.wall_s[stage.name] = time.perf_counter() - t_start
            state.stage, state.step = si + 1, 0
            checkpoint()
    finally:
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
