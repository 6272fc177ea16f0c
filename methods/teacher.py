"""The flow teacher of chargen, consistency distillation and reflow: trained in the run (a ``teacher`` stage of
flow matching) or reused from a finished ``flow`` run (or a chargen run that trained its own), with its
checks, its training cost carried into the student's record, and its record fields; one copy for all three."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.methods.base import Stage, Update
from bench.methods.flow import Flow, FlowConfig, VelocityModel

from bench.errors import BenchError


@dataclass
class TeacherConfig:
    run: str = ""  # reuse a trained `flow` run: run id (under the runs folder), run folder or its ckpt.pt; "" = train
    flow: FlowConfig = field(default_factory=FlowConfig)  # the teacher's config when trained in this run


class TeacherMixin:
    """A `flow` teacher, trained in the run (stage ``teacher``) or reused from a finished run, handled exactly as
    chargen handles it: same resolution and checks (``resolve_teacher``), same prior cost, same record fields."""

    def has_teacher(self) -> bool:
        return "teacher" in self._modules

    def _init_teacher(self, tc: TeacherConfig, spec, train, workdir) -> None:
        self.teacher_run, tcfg, ck = None, tc.flow, None
        if tc.run:
            self.teacher_run, tcfg, ck = resolve_teacher(tc.run, spec, workdir)
        self.teacher_cfg = tcfg
        self.teacher = Flow(tcfg, spec, train, workdir)
        if ck is not None:
            try:
                self.teacher.load_state_dict(ck["method_state"])
            except RuntimeError as e:  # same data set, but the weights do not fit the network they name
                raise BenchError(f"teacher {tc.run}: weights do not match its network ({e})") from None
            self.teacher_train_s = ck["train_state"]["wall_s"]
            self.teacher_passes = ck["train_state"].get("passes")

    def _teacher_stages(self) -> list[Stage]:
        """The teacher's flow-matching stage when it is trained here (train.steps, train.lr), else nothing."""
        if not self.has_teacher() or self.teacher_run is not None:
            return []
        tc, t = self.train_cfg, self.teacher
        teach = Update(("teacher.net",), t.loss, lr=tc.lr)
        return [Stage("teacher", tc.steps, [teach], ema=t.ema_pairs(), ema_decay=tc.ema_decay)]

    def v(self) -> VelocityModel:
        """The frozen EMA teacher as a velocity field."""
        return self.teacher.velocity(ema=True)

    def prior_cost(self) -> dict:
        if not self.has_teacher() or self.teacher_run is None:
            return {}
        return {
            "what": f"teacher run {self.teacher_run}",
            "wall_clock_s": dict(self.teacher_train_s),
            "network_passes": self.teacher_passes.get("teacher") if self.teacher_passes else None,
        }

    def teacher_extra(self) -> dict:
        """``extra.teacher`` of the record (the leaderboard adds a reused teacher's ``train_wall_clock_s``)."""
        if not self.has_teacher():
            return {}
        from bench.core.config import to_dict

        out = {
            "label": self.teacher.label(),
            "params": self.teacher.sampling_params(),
            "run": self.teacher_run or "trained in this run",
            "config": to_dict(self.teacher_cfg),
        }
        if self.teacher_run is not None:
            out["train_wall_clock_s"] = self.teacher_train_s
        return {"teacher": out}


def resolve_teacher(ref: str, spec, workdir) -> tuple[str, FlowConfig, dict]:
    """Find a finished `flow` run (id, folder or ckpt.pt), check it fits this data, return its config and ckpt."""
    from bench.core.checkpoint import load_checkpoint
    from bench.core.config import from_dict, legacy_filled

    ck_path = find_run_checkpoint(ref, workdir, "teacher")
    ck = load_checkpoint(ck_path)
    cfg = legacy_filled(ck["config"])
    kind = cfg["method"]["name"]
    if kind == "chargen" and not cfg["method"]["teacher"]["run"]:  # the teacher a chargen run trained itself
        fcfg = dict(cfg["method"]["teacher"]["flow"])
        state = {k[len("teacher.") :]: v for k, v in ck["method_state"].items() if k.startswith("teacher.")}
        ck = {**ck, "method_state": state}
    elif kind == "flow":
        fcfg = {k: v for k, v in cfg["method"].items() if k != "name"}
    else:
        raise BenchError(
            f"teacher {ck_path} is a {kind!r} run; a `flow` run (or a chargen run that trained its "
            "own teacher) is needed"
        )
    if cfg["data"]["name"] != spec.name:
        raise BenchError(f"teacher {ck_path} was trained on {cfg['data']['name']!r}, this run uses {spec.name!r}")
    if ck["train_state"]["stage"] < 1:
        raise BenchError(f"teacher {ck_path} is unfinished")
    tcfg = from_dict(FlowConfig, fcfg, prefix="teacher.")
    w = ck["method_state"].get("net.inp.weight")  # MLP: (hidden, dim); U-Net: (channels, C, k, k)
    want = spec.dim if w is not None and w.ndim == 2 else spec.shape[0]
    if w is not None and w.shape[1] != want:
        what = "input dimension" if w.ndim == 2 else "input channels"
        raise BenchError(f"teacher {ck_path} has {what} {w.shape[1]}, data has {want}")
    ck["train_state"] = {
        **ck["train_state"],
        "wall_s": {"teacher": _first(ck["train_state"]["wall_s"], ("teacher", "train", "flow"))},
        "passes": {"teacher": _first(ck["train_state"].get("passes") or {}, ("teacher", "train"))},
    }
    return ck_path.parent.name, tcfg, ck


def find_run_checkpoint(ref: str, workdir, what: str) -> Path:
    """The ckpt.pt of a finished run given as ckpt.pt, run folder, or run id beside this run's folder."""
    p = Path(ref)
    candidates = [p, p / "ckpt.pt"]
    if workdir is not None:
        candidates += [Path(workdir).parent / ref / "ckpt.pt"]
    ck_path = next((c for c in candidates if c.is_file()), None)
    if ck_path is None:
        raise BenchError(f"{what} run {ref!r} not found (looked for {', '.join(str(c) for c in candidates)})")
    return ck_path


def _first(d: dict, keys: tuple[str, ...]):
    return next((d[k] for k in keys if k in d), None)
