"""Optional local assets (weights, data sets) the suite can use; reported by `bench doctor`."""

from __future__ import annotations


def asset_report() -> list[tuple[str, str]]:
    """(name, status) lines for optional files. Extended by the image pipeline."""
    return []
