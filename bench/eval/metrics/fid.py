"""Fréchet distance, KID and precision/recall on image features, in stages features -> statistics -> distance.

Registered metrics (kind "image"):

* Inception, torch-fidelity engine (default): ``fid``, ``kid``, ``precision``, ``recall``; chosen
  automatically when the weights file is present and the data set is neither ``digits`` nor 28x28
  ``fashion-mnist`` (there on request, ``eval.metrics``: grayscale is repeated to RGB, so never comparable with
  RGB literature numbers).
* Inception, clean-fid engine (cross-checks, only when asked for): ``fid_cleanfid`` (legacy_tensorflow)
  and ``fid_clean`` (clean).
* The suite's digits classifier: ``fd_digits``, ``kid_digits``, ``precision_digits``, ``recall_digits``;
  chosen automatically for the ``digits`` data set (never called FID).
* The suite's Fashion-MNIST classifier: ``fd_fmnist``, ``kid_fmnist``, ``precision_fmnist``, ``recall_fmnist``;
  chosen automatically for 28x28 ``fashion-mnist``.

Generated features are computed once per (eval point, repeat) and shared through ``ctx.shared``;
reference statistics come from the **whole training split** unless ``eval.n_ref_images`` asks for a seeded
subset (``eval.n_ref``, the fresh reference samples of points data, is not used here), and are cached on
disk (``bench.eval.metrics.features``).

Every protocol dict says whether its number is ``comparable`` and, if not, ``not_comparable_because``
(short reasons). Inception metrics are checked against the literature's protocol
(:func:`literature_protocol_check`); the suite's classifiers have no published counterpart, so their metrics
are checked against the suite's own fixed protocol (:func:`suite_protocol_check`) and say so in
``comparable_to``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.errors import BenchError
from bench.eval.metrics.features import (
    WHOLE_SPLIT,
    FeatureExtractor,
    FeatureSet,
    RunningStats,
    generated_feature_set,
    reference_feature_set,
)
from bench.eval.metrics.registry import MetricContext, metric

SQRTM_EPS = 1e-6
KID_SUBSETS = 100  # torch-fidelity defaults (kid_subsets, kid_subset_size, poly kernel degree 3, coef0 1)
KID_SUBSET_SIZE = 1000
KID_SEED = 2020
PR_NEIGHBORHOOD = 3
PR_REF_SEED = 0  # which reference rows precision/recall use when the reference is larger than n_gen
REFERENCE_SPLIT = "train"
LITERATURE_N_GEN = 50_000
LITERATURE_RESIZE_MODE = "tf1-bilinear-299"
# The Inception networks the suite runs: extractor name -> (engine, names in bench.eval.metrics.inception of the
# official file's sha256 and file name). clean-fid's "clean" mode runs the official network too; only its
# resize differs from the literature's.
INCEPTION_EXTRACTORS = {
    "inception-v3-compat": ("torch-fidelity", "TFID_SHA256", "TFID_FILENAME"),
    "clean-fid-inception-legacy_tensorflow": ("clean-fid", "CLEANFID_SHA256", "CLEANFID_FILENAME"),
    "clean-fid-inception-clean": ("clean-fid", "CLEANFID_SHA256", "CLEANFID_FILENAME"),
}
LITERATURE_SCOPE = (
    "published numbers of the literature protocol: Inception-v3 pool3 with the official weights "
    "(torch-fidelity inception-v3-compat or clean-fid legacy_tensorflow), TF1-bilinear resize to 299x299, "
    f"{LITERATURE_N_GEN:,} generated samples vs the whole training split"
)
PR_SCOPE_NOTE = (
    "; precision/recall on Inception pool3 features (as in ADM's evaluator): Kynkäänniemi et al. 2019 and "
    "StyleGAN2-ADA use VGG-16 features, so their precision/recall numbers are not comparable"
)
SUITE_SCOPE = (
    "this suite's own fixed protocol (an internal feature space with no published counterpart): other rows "
    "of the suite with the same n_gen and classifier sha256, never published FIDs"
)

# ----------------------------------------------------------------------------------------------
# pure numerics


def stats_from_features(feats: Tensor | np.ndarray, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) in float64, sigma = unbiased covariance; accumulated over row batches (streaming)."""
    rs = RunningStats(feats.shape[1])
    for i in range(0, feats.shape[0], batch):
        rs.update(feats[i : i + batch])
    return rs.result()


def _sqrtm_product(s1: np.ndarray, s2: np.ndarray) -> np.ndarray | None:
    import scipy.linalg  # here, not at import time: `bench list` must not pay for scipy

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


def pr_reference(ref: Tensor, n_gen: int) -> Tensor:
    """The reference rows precision/recall use: all of them when there are at most ``n_gen``, else a seeded subset
    of ``n_gen`` (improved precision/recall compares sets of equal size: k-NN radii shrink with the set's size,
    and the reference's own k-NN over a whole 60,000-image split costs minutes on a CPU)."""
    if len(ref) <= n_gen:
        return ref
    idx = torch.randperm(len(ref), generator=torch.Generator().manual_seed(PR_REF_SEED))[:n_gen]
    return ref[idx.sort().values]


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
# comparability: pure functions of a metric's protocol dict


def _reference_reasons(proto: dict) -> list[str]:
    split = proto.get("reference_split")
    out = [] if split == REFERENCE_SPLIT else [f"reference split {split or 'unknown'}, not {REFERENCE_SPLIT}"]
    n_ref, size = proto.get("n_ref_used"), proto.get("reference_split_size")
    if n_ref is None or size is None:
        out.append("reference size unknown")
    elif n_ref < size:
        out.append(f"reference: {n_ref}-image subset of {split}")
    elif n_ref != size:
        out.append(f"reference: n_ref {n_ref} != split size {size}")
    return out


def literature_protocol_check(proto: dict) -> list[str]:
    """Why the number of ``proto`` (a metric protocol dict) is not comparable with published FID/KID/precision/
    recall numbers; ``[]`` = comparable.

    The literature's protocol: ``n_gen_used`` = 50,000; the reference is the whole ``train`` split
    (``n_ref_used`` = ``reference_split_size``); the extractor is Inception-v3 pool3 as torch-fidelity's
    ``inception-v3-compat`` or clean-fid's ``legacy_tensorflow``; ``weights_sha256`` is the official file's
    (read from :mod:`bench.eval.metrics.inception` at call time); ``resize_mode`` is TF1 bilinear to 299x299.
    A missing key is a reason too (an incomplete protocol is never comparable).
    """
    from bench.eval.metrics import inception

    reasons = []
    n_gen = proto.get("n_gen_used")
    if n_gen is None:
        reasons.append("n_gen unknown")
    elif n_gen != LITERATURE_N_GEN:
        reasons.append(f"n_gen {n_gen} {'<' if n_gen < LITERATURE_N_GEN else '>'} {LITERATURE_N_GEN}")
    reasons += _reference_reasons(proto)
    if proto.get("input_channels") == 1:
        reasons.append("grayscale images repeated to 3 channels: not comparable with RGB literature numbers")
    name, engine = proto.get("extractor"), proto.get("engine")
    known = INCEPTION_EXTRACTORS.get(name)
    if known is None:
        reasons.append(
            f"extractor {name or 'unknown'} is not Inception-v3 pool3 "
            "(torch-fidelity inception-v3-compat or clean-fid legacy_tensorflow)"
        )
    else:
        want_engine, sha_attr, file_attr = known
        if engine != want_engine:
            reasons.append(f"extractor {name} run by {engine or 'an unknown engine'}, not {want_engine}")
        sha = proto.get("weights_sha256") or ""
        if not sha:
            reasons.append("weights sha256 unknown")
        elif sha != getattr(inception, sha_attr):
            reasons.append(f"weights sha256 {sha[:12]}… is not the official {getattr(inception, file_attr)}")
    mode = proto.get("resize_mode") or "unknown"
    if mode != LITERATURE_RESIZE_MODE:
        reasons.append(f"resize {mode}, not {LITERATURE_RESIZE_MODE}")
    return reasons


def suite_protocol_check(proto: dict, version: str = "") -> list[str]:
    """The same question for the suite's own feature spaces (``digits-cnn-v1``, ``fmnist-cnn-v1``), which have no
    literature protocol: the reference is the whole ``train`` split, the extractor the suite's classifier
    ``version`` (default: the digits one) on native pixels (no resize). n_gen is not fixed: tables group rows by
    n_gen, and FD metrics add their own rank-deficiency reason below the feature dimension. ``[]`` = comparable
    within the suite."""
    from bench.eval.metrics.digits_classifier import VERSION

    version = version or VERSION
    reasons = _reference_reasons(proto)
    name = proto.get("extractor")
    if name != version:
        reasons.append(f"extractor {name or 'unknown'} is not the suite's {version}")
    mode = proto.get("resize_mode") or "unknown"
    if mode != "none":
        reasons.append(f"resize {mode}, not none")
    return reasons


def rank_reasons(n_gen: int, n_ref: int, dim: int) -> list[str]:
    """Fréchet distances only: a Gaussian fit of fewer samples than feature dimensions is singular."""
    out = []
    if n_gen < dim:
        out.append(f"n_gen={n_gen} < feature dim {dim}: covariance rank-deficient")
    if n_ref < dim:
        out.append(f"n_ref={n_ref} < feature dim {dim}: covariance rank-deficient")
    return out


# ----------------------------------------------------------------------------------------------
# families of registered metrics (one extractor each)


class Family:
    """Metrics sharing one feature extractor: which data they apply to, how to build the extractor, and
    which protocol their numbers are checked against (``literature`` or ``suite``)."""

    def __init__(
        self,
        tag: str,
        build: Callable[[MetricContext], FeatureExtractor],
        applies: Callable[[Any, Any], bool],
        check: Callable[[Any, Any], None],
        names: dict[str, str],
        protocol: str = "literature",
        version: str = "",
    ) -> None:
        self.tag, self.build, self.applies, self.check, self.names = tag, build, applies, check, names
        if protocol not in ("literature", "suite"):
            raise ValueError(f"protocol must be 'literature' or 'suite', got {protocol!r}")
        self.protocol, self.version = protocol, version  # version: the suite extractor its numbers must come from

    def needs_features(self, ctx: MetricContext) -> bool:
        """Keep per-sample features only when a KID/PR metric of this family will run (else O(1) memory)."""
        from bench.eval.metrics.registry import applicable_metrics

        chosen = {m.name for m in applicable_metrics(ctx.dataset.spec, ctx.eval_cfg)}
        return bool(chosen & {v for k, v in self.names.items() if k != "fd"})

    def preflight(self, dataset: Any, ev: Any) -> None:
        reference_images_requested(ev)
        self.check(dataset, ev)


def reference_images_requested(ev: Any) -> int:
    """``eval.n_ref_images``: ``0`` (the default) = the whole training split, N >= 2 = a seeded N-image
    subset (never comparable); anything else is a BenchError. ``eval.n_ref`` is not read here."""
    n = getattr(ev, "n_ref_images", WHOLE_SPLIT)
    n = WHOLE_SPLIT if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n < 0 or n == 1:
        raise BenchError(f"eval.n_ref_images must be 0 (the whole training split) or >= 2, got {n!r}")
    return n


@dataclass
class _Sets:
    ex: FeatureExtractor
    gen: FeatureSet
    ref: FeatureSet
    split_size: int


def _feature_sets(fam: Family, gen: Any, ctx: MetricContext, keep: bool) -> _Sets:
    fam.preflight(ctx.dataset, ctx.eval_cfg)
    ex = fam.build(ctx)
    n_ref = reference_images_requested(ctx.eval_cfg)
    ref = reference_feature_set(ctx.dataset, REFERENCE_SPLIT, n_ref, ex, ctx.cache_dir)
    gfs = generated_feature_set(gen, ex, ctx.shared, keep)
    return _Sets(ex, gfs, ref, len(ctx.dataset.split_u8(REFERENCE_SPLIT)))


def _protocol(fam: Family, sets: _Sets, ctx: MetricContext, what: str, fd: bool = False) -> dict:
    ex, gfs, ref = sets.ex, sets.gen, sets.ref
    data_id = ctx.dataset.data_id(REFERENCE_SPLIT)
    if ref.n >= sets.split_size:
        reference = f"whole {REFERENCE_SPLIT} split of {data_id} (n={ref.n}), statistics cached on disk"
    else:
        reference = (
            f"seeded {ref.n}-image subset of the {REFERENCE_SPLIT} split of {data_id} ({sets.split_size} images), "
            "statistics cached on disk"
        )
    proto = {
        **ex.describe(),
        "distance": what,
        "reference": reference,
        "reference_split": REFERENCE_SPLIT,
        "reference_split_size": sets.split_size,
        "reference_data_id": data_id,
        "n_ref_used": ref.n,
        "n_gen_used": gfs.n,
        "stats_dtype": "float64",
        "pixels": "bench.pixels.to_uint8 of [-1, 1] samples",
        "input_channels": int(ctx.dataset.spec.shape[0]),
    }
    if fam.protocol == "literature":
        reasons, scope = literature_protocol_check(proto), LITERATURE_SCOPE
    else:
        reasons, scope = suite_protocol_check(proto, fam.version), SUITE_SCOPE
    if fd:
        reasons += rank_reasons(gfs.n, ref.n, ex.dim)
    proto.update(
        comparable=not reasons,
        not_comparable_because=reasons,
        comparable_reason="; ".join(reasons),
        comparable_to=scope,
    )
    return proto


def _register_family(fam: Family) -> None:
    n = fam.names

    @metric(n["fd"], kinds=("image",), applies=fam.applies, check=fam.preflight)
    def _fd(gen, ctx: MetricContext) -> tuple[float, dict]:
        sets = _feature_sets(fam, gen, ctx, fam.needs_features(ctx))
        value, info = frechet_distance_info(sets.gen.mu, sets.gen.sigma, sets.ref.mu, sets.ref.sigma)
        proto = _protocol(fam, sets, ctx, "Fréchet distance of Gaussian fits (float64, scipy sqrtm)", fd=True)
        return value, {**proto, **info}

    if "kid" in n:

        @metric(n["kid"], kinds=("image",), applies=fam.applies, check=fam.preflight)
        def _kid(gen, ctx: MetricContext) -> tuple[float, dict]:
            sets = _feature_sets(fam, gen, ctx, True)
            mean, std, m = kid_from_features(sets.gen.feats, sets.ref.feats)
            proto = _protocol(fam, sets, ctx, "KID: unbiased MMD², cubic polynomial kernel (torch-fidelity)")
            proto.update(kid_subsets=KID_SUBSETS, kid_subset_size=m, kid_seed=KID_SEED, kid_std=std)
            return mean, proto

    for which in ("precision", "recall"):
        if which not in n:
            continue

        def _pr(gen, ctx: MetricContext, which=which) -> tuple[float, dict]:
            sets = _feature_sets(fam, gen, ctx, True)
            key = ("prc", sets.ex.name, sets.ex.weights_sha256)
            ref = pr_reference(sets.ref.feats, len(sets.gen.feats))
            if key not in ctx.shared:
                ctx.shared[key] = precision_recall_from_features(sets.gen.feats, ref)
            p, r = ctx.shared[key]
            proto = _protocol(fam, sets, ctx, f"improved {which}, k-NN manifolds (torch-fidelity)")
            proto.update(prc_neighborhood=PR_NEIGHBORHOOD, prc_n_ref=len(ref), prc_ref_seed=PR_REF_SEED)
            if fam.protocol == "literature":
                proto["comparable_to"] += PR_SCOPE_NOTE
            return (p if which == "precision" else r), proto

        metric(n[which], kinds=("image",), applies=fam.applies, check=fam.preflight, lower_is_better=False)(_pr)


# --- Inception (torch-fidelity engine, default) ----------------------------------------------


def _is_digits(spec: Any) -> bool:
    return spec.name == "digits"


def _is_fmnist(spec: Any) -> bool:
    return spec.name == "fashion-mnist" and tuple(spec.shape) == (1, 28, 28)


def _inception_present(ev: Any) -> bool:
    from bench.eval.metrics.inception import download_allowed, locate_inception_weights

    try:
        return locate_inception_weights(getattr(ev, "inception_weights", "") or None).path is not None or (
            download_allowed(ev)
        )
    except BenchError:
        return True  # a configured path that is wrong: let check() fail loudly


def _check_inception(dataset: Any, ev: Any, engine: str = "torch-fidelity", mode: str = "legacy_tensorflow") -> None:
    from bench.eval.metrics.inception import inception_extractor

    if dataset.spec.kind != "image" or dataset.spec.shape[0] not in (1, 3):
        raise BenchError(f"Inception metrics need 1- or 3-channel images; {dataset.spec.name} is {dataset.spec.shape}")
    inception_extractor(ev, engine, mode)  # locates, verifies and loads (memoised); BenchError if unusable


def _build_inception(engine: str, mode: str = "legacy_tensorflow") -> Callable[[MetricContext], FeatureExtractor]:
    def build(ctx: MetricContext) -> FeatureExtractor:
        from bench.eval.metrics.inception import inception_extractor

        return inception_extractor(ctx.eval_cfg, engine, mode)

    return build


_register_family(
    Family(
        "inception",
        _build_inception("torch-fidelity"),
        applies=lambda spec, ev: not _is_digits(spec) and not _is_fmnist(spec) and _inception_present(ev),
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
    from bench.eval.metrics.digits_classifier import DigitsExtractor

    return DigitsExtractor(ctx.cache_dir)


_register_family(
    Family(
        "digits",
        _build_digits,
        applies=lambda spec, ev: _is_digits(spec) and tuple(spec.shape) == (1, 8, 8),
        check=_check_digits,
        names={"fd": "fd_digits", "kid": "kid_digits", "precision": "precision_digits", "recall": "recall_digits"},
        protocol="suite",
    )
)

# --- Fashion-MNIST classifier (FD_fmnist) ------------------------------------------------------


def _check_fmnist(dataset: Any, ev: Any) -> None:
    if not _is_fmnist(dataset.spec) or not hasattr(dataset, "labels"):
        raise BenchError(
            f"FD_fmnist needs the labelled 1x28x28 fashion-mnist data set; {dataset.spec.name} is "
            f"{tuple(dataset.spec.shape)}"
            + (" (data.pad_to_32 pads it)" if dataset.spec.name == "fashion-mnist" else "")
        )


def _build_fmnist(ctx: MetricContext) -> FeatureExtractor:
    from bench.eval.metrics.fmnist_classifier import FMNISTExtractor

    return FMNISTExtractor(ctx.dataset, ctx.cache_dir)


_register_family(
    Family(
        "fmnist",
        _build_fmnist,
        applies=lambda spec, ev: _is_fmnist(spec),
        check=_check_fmnist,
        names={"fd": "fd_fmnist", "kid": "kid_fmnist", "precision": "precision_fmnist", "recall": "recall_fmnist"},
        protocol="suite",
        version="fmnist-cnn-v1",
    )
)
