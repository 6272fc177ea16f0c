"""Run records: one JSON file per run, written atomically under a lock, holding everything a number
depends on. Re-evaluating a run merges into its record (same metric protocol) or supersedes it (another
protocol, the old version kept in ``history``); a record is never silently replaced."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from filelock import FileLock, Timeout

from bench.core.checkpoint import atomic_write_json
from bench.errors import BenchError

SCHEMA = "onestep-bench-record/1"
_PACKAGES = ("torch", "torchvision", "numpy", "scipy", "POT", "torchdiffeq", "torch-fidelity", "clean-fid")
LOCK_NAME = ".lock"  # results_dir/.lock: one writer (record or leaderboard) at a time
LOCK_TIMEOUT_S = 120.0
# protocol fields that are outcomes of a measurement, not part of how it is measured
_OUTCOME_KEYS = frozenset({"hit_cap", "kid_std"})


class RecordWrite(NamedTuple):
    """What ``write_record`` did: ``action`` is "new", "merged" or "new version"."""

    path: Path
    action: str

    def __str__(self) -> str:
        return f"{self.path} ({self.action})"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    try:
        out["onestep-bench"] = metadata.version("onestep-bench")
    except metadata.PackageNotFoundError:
        out["onestep-bench"] = "source tree"
    return out


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if sha.returncode != 0:
        return "unknown"
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def now_utc() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_path(results_dir: Path, dataset: str, run_id: str) -> Path:
    return Path(results_dir) / "runs" / dataset / f"{run_id}.json"


_LOCKS: dict[tuple[int, str], FileLock] = {}


@contextmanager
def results_lock(results_dir: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[Path]:
    """Hold ``results_dir/.lock`` (re-entrant within a process); a clear BenchError after ``timeout`` s."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / LOCK_NAME
    key = (os.getpid(), str(path.resolve()))  # one instance per process and file: re-entrant, fork-safe
    lock = _LOCKS.setdefault(key, FileLock(str(path)))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise BenchError(
            f"{results_dir} is busy: no lock on {path} within {timeout:g} s (another bench process writing a "
            "record or rendering the leaderboard); retry when it has finished"
        ) from None
    try:
        yield path
    finally:
        lock.release()


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


# What the leaderboard and TARGETS.md read, with its JSON type: key -> (required, kinds). Kinds: "num"
# (a number, not a bool), "str", "list", "obj", "null", "any".
_FIELDS: dict[str, dict[str, tuple[bool, tuple[str, ...]]]] = {
    "record": {
        "run_id": (True, ("str",)),
        "dataset": (True, ("str",)),
        "config": (True, ("obj",)),
        "rows": (True, ("list",)),
        "seed": (True, ("any",)),
        "status": (False, ("str",)),
        "date": (False, ("str",)),
        "method": (False, ("str",)),
        "device": (False, ("str",)),
        "params": (False, ("num", "null")),
        "data_spec": (False, ("obj",)),
        "extra": (False, ("obj", "null")),
        "train": (False, ("obj", "null")),
        "timing_reference": (False, ("obj", "null")),
        "reference_floor": (False, ("obj", "null")),
    },
    "row": {
        "label": (True, ("str",)),
        "solver": (True, ("str",)),
        "nfe_requested": (True, ("num", "null")),
        "metrics": (True, ("obj",)),
        "nfe": (False, ("num", "null")),
        "timing": (False, ("obj", "null")),
        "train": (False, ("obj", "null")),
    },
    "metric": {
        "values": (True, ("list",)),
        "protocol": (True, ("obj",)),
        "mean": (False, ("num",)),
        "std": (False, ("num",)),
    },
    "floor": {"values": (True, ("list",)), "what": (False, ("str",))},
    "timing": {
        "per_sample_s": (True, ("num",)),
        "ratio_to_forward": (True, ("num",)),
        "device": (True, ("str",)),
        "latency_s": (False, ("num", "null")),
        "batch": (False, ("num", "null")),
        "load_avg_1min": (False, ("num", "null")),
        "threads": (False, ("num", "null")),
        "cores": (False, ("num", "null")),
    },
    "timing_reference": {
        "load_avg_1min": (False, ("num", "null")),
        "threads": (False, ("num", "null")),
        "cores": (False, ("num", "null")),
    },
    "train": {"total_s": (False, ("num",)), "wall_clock_s": (False, ("obj",)), "cost": (False, ("obj", "null"))},
    "cost": {"network_passes": (False, ("num", "null"))},
}
_KINDS = {
    "num": _is_num,
    "str": lambda x: isinstance(x, str),
    "list": lambda x: isinstance(x, list),
    "obj": lambda x: isinstance(x, dict),
    "null": lambda x: x is None,
    "any": lambda x: True,
}


def _fields_problem(where: str, obj: Any, kind: str) -> str | None:
    if not isinstance(obj, dict):
        return f"{where or 'the file'} is not a JSON object"
    for key, (required, kinds) in _FIELDS[kind].items():
        if key not in obj:
            if required:
                return f"{where + ' lacks' if where else 'missing key'} {key!r}"
            continue
        if not any(_KINDS[k](obj[key]) for k in kinds):
            want = " or ".join(
                {"num": "a number", "str": "a string", "list": "a list", "obj": "an object"}.get(k, k) for k in kinds
            )
            return f"{(where + '.') if where else ''}{key} is not {want}"
    return None


def _metric_problem(where: str, m: Any, kind: str) -> str | None:
    if why := _fields_problem(where, m, kind):
        return why
    if not all(_is_num(v) for v in m["values"]):
        return f"{where}.values holds a non-number"
    return None


def record_problem(rec: Any) -> str | None:
    """Why ``rec`` cannot be read as a run record (one line: keys of the file are escaped), or None when the
    leaderboard can use it."""
    why = _record_problem(rec)
    return None if why is None else "".join(c if c.isprintable() else ascii(c)[1:-1] for c in why)


def _record_problem(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return "not a JSON object"
    if rec.get("schema") != SCHEMA:
        return f"schema {rec.get('schema')!r}, expected {SCHEMA!r}"
    if why := _fields_problem("", rec, "record"):
        return why
    if not isinstance(rec["config"].get("data"), dict):
        return "missing key 'config.data'"
    for name in ("timing_reference", "train"):
        if rec.get(name) is not None and (why := _fields_problem(name, rec[name], name)):
            return why
    cost = (rec.get("train") or {}).get("cost")
    if cost is not None and (why := _fields_problem("train.cost", cost, "cost")):
        return why
    for name, m in (rec.get("reference_floor") or {}).items():
        if why := _metric_problem(f"reference_floor.{name}", m, "floor"):
            return why
    for i, row in enumerate(rec["rows"]):
        if why := _fields_problem(f"rows[{i}]", row, "row"):
            return why
        if not row["metrics"]:
            return f"rows[{i}].metrics is empty"
        for name, m in row["metrics"].items():
            if why := _metric_problem(f"rows[{i}].metrics.{name}", m, "metric"):
                return why
        for name in ("timing", "train"):
            if row.get(name) is not None and (why := _fields_problem(f"rows[{i}].{name}", row[name], name)):
                return why
    return None


def timing_load(rec: dict, row: dict) -> tuple[float | None, float | None]:
    """(1-min load average during a row's timing, cores or threads recorded with it); None when not recorded.
    The reading machine's core count is never used: what is rendered must not depend on where."""
    tm = row.get("timing") or {}
    ref = rec.get("timing_reference") or {}
    load = tm.get("load_avg_1min")
    cores = next((s[k] for k in ("cores", "threads") for s in (tm, ref) if _is_num(s.get(k))), None)
    return (load if _is_num(load) else None), cores


def timing_loaded(rec: dict, row: dict) -> bool:
    """True when the row was timed at a load average above the recorded core (thread) count (PROTOCOL.md)."""
    load, cores = timing_load(rec, row)
    return load is not None and cores is not None and cores > 0 and load > cores


def _row_key(row: dict) -> tuple:
    return (row["label"], row["solver"], row["nfe_requested"])


def _protocol_ids(rows: list[dict]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for row in rows:
        for name, m in row["metrics"].items():
            p = {k: v for k, v in m["protocol"].items() if k not in _OUTCOME_KEYS}
            out.setdefault(name, set()).add(json.dumps(p, sort_keys=True))
    return out


def _leaves(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True)
    return out


def _protocol_change(old: dict, new: dict) -> str | None:
    """Why ``new``'s rows cannot be merged into ``old`` (one line), or None when the protocols agree."""
    if old.get("status", "ok") != "ok" or new.get("status", "ok") != "ok":
        return f"status {old.get('status', 'ok')} -> {new.get('status', 'ok')}"
    if not old["rows"]:
        return "the previous version has no rows"
    a, b = _leaves(old["config"]), _leaves(new["config"])  # keys added to the config since: not a change
    changed = sorted(k for k in a.keys() & b.keys() if a[k] != b[k] and not k.startswith("eval."))
    if changed:
        return "training config changed: " + ", ".join(f"{k} {a[k]} -> {b[k]}" for k in changed[:3])
    before, after = _protocol_ids(old["rows"]), _protocol_ids(new["rows"])
    common = sorted(before.keys() & after.keys())
    if after and not common:
        return f"no metric in common ({', '.join(sorted(before))} -> {', '.join(sorted(after))})"
    for name in common:
        if before[name] != after[name]:
            a = json.loads(min(before[name]))
            b = json.loads(min(after[name]))
            diff = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
            return f"{name} protocol changed: {'; '.join(diff) or 'mixed protocols'}"
    return None


def _with_threads(rec: dict) -> list[dict]:
    """Rows whose timing carries the thread count of the process that measured it (from its record)."""
    threads = (rec.get("timing_reference") or {}).get("threads")
    out = []
    for row in rec["rows"]:
        tm = row.get("timing")
        if tm is not None and threads is not None and "threads" not in tm:
            row = {**row, "timing": {**tm, "threads": threads}}
        out.append(row)
    return out


def merge_records(old: dict, new: dict) -> tuple[str, dict]:
    """Combine a run's stored record ``old`` with a re-evaluation ``new`` of the same run.

    Same metric protocol: "merged": rows are identified by (label, solver, nfe_requested); re-measured rows
    replace their old version, new rows are appended, the others are kept. Another protocol (or status):
    "new version": ``new`` becomes the record and ``old`` is kept whole in ``history`` as superseded.
    """
    history = old["history"] if isinstance(old.get("history"), list) else []
    body = {k: v for k, v in new.items() if k not in ("schema", "history")}
    prev = {k: v for k, v in old.items() if k not in ("schema", "history")}
    why = _protocol_change(prev, body)
    if why is not None:
        entry = {"date": body.get("date"), "action": "new version", "reason": why, "superseded": prev}
        return "new version", {"schema": SCHEMA, **body, "history": [*history, entry]}
    fresh = {_row_key(r): r for r in _with_threads(body)}
    rows, kept, replaced = [], [], []
    for r in _with_threads(prev):
        k = _row_key(r)
        if k in fresh:
            rows.append(fresh.pop(k))
            replaced.append(list(k))
        else:
            rows.append(r)
            kept.append(list(k))
    rows += fresh.values()
    entry = {
        "date": body.get("date"),
        "action": "merged",
        "git_commit": body.get("git_commit"),
        "added": [list(k) for k in fresh],
        "replaced": replaced,
        "kept": kept,
        "previous": {
            "date": prev.get("date"),
            "git_commit": prev.get("git_commit"),
            "eval": prev["config"].get("eval"),
            "timing_reference": prev.get("timing_reference"),
        },
    }
    merged = {
        **body,
        "rows": rows,
        "reference_floor": body.get("reference_floor") or prev.get("reference_floor"),
        "timing_reference": body.get("timing_reference") or prev.get("timing_reference"),
    }
    return "merged", {"schema": SCHEMA, **merged, "history": [*history, entry]}


def _set_aside(path: Path) -> Path:
    """Rename an unusable record out of the ``*.json`` glob, keeping its bytes."""
    stamp = now_utc().replace("-", "").replace(":", "")
    aside = path.with_name(f"{path.name}.unreadable-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.unreadable-{stamp}-{n}")
    path.replace(aside)
    return aside


def write_record(results_dir: Path, record: dict[str, Any], timeout: float = LOCK_TIMEOUT_S) -> RecordWrite:
    """Write ``record`` atomically under the results folder's lock and say what happened.

    "new": no record for this run yet. "merged"/"new version": see ``merge_records``. An existing file that
    is not a readable record is renamed to ``<run-id>.json.unreadable-<date>`` ("new version"). Refuses
    to overwrite another run's record, and to write a record the leaderboard could not read.
    """
    body = {k: v for k, v in record.items() if k not in ("schema", "history")}
    if why := record_problem({"schema": SCHEMA, **body}):
        raise BenchError(f"refusing to write run record {body.get('run_id')!r}: {why}")
    path = record_path(results_dir, body["dataset"], body["run_id"])
    with results_lock(results_dir, timeout):
        if not path.exists():
            action, out = "new", {"schema": SCHEMA, **body}
        else:
            old, why = read_record(path)
            if isinstance(old, dict) and "run_id" in old and old["run_id"] != body["run_id"]:
                raise BenchError(f"{path} holds another run's record; not overwriting")
            if why is None:
                action, out = merge_records(old, body)
            else:
                aside = _set_aside(path)
                entry = {"date": body.get("date"), "action": "new version", "reason": f"{why}; kept as {aside.name}"}
                action, out = "new version", {"schema": SCHEMA, **body, "history": [entry]}
        atomic_write_json(path, out)
    return RecordWrite(path, action)


def read_record(path: Path) -> tuple[Any, str | None]:
    """(parsed JSON or None, why it is not a usable record or None)."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        return None, f"unreadable ({e.strerror or e})"
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
    except (ValueError, RecursionError) as e:
        return None, f"not valid JSON ({type(e).__name__})"
    return rec, record_problem(rec)


def scan_records(results_dir: Path) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """(usable records sorted by path, [(file, one-line reason)] for every ``runs/**/*.json`` skipped).

    Skipped: unreadable or invalid JSON, another schema, missing keys, and older copies of a run whose
    ``run_id`` another file also holds (the newest by ``date`` is kept: each run counts once).
    """
    results_dir = Path(results_dir)
    found: list[tuple[Path, dict]] = []
    skipped: list[tuple[Path, str]] = []
    for p in sorted((results_dir / "runs").glob("**/*.json")):
        if not p.is_file():
            continue
        rec, why = read_record(p)
        if why is None:
            found.append((p, rec))
        else:
            skipped.append((p, why))
    newest: dict[str, tuple[Path, dict]] = {}
    for p, rec in found:
        best = newest.get(rec["run_id"])
        if best is None or (rec.get("date", ""), str(p)) > (best[1].get("date", ""), str(best[0])):
            newest[rec["run_id"]] = (p, rec)
    records = []
    for p, rec in found:
        keep = newest[rec["run_id"]][0]
        if keep == p:
            records.append(rec)
        else:
            where = keep.relative_to(results_dir).as_posix()
            skipped.append((p, f"older copy of run {rec['run_id']} (counted once, from {where})"))
    return records, sorted(skipped)


def load_records(results_dir: Path) -> list[dict[str, Any]]:
    """All usable records under ``results_dir/runs``, sorted by path; see ``scan_records`` for the rest."""
    return scan_records(results_dir)[0]
