"""Optional local assets (weights, data sets) the suite can use; reported by `bench doctor`."""

from __future__ import annotations


def _weights_line(lookup, verify) -> str:
    from bench.errors import BenchError

    looked = "; looked in: " + ", ".join(lookup.looked)
    if lookup.path is None:
        return f"missing ({lookup.filename}){looked}; set $BENCH_INCEPTION_WEIGHTS / $BENCH_CLEANFID_WEIGHTS"
    try:
        sha, official = verify(lookup.path)
    except BenchError as e:
        return f"REFUSED {lookup.path}: {e}"
    return f"found {lookup.path} sha256 {sha} ({'official' if official else 'NOT the published file'})"


def asset_report() -> list[tuple[str, str]]:
    """(name, status) lines for optional files: Inception weights (both engines), digits classifier cache."""
    from bench.errors import BenchError
    from bench.eval.metrics.digits_classifier import VERSION, classifier_path
    from bench.eval.metrics.features import default_cache_dir, sha256_file
    from bench.eval.metrics.inception import (
        locate_cleanfid_weights,
        locate_inception_weights,
        verify_state_dict_weights,
        verify_torchscript_weights,
    )

    out = []
    for name, locate, verify in [
        ("inception weights (torch-fidelity, fid)", locate_inception_weights, verify_state_dict_weights),
        ("inception weights (clean-fid, fid_cleanfid/fid_clean)", locate_cleanfid_weights, verify_torchscript_weights),
    ]:
        try:
            out.append((name, _weights_line(locate(), verify)))
        except BenchError as e:  # a configured path that does not exist
            out.append((name, f"ERROR {e}"))
    p = classifier_path()
    status = f"cached {p} sha256 {sha256_file(p)}" if p.is_file() else f"absent ({p}); trained on first use (seconds)"
    out.append((f"digits classifier ({VERSION}, fd_digits)", status))
    from bench.eval.metrics import fmnist_classifier as fc

    files = sorted((default_cache_dir() / "fmnist_classifier").glob(f"{fc.VERSION}-*.pt"))
    status = "; ".join(f"cached {p} sha256 {sha256_file(p)}" for p in files) or (
        "absent; trained on first fashion-mnist evaluation (minutes on 2 CPU cores)"
    )
    out.append((f"fashion-mnist classifier ({fc.VERSION}, fd_fmnist)", status))
    return out
