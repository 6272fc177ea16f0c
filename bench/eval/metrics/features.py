"""Feature extractors for image metrics and the streaming features -> statistics stage.

One small interface (:class:`FeatureExtractor`): a name, the sha256 of its weights, and
``features(uint8 batch) -> float32 (N, D)``. Statistics are accumulated in float64 batch by batch
(Chan et al.'s parallel mean/covariance update), so no stage ever holds all images in memory.
Reference statistics are cached on disk under a key that holds everything that changes them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.core.checkpoint import atomic_write_bytes
from bench.errors import BenchError
from bench.pixels import to_uint8

CACHE_FORMAT = 1  # bump when the cache file layout changes
REF_SUBSET_SEED = 0  # which n_ref training images are used when n_ref < the split size
FEATURE_BATCH = 256
WHOLE_SPLIT = 0  # n_ref meaning "every image of the split" (the literature's reference)


class FeatureExtractor:
    """``features(u8)`` maps uint8 images (N, C, H, W) to float32 features (N, dim)."""

    name: str = ""  # e.g. "inception-v3-compat", "digits-cnn-v1"
    engine: str = ""  # "torch-fidelity", "clean-fid", "bench"
    resize: str = ""  # how images reach the network's input size (prose)
    resize_mode: str = ""  # the same as a short fixed tag: "tf1-bilinear-299", "pil-bicubic-299", "none"
    dim: int = 0
    weights_sha256: str = ""
    weights_official: bool = False  # sha256 equals the published file's
    batch_size: int = FEATURE_BATCH

    def features(self, u8: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        return {
            "extractor": self.name,
            "engine": self.engine,
            "weights_sha256": self.weights_sha256,
            "weights_official": self.weights_official,
            "feature_dim": self.dim,
            "resize": self.resize,
            "resize_mode": self.resize_mode,
        }


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$BENCH_CACHE_DIR`` if set, else ``results/cache`` (the folder ``bench run`` passes to metrics)."""
    return Path(os.environ.get("BENCH_CACHE_DIR") or "results/cache")


# ----------------------------------------------------------------------------------------------
# streaming statistics


class RunningStats:
    """Mean and covariance of feature rows, accumulated in float64 over batches.

    Merge rule (Chan, Golub & LeVeque 1979): with batch mean m_b, centred scatter S_b and
    delta = m_b - m, n' = n + n_b:  m' = m + delta n_b / n',  S' = S + S_b + delta delta^T n n_b / n'.
    The covariance is S / (n - 1) (unbiased, like ``np.cov``).
    """

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.mean = np.zeros(dim, dtype=np.float64)
        self.scatter = np.zeros((dim, dim), dtype=np.float64)

    def update(self, feats: Tensor | np.ndarray) -> None:
        x = feats.detach().cpu().double().numpy() if isinstance(feats, Tensor) else np.asarray(feats, np.float64)
        nb = x.shape[0]
        if nb == 0:
            return
        mb = x.mean(axis=0)
        xc = x - mb
        sb = xc.T @ xc
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.scatter = self.scatter + sb + np.outer(delta, delta) * (self.n * nb / n)
        self.n = n

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise BenchError(f"statistics need at least 2 samples (got {self.n})")
        return self.mean.copy(), self.scatter / (self.n - 1)


@dataclass
class FeatureSet:
    """Statistics (float64) of one image set, and its features (float32) when a metric needs them."""

    n: int
    mu: np.ndarray
    sigma: np.ndarray
    feats: Tensor | None = None
    info: dict = field(default_factory=dict)


@torch.no_grad()
def feature_set_from_u8_batches(
    batches, extractor: FeatureExtractor, keep_features: bool, n_total: int | None = None
) -> FeatureSet:
    """Stream uint8 batches through ``extractor``; keep float64 running stats (and features if asked).

    With ``n_total`` known, kept features go into one preallocated (n_total, dim) buffer: memory is
    exactly n x dim x 4 bytes (a list of small tensors interleaved with large activations fragments the heap).
    """
    stats = RunningStats(extractor.dim)
    kept: list[Tensor] = []
    buf = torch.empty(n_total, extractor.dim) if keep_features and n_total else None
    for u8 in batches:
        for chunk in u8.split(extractor.batch_size):
            f = extractor.features(chunk).float().cpu()
            if buf is not None and stats.n + len(f) <= len(buf):
                buf[stats.n : stats.n + len(f)] = f
            elif keep_features:
                if buf is not None:  # more rows than announced: fall back to the list
                    kept, buf = [buf[: stats.n]], None
                kept.append(f)
            stats.update(f)
    mu, sigma = stats.result()
    feats = None
    if keep_features:
        feats = buf[: stats.n] if buf is not None else torch.cat(kept)
    return FeatureSet(stats.n, mu, sigma, feats)


def generated_feature_set(gen: Any, extractor: FeatureExtractor, shared: dict, keep_features: bool) -> FeatureSet:
    """Features of generated samples (float [-1, 1] batches from ``gen.batches()``), computed once per
    (eval point, repeat): FID, KID and precision/recall of the same extractor share ``ctx.shared``."""
    key = ("features", extractor.name, extractor.weights_sha256, extractor.resize)
    fs = shared.get(key)
    if fs is None or (keep_features and fs.feats is None):
        fs = feature_set_from_u8_batches((to_uint8(x) for x in gen.batches()), extractor, keep_features, len(gen))
        shared[key] = fs
    return fs


# ----------------------------------------------------------------------------------------------
# reference statistics cache


def resolve_n_ref(n_ref: int | None, split_size: int) -> int:
    """The number of reference images actually used: ``None`` or ``0`` (:data:`WHOLE_SPLIT`) = the whole
    split, N > 0 = a seeded subset of N images (the whole split when N >= its size); negative: BenchError."""
    if n_ref is None or n_ref == WHOLE_SPLIT:
        return int(split_size)
    if n_ref < 0:
        raise BenchError(f"n_ref must be >= 0 (0 = the whole split), got {n_ref}")
    return int(min(n_ref, split_size))


def reference_key(dataset: Any, split: str, n_ref: int | None, extractor: FeatureExtractor) -> dict:
    """Everything that changes the reference statistics (PROTOCOL.md, FID section).

    ``n_ref`` in the key is the number of images actually used, so the whole split is keyed by its size
    (asking for 0, for the size or for more gives one key and one file) and a subset by its own size.
    """
    data_id = getattr(dataset, "data_id", None)
    if data_id is None:
        raise BenchError(f"data set {dataset.spec.name!r} has no data_id(split); cannot key reference statistics")
    return {
        "format": CACHE_FORMAT,
        "data_id": str(data_id(split)),
        "split": split,
        "resolution": list(dataset.spec.shape),
        "extractor": extractor.name,
        "engine": extractor.engine,
        "weights_sha256": extractor.weights_sha256,
        "resize": extractor.resize,
        "n_ref": resolve_n_ref(n_ref, len(_split_images(dataset, split))),
        "subset_seed": REF_SUBSET_SEED,
    }


def _key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _split_images(dataset: Any, split: str) -> Tensor:
    try:
        u8 = dataset.split_u8(split)
    except (KeyError, ValueError) as e:
        raise BenchError(f"data set {dataset.spec.name!r} has no {split!r} split for reference statistics") from e
    if u8.dtype != torch.uint8:
        raise BenchError(f"{dataset.spec.name}.split_u8({split!r}) must return uint8 images, got {u8.dtype}")
    return u8


def _reference_images(dataset: Any, split: str, n_ref: int | None) -> Tensor:
    u8 = _split_images(dataset, split)
    n = resolve_n_ref(n_ref, len(u8))
    if n < len(u8):  # a fixed, seeded subset; the whole split otherwise
        idx = torch.randperm(len(u8), generator=torch.Generator().manual_seed(REF_SUBSET_SEED))[:n]
        u8 = u8[idx.sort().values]
    return u8


# Loaded cache files, so that the metrics of every eval point (FID, KID, precision, recall) do not each
# re-read a whole-split file (50,000 x 2048 float32 features = 400 MB for CIFAR-10). Valid only while the
# file keeps its size and mtime; the last _REF_MEMO_MAX files are kept.
_REF_MEMO: dict[str, tuple[tuple[int, int], FeatureSet]] = {}
_REF_MEMO_MAX = 2


def _stat_sig(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _remember(path: Path, fs: FeatureSet) -> None:
    _REF_MEMO.pop(str(path), None)
    _REF_MEMO[str(path)] = (_stat_sig(path), fs)
    while len(_REF_MEMO) > _REF_MEMO_MAX:
        _REF_MEMO.pop(next(iter(_REF_MEMO)))


def reference_feature_set(
    dataset: Any, split: str, n_ref: int | None, extractor: FeatureExtractor, cache_dir: str | Path | None
) -> FeatureSet:
    """Reference statistics + features of ``split``, from the disk cache when the key matches exactly.

    ``n_ref``: ``0``/``None`` = the whole split (the default of every image metric), N > 0 = a seeded
    subset of N images. Cache file: ``<cache_dir>/refstats/<extractor>-<digest of key>.npz`` holding the
    key (JSON), mu, sigma (float64) and the features (float32); loaded with ``allow_pickle=False``;
    written atomically; kept in memory while the file is unchanged.
    """
    key = reference_key(dataset, split, n_ref, extractor)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "refstats" / f"{extractor.name}-{_key_digest(key)}.npz"
        if path.is_file():
            memo = _REF_MEMO.get(str(path))
            if memo is not None and memo[0] == _stat_sig(path):
                return replace(memo[1], info={"cache": "hit"})
            try:
                with np.load(path, allow_pickle=False) as z:
                    if json.loads(str(z["key"])) == key:
                        fs = FeatureSet(
                            int(z["n"]),
                            z["mu"].astype(np.float64),
                            z["sigma"].astype(np.float64),
                            torch.from_numpy(z["feats"].copy()),
                            {"cache": "hit"},
                        )
                        _remember(path, fs)
                        return fs
            except (OSError, ValueError, KeyError):
                pass  # unreadable or foreign file: recompute and overwrite
    u8 = _reference_images(dataset, split, n_ref)
    fs = feature_set_from_u8_batches(u8.split(extractor.batch_size), extractor, True, len(u8))
    fs.info = {"cache": "miss"}
    if path is not None:
        buf = io.BytesIO()
        np.savez(
            buf,
            key=np.array(json.dumps(key, sort_keys=True)),
            n=np.array(fs.n),
            mu=fs.mu,
            sigma=fs.sigma,
            feats=fs.feats.numpy(),
        )
        atomic_write_bytes(path, buf.getvalue())
        _remember(path, fs)
    return fs
