"""Which of a table's metrics is its quality axis, and the order metrics are shown in.

Quality metrics are distances to the data, lower is better: W2 (points), FID (Inception) and the Fréchet distances
in a data set's own feature space (``fd_<name>``: ``fd_digits``, ``fd_fmnist``, ...). One rule for the leaderboard,
the report, the budget study and the targets, so a new image data set needs no edit here.
"""

from __future__ import annotations

from collections.abc import Iterable

_FIRST = ("w2", "sw2", "fid")
_AFTER = ("kid", "precision", "recall")
METRIC_NAMES = {"w2": "W2", "sw2": "SW2", "fid": "FID"}


def is_quality(name: str) -> bool:
    """W2, FID or a feature-space Fréchet distance (``fd_*``): a table's candidates for its quality axis."""
    return name in ("w2", "fid") or name.startswith("fd_")


def metric_order(names: Iterable[str]) -> list[str]:
    """W2, SW2, FID, the ``fd_*`` distances, then KID / precision / recall (and their ``*_<name>`` variants),
    then the rest, each group by name."""

    def key(m: str) -> tuple[int, int, str]:
        if m in _FIRST:
            return (0, _FIRST.index(m), m)
        if m.startswith("fd_"):
            return (1, 0, m)
        base = m.split("_", 1)[0]
        if base in _AFTER:
            return (2, _AFTER.index(base), m)
        return (3, 0, m)

    return sorted(set(names), key=key)


def quality_metrics(names: Iterable[str]) -> list[str]:
    """The quality metrics among ``names``, in display order (the first is the table's quality axis)."""
    return [m for m in metric_order(names) if is_quality(m)]


def quality_metric(names: Iterable[str]) -> str | None:
    """The first quality metric among ``names`` (None if there is none)."""
    return next(iter(quality_metrics(names)), None)


def metric_name(name: str) -> str:
    """Axis label: W2, FID, FD_fmnist, ..."""
    return METRIC_NAMES.get(name) or (f"FD_{name[3:]}" if name.startswith("fd_") else name)
