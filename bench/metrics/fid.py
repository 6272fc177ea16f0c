"""Fréchet distance, KID and precision/recall on image features, in stages features -> statistics -> distance.

Registered metrics (kind "image"):

* Inception, torch-fidelity engine (default): ``fid``, ``kid``, ``precision``, ``recall``; chosen
  automatically when the weights file is present and the data set is not ``digits``.
* Inception, clean-fid engine (cross-checks, only when asked for): ``fid_cleanfid`` (legacy_tensorflow)
  and ``fid_clean`` (clean).
* The suite's digits classifier: ``fd_digits``, ``kid_digits``, ``precision_digits``, ``recall_digits``;
  chosen automatically for the ``digits`` data set (never called FID).

Generated features are computed once per (eval point, repeat) and shared through ``ctx.shared``;
reference statistics of the training split are cached on disk (``bench.metrics.features``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg
from torch import Tensor

from bench.errors import BenchError
from bench.metrics.features import (
    FeatureExtractor,
    FeatureSet,
    RunningStats,
    generated_feature_set,
    reference_feature_set,
)
from bench.metrics.registry import MetricContext, metric

SQRTM_EPS = 1e-6
KID_SUBSETS = 100  # torch-fidelity defaults (kid_subsets, kid_subset_size, poly kernel degree 3, coef0 1)
KID_SUBSET_SIZE = 1000
KID_SEED = 2020
PR_NEIGHBORHOOD = 3
REFERENCE_SPLIT = "train"
LITERATURE_N_GEN = 50_000

# ----------------------------------------------------------------------------------------------
# pure numerics


def stats_from_features(feats: Tensor | np.ndarray, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) in float64, sigma = unbiased covariance; accumulated over row batches (streaming)."""
    rs = RunningStats(feats.shape[1])
    for i in range(0, feats.shape[0], batch):
        rs.update(feats[i : i + batch])
    return rs.result()


def _sqrtm_product(s1: np.ndarray, s2: np.ndarray) -> np.ndarray | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(out).all():
        return None
    if np.iscomplexobj(out):
        if not np.allclose(np.diagonal(out).imag, 0, atol=1e-3):
            return None
        out = out.real
    return out


def frechet_distance_info(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = SQRTM_EPS
) -> tuple[float, dict]:
    """d² = ||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^½)  (Dowson & Landau 1982; Heusel et al. 2017), float64.

    ``scipy.linalg.sqrtm`` of the product; if it is not finite or has a non-negligible imaginary diagonal
    (singular product, e.g. n < dim), retry once with ``eps`` added to both diagonals (the TTUR /
    pytorch-fid fallback) and report the offset used.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    offset = 0.0
    covmean = _sqrtm_product(s1, s2)
    if covmean is None:
        offset = eps
        eye = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm_product(s1 + eye, s2 + eye)
        if covmean is None:
            raise ValueError("sqrtm(sigma1 sigma2) failed even with the diagonal offset")
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return value, {"sqrtm": "scipy.linalg.sqrtm", "sqrtm_offset": offset}


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); see :func:`frechet_distance_info`."""
    return frechet_distance_info(mu1, sigma1, mu2, sigma2)[0]


def kid_from_features(
    gen: Tensor, ref: Tensor, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE, seed: int = KID_SEED
) -> tuple[float, float, int]:
    """KID (Bińkowski et al. 2018): unbiased MMD² with k(x, y) = (x·y / d + 1)³, mean (and std) over
    ``subsets`` random subsets of ``min(subset_size, n_gen, n_ref)`` rows; torch-fidelity's implementation."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    m = min(subset_size, len(gen), len(ref))
    if m < 2:
        raise BenchError(f"KID needs at least 2 samples per side (got {len(gen)}, {len(ref)})")
    out = kid_features_to_metric(
        gen.double(), ref.double(), kid_subsets=subsets, kid_subset_size=m, rng_seed=seed, verbose=False
    )
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD], m


def precision_recall_from_features(gen: Tensor, ref: Tensor, k: int = PR_NEIGHBORHOOD) -> tuple[float, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019): k-NN balls around each set's features;
    precision = share of generated samples inside the real manifold, recall = the converse.
    torch-fidelity's implementation (chunked cdist when the sets are large)."""
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    if min(len(gen), len(ref)) <= k:
        raise BenchError(f"precision/recall with k={k} needs more than {k} samples per side")
    big = len(gen) * len(ref) > 10_000**2
    out = prc_features_to_metric(
        gen.float(), ref.float(), prc_neighborhood=k, prc_batch_size=10_000, save_cpu_ram=big, verbose=False
    )
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]


# ----------------------------------------------------------------------------------------------
# families of registered metrics (one extractor each)


class Family:
    """Metrics sharing one feature extractor: which data they apply to, how to build the extractor."""

    def __init__(
        self,
        tag: str,
        build: Callable[[MetricContext], FeatureExtractor],
        applies: Callable[[Any, Any], bool],
        check: Callable[[Any, Any], None],
        names: dict[str, str],
    ) -> None:
        self.tag, self.build, self.applies, self.check, self.names = tag, build, applies, check, names

    def needs_features(self, ctx: MetricContext) -> bool:
        """Keep per-sample features only when a KID/PR metric of this family will run (else O(1) memory)."""
        from bench.metrics.registry import applicable_metrics

        chosen = {m.name for m in applicable_metrics(ctx.dataset.spec, ctx.eval_cfg)}
        return bool(chosen & {v for k, v in self.names.items() if k != "fd"})


def _feature_sets(
    fam: Family, gen: Any, ctx: MetricContext, keep: bool
) -> tuple[FeatureExtractor, FeatureSet, FeatureSet]:
    fam.check(ctx.dataset, ctx.eval_cfg)
    ex = fam.build(ctx)
    split = REFERENCE_SPLIT
    ref = reference_feature_set(ctx.dataset, split, ctx.eval_cfg.n_ref, ex, ctx.cache_dir)
    gfs = generated_feature_set(gen, ex, ctx.shared, keep)
    return ex, gfs, ref


def _protocol(ex: FeatureExtractor, gfs: FeatureSet, ref: FeatureSet, ctx: MetricContext, what: str) -> dict:
    reasons = []
    if gfs.n < ex.dim:
        reasons.append(f"n_gen={gfs.n} < feature dim {ex.dim}: covariance rank-deficient")
    if ref.n < ex.dim:
        reasons.append(f"n_ref={ref.n} < feature dim {ex.dim}: covariance rank-deficient")
    if not ex.weights_official:
        reasons.append("weights are not the published file (sha256 differs)")
    data_id = ctx.dataset.data_id(REFERENCE_SPLIT)
    return {
        **ex.describe(),
        "distance": what,
        "reference": f"{REFERENCE_SPLIT} split of {data_id} (n={ref.n}), statistics cached on disk",
        "reference_split": REFERENCE_SPLIT,
        "reference_data_id": data_id,
        "n_ref_used": ref.n,
        "n_gen_used": gfs.n,
        "stats_dtype": "float64",
        "pixels": "bench.pixels.to_uint8 of [-1, 1] samples",
        "comparable": not reasons,
        "comparable_reason": "; ".join(reasons),
    }


def _register_family(fam: Family) -> None:
    n = fam.names

    @metric(n["fd"], kinds=("image",), applies=fam.applies, check=fam.check)
    def _fd(gen, ctx: MetricContext) -> tuple[float, dict]:
        ex, gfs, ref = _feature_sets(fam, gen, ctx, fam.needs_features(ctx))
        value, info = frechet_distance_info(gfs.mu, gfs.sigma, ref.mu, ref.sigma)
        proto = _protocol(ex, gfs, ref, ctx, "Fréchet distance of Gaussian fits (float64, scipy sqrtm)")
        if fam.tag == "inception" and gfs.n != LITERATURE_N_GEN:
            proto["literature_protocol"] = f"no: n_gen={gfs.n}, the literature uses {LITERATURE_N_GEN}"
        return value, {**proto, **info}

    if "kid" in n:

        @metric(n["kid"], kinds=("image",), applies=fam.applies, check=fam.check)
        def _kid(gen, ctx: MetricContext) -> tuple[float, dict]:
            ex, gfs, ref = _feature_sets(fam, gen, ctx, True)
            mean, std, m = kid_from_features(gfs.feats, ref.feats)
            proto = _protocol(ex, gfs, ref, ctx, "KID: unbiased MMD², cubic polynomial kernel (torch-fidelity)")
            proto.update(kid_subsets=KID_SUBSETS, kid_subset_size=m, kid_seed=KID_SEED, kid_std=std)
            return mean, proto

    for which in ("precision", "recall"):
        if which not in n:
            continue

        def _pr(gen, ctx: MetricContext, which=which) -> tuple[float, dict]:
            ex, gfs, ref = _feature_sets(fam, gen, ctx, True)
            key = ("prc", ex.name, ex.weights_sha256)
            if key not in ctx.shared:
                ctx.shared[key] = precision_recall_from_features(gfs.feats, ref.feats)
            p, r = ctx.shared[key]
            proto = _protocol(ex, gfs, ref, ctx, f"improved {which}, k-NN manifolds (torch-fidelity)")
            proto.update(prc_neighborhood=PR_NEIGHBORHOOD)
            return (p if which == "precision" else r), proto

        metric(n[which], kinds=("image",), applies=fam.applies, check=fam.check, lower_is_better=False)(_pr)


# --- Inception (torch-fidelity engine, default) ----------------------------------------------


def _is_digits(spec: Any) -> bool:
    return spec.name == "digits"


def _inception_present(ev: Any) -> bool:
    from bench.metrics.inception import download_allowed, locate_inception_weights

    try:
        return locate_inception_weights(getattr(ev, "inception_weights", "") or None).path is not None or (
            download_allowed(ev)
        )
    except BenchError:
        return True  # a configured path that is wrong: let check() fail loudly


def _check_inception(dataset: Any, ev: Any, engine: str = "torch-fidelity", mode: str = "legacy_tensorflow") -> None:
    from bench.metrics.inception import inception_extractor

    if dataset.spec.kind != "image" or dataset.spec.shape[0] not in (1, 3):
        raise BenchError(f"Inception metrics need 1- or 3-channel images; {dataset.spec.name} is {dataset.spec.shape}")
    inception_extractor(ev, engine, mode)  # locates, verifies and loads (memoised); BenchError if unusable


def _build_inception(engine: str, mode: str = "legacy_tensorflow") -> Callable[[MetricContext], FeatureExtractor]:
    def build(ctx: MetricContext) -> FeatureExtractor:
        from bench.metrics.inception import inception_extractor

        return inception_extractor(ctx.eval_cfg, engine, mode)

    return build


_register_family(
    Family(
        "inception",
        _build_inception("torch-fidelity"),
        applies=lambda spec, ev: not _is_digits(spec) and _inception_present(ev),
        check=_check_inception,
        names={"fd": "fid", "kid": "kid", "precision": "precision", "recall": "recall"},
    )
)
for _mode, _name in (("legacy_tensorflow", "fid_cleanfid"), ("clean", "fid_clean")):
    _register_family(
        Family(
            "inception",
            _build_inception("clean-fid", _mode),
            applies=lambda spec, ev: False,  # cross-check engine: only when asked for in eval.metrics
            check=lambda ds, ev, _m=_mode: _check_inception(ds, ev, "clean-fid", _m),
            names={"fd": _name},
        )
    )

# --- digits classifier (FD_digits) -------------------------------------------------------------


def _check_digits(dataset: Any, ev: Any) -> None:
    if tuple(dataset.spec.shape) != (1, 8, 8):
        raise BenchError(f"FD_digits needs 1x8x8 digits images; {dataset.spec.name} is {tuple(dataset.spec.shape)}")


def _build_digits(ctx: MetricContext) -> FeatureExtractor:
    from bench.metrics.digits_classifier import DigitsExtractor

    return DigitsExtractor(ctx.cache_dir)


_register_family(
    Family(
        "digits",
        _build_digits,
        applies=lambda spec, ev: _is_digits(spec) and tuple(spec.shape) == (1, 8, 8),
        check=_check_digits,
        names={"fd": "fd_digits", "kid": "kid_digits", "precision": "precision_digits", "recall": "recall_digits"},
    )
)
