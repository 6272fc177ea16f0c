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
    """(name, status) lines for optional files: Inception weights (both engines), the classifiers (shipped, cached)."""
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
    from bench.eval.metrics import classifier as C
    from bench.eval.metrics import fmnist_classifier as fc

    for label, version, cached in [
        (f"digits classifier ({VERSION}, fd_digits)", VERSION, [classifier_path()]),
        (f"fashion-mnist classifier ({fc.VERSION}, fd_fmnist)", fc.VERSION,
         sorted((default_cache_dir() / "fmnist_classifier").glob(f"{fc.VERSION}-*.pt"))),
    ]:  # fmt: skip
        try:
            shipped = [f"shipped {p} sha256 {sha256_file(p)}" for p in sorted(C.SHIPPED_DIR.glob(f"{version}*.pt"))
                       if C.shipped_file(p.name)]  # fmt: skip
        except BenchError as e:
            shipped = [f"REFUSED {e}"]
        lines = shipped + [f"cached {p} sha256 {sha256_file(p)}" for p in cached if p.is_file()]
        out.append((label, "; ".join(lines) or "absent; trained on first use (its own data)"))
    return out
