"""When an image metric is `comparable`: the reference statistics of the whole training split by default
(whatever eval.n_ref says), the cache key of the whole split, every reason of `literature_protocol_check`
and `suite_protocol_check`, and the 50,000 / 50,000 protocol with the official weights hash passing end to
end (the hash constant is monkeypatched: the real weights file is not on this machine)."""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest
import torch
from bench.datasets.base import DataSpec
from test_images import fake_cifar, make

from bench.core.config import EvalConfig
from bench.errors import BenchError
from bench.eval.metrics import MetricContext, inception
from bench.eval.metrics import fid as F
from bench.eval.metrics.features import (
    FeatureExtractor,
    reference_feature_set,
    reference_key,
    resolve_n_ref,
)
from bench.eval.sampling import TensorSamples
from bench.pixels import from_uint8
from bench.registry import METRICS

FAKE_OFFICIAL = "c" * 64  # stands in for the official sha256 wherever a test monkeypatches the constant


def _ev(n_gen: int, metrics: list[str], n_ref_images: int | None = None, **kw) -> EvalConfig:
    ev = EvalConfig(n_gen=n_gen, metrics=metrics, **kw)
    if n_ref_images is not None:  # the key the lead adds to EvalConfig (read with getattr until then)
        ev.n_ref_images = n_ref_images
    return ev


class MemImages:
    """The image-data-set interface the metrics use (split_u8, data_id, spec) over in-memory uint8 tensors."""

    def __init__(self, train: torch.Tensor, test: torch.Tensor, name: str = "mem") -> None:
        self.spec = DataSpec(name, "image", tuple(train.shape[1:]), exact_reference=False)
        self._splits = {"train": train, "test": test}

    def split_u8(self, split: str) -> torch.Tensor:
        return self._splits[split]

    def data_id(self, split: str) -> str:
        x = self._splits[split]
        return f"{self.spec.name}:{split}:n{len(x)}:{hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16]}"


class CountingProj(FeatureExtractor):
    """Cheap features (pixels and their squares, 2 x C*H*W dims); counts the images it saw."""

    name, engine, resize, resize_mode = "proj-test", "test", "none", "none"

    def __init__(self, in_dim: int) -> None:
        self.dim, self.weights_sha256, self.batch_size, self.seen = 2 * in_dim, "w" * 64, 4096, 0

    def features(self, u8: torch.Tensor) -> torch.Tensor:
        self.seen += len(u8)
        x = from_uint8(u8).flatten(1)
        return torch.cat([x, x * x], 1)


class FakeInception(CountingProj):
    """Claims the identity of torch-fidelity's extractor; used where the real network is too slow (50,000
    images) and the test is about the protocol plumbing, not the features."""

    name, engine, resize_mode = "inception-v3-compat", "torch-fidelity", "tf1-bilinear-299"
    resize = "tf1-bilinear to 299x299 inside torch-fidelity (grayscale repeated to RGB)"

    def __init__(self, in_dim: int, sha: str) -> None:
        super().__init__(in_dim)
        self.weights_sha256, self.weights_official = sha, sha == inception.TFID_SHA256


# ---------------------------------------------------------------------------------------------- pure checks


def _literature_proto(**over) -> dict:
    """The protocol dict of a torch-fidelity FID at the literature's protocol (the real official sha256)."""
    p = {
        "extractor": "inception-v3-compat",
        "engine": "torch-fidelity",
        "weights_sha256": inception.TFID_SHA256,
        "resize_mode": "tf1-bilinear-299",
        "n_gen_used": 50_000,
        "n_ref_used": 50_000,
        "reference_split": "train",
        "reference_split_size": 50_000,
    }
    p.update(over)
    return {k: v for k, v in p.items() if v is not None}


def test_literature_protocol_with_official_hashes_is_comparable():
    assert F.literature_protocol_check(_literature_proto()) == []
    legacy = _literature_proto(
        extractor="clean-fid-inception-legacy_tensorflow", engine="clean-fid", weights_sha256=inception.CLEANFID_SHA256
    )
    assert F.literature_protocol_check(legacy) == []
    # any data set: the whole train split, whatever its size (MNIST: 60,000)
    assert F.literature_protocol_check(_literature_proto(n_ref_used=60_000, reference_split_size=60_000)) == []


EXTRACTOR_REASON = (
    "extractor {} is not Inception-v3 pool3 (torch-fidelity inception-v3-compat or clean-fid legacy_tensorflow)"
)


@pytest.mark.parametrize(
    "over,reasons",
    [
        ({"n_gen_used": 2048}, ["n_gen 2048 < 50000"]),
        ({"n_gen_used": 60_000}, ["n_gen 60000 > 50000"]),
        ({"n_gen_used": None}, ["n_gen unknown"]),
        ({"n_ref_used": 5000}, ["reference: 5000-image subset of train"]),
        ({"n_ref_used": 60_000}, ["reference: n_ref 60000 != split size 50000"]),
        ({"n_ref_used": None}, ["reference size unknown"]),
        ({"reference_split_size": None}, ["reference size unknown"]),
        ({"reference_split": "test", "n_ref_used": 10_000, "reference_split_size": 10_000},
         ["reference split test, not train"]),
        ({"reference_split": None}, ["reference split unknown, not train"]),
        ({"extractor": "dinov2-vitl14", "resize_mode": "none"},
         [EXTRACTOR_REASON.format("dinov2-vitl14"), "resize none, not tf1-bilinear-299"]),
        ({"extractor": None}, [EXTRACTOR_REASON.format("unknown")]),
        ({"engine": "clean-fid"}, ["extractor inception-v3-compat run by clean-fid, not torch-fidelity"]),
        ({"engine": None}, ["extractor inception-v3-compat run by an unknown engine, not torch-fidelity"]),
        ({"weights_sha256": ""}, ["weights sha256 unknown"]),
        ({"weights_sha256": None}, ["weights sha256 unknown"]),
        ({"weights_sha256": "ab" * 32},
         ["weights sha256 abababababab… is not the official weights-inception-2015-12-05-6726825d.pth"]),
        ({"extractor": "clean-fid-inception-legacy_tensorflow", "engine": "clean-fid"},  # torch-fidelity's hash
         [f"weights sha256 {inception.TFID_SHA256[:12]}… is not the official inception-2015-12-05.pt"]),
        ({"extractor": "clean-fid-inception-clean", "engine": "clean-fid", "resize_mode": "pil-bicubic-299",
          "weights_sha256": inception.CLEANFID_SHA256},
         ["resize pil-bicubic-299, not tf1-bilinear-299"]),
        ({"resize_mode": None}, ["resize unknown, not tf1-bilinear-299"]),
        # today's CIFAR-10 recipe before this change: 2048 samples, a 5,000-image subset, unofficial weights
        ({"n_gen_used": 2048, "n_ref_used": 5000, "weights_sha256": "0" * 64},
         ["n_gen 2048 < 50000", "reference: 5000-image subset of train",
          "weights sha256 000000000000… is not the official weights-inception-2015-12-05-6726825d.pth"]),
    ],
)  # fmt: skip
def test_literature_protocol_reasons(over, reasons):
    assert F.literature_protocol_check(_literature_proto(**over)) == reasons


def test_literature_check_reads_the_official_hash_at_call_time(monkeypatch):
    monkeypatch.setattr(inception, "TFID_SHA256", FAKE_OFFICIAL)
    assert F.literature_protocol_check(_literature_proto(weights_sha256=FAKE_OFFICIAL)) == []
    real = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
    assert F.literature_protocol_check(_literature_proto(weights_sha256=real)) == [
        "weights sha256 6726825d0af5… is not the official weights-inception-2015-12-05-6726825d.pth"
    ]


def _suite_proto(**over) -> dict:
    p = {
        "extractor": "digits-cnn-v1",
        "engine": "bench",
        "resize_mode": "none",
        "n_gen_used": 297,
        "n_ref_used": 1500,
        "reference_split": "train",
        "reference_split_size": 1500,
    }
    p.update(over)
    return {k: v for k, v in p.items() if v is not None}


@pytest.mark.parametrize(
    "over,reasons",
    [
        ({}, []),
        ({"n_gen_used": 40}, []),  # n_gen is not fixed by the suite: tables group rows by n_gen
        ({"n_ref_used": 500}, ["reference: 500-image subset of train"]),
        ({"reference_split": "test", "n_ref_used": 297, "reference_split_size": 297},
         ["reference split test, not train"]),
        ({"extractor": "inception-v3-compat"}, ["extractor inception-v3-compat is not the suite's digits-cnn-v1"]),
        ({"resize_mode": "tf1-bilinear-299"}, ["resize tf1-bilinear-299, not none"]),
    ],
)  # fmt: skip
def test_suite_protocol_reasons(over, reasons):
    assert F.suite_protocol_check(_suite_proto(**over)) == reasons


def test_rank_reasons_only_below_the_feature_dimension():
    assert F.rank_reasons(2048, 2048, 2048) == []
    assert F.rank_reasons(2047, 10, 2048) == [
        "n_gen=2047 < feature dim 2048: covariance rank-deficient",
        "n_ref=10 < feature dim 2048: covariance rank-deficient",
    ]


def test_resolve_n_ref_and_the_n_ref_images_option():
    assert resolve_n_ref(0, 50_000) == resolve_n_ref(None, 50_000) == 50_000
    assert resolve_n_ref(5000, 50_000) == 5000 and resolve_n_ref(70_000, 50_000) == 50_000
    with pytest.raises(BenchError, match="n_ref must be >= 0"):
        resolve_n_ref(-1, 10)
    assert F.reference_images_requested(EvalConfig()) == 0  # default (with or without the config key)
    assert F.reference_images_requested(_ev(10, [], n_ref_images=5000)) == 5000
    for bad in (-1, 1, 2.5, True):
        with pytest.raises(BenchError, match="eval.n_ref_images must be 0"):
            F.reference_images_requested(_ev(10, [], n_ref_images=bad))


# ---------------------------------------------------------------------------------------------- whole split


def test_cache_key_of_the_whole_split_on_fake_cifar(tmp_path):
    """The real CIFAR-10 loader on fake python batches (20 train images): 0, the split size and more are one
    key (n_ref = 20) and one file; a subset is another key."""
    fake_cifar(tmp_path / "data")
    ds = make("cifar10", root=str(tmp_path / "data"), verify=False)
    assert len(ds.split_u8("train")) == 20
    ex = CountingProj(3 * 32 * 32)
    keys = [reference_key(ds, "train", n, ex) for n in (0, None, 20, 50_000)]
    assert all(k == keys[0] for k in keys) and keys[0]["n_ref"] == 20
    sub = reference_key(ds, "train", 5, ex)
    assert sub["n_ref"] == 5 and {k: v for k, v in sub.items() if k != "n_ref"} == {
        k: v for k, v in keys[0].items() if k != "n_ref"
    }
    cache = tmp_path / "cache"
    whole = reference_feature_set(ds, "train", 0, ex, cache)
    assert whole.n == 20 and ex.seen == 20 and whole.info["cache"] == "miss"
    mu, _ = F.stats_from_features(ex.features(ds.split_u8("train")))
    np.testing.assert_allclose(whole.mu, mu, rtol=1e-12)
    ex.seen = 0
    for n in (20, 50_000, 0):
        assert reference_feature_set(ds, "train", n, ex, cache).info["cache"] == "hit"
    assert ex.seen == 0
    small = reference_feature_set(ds, "train", 5, ex, cache)
    assert small.n == 5 and ex.seen == 5 and small.info["cache"] == "miss"
    assert len(list((cache / "refstats").glob("*.npz"))) == 2


def test_loaded_reference_is_reused_until_the_file_changes(tmp_path, monkeypatch):
    ds = MemImages(torch.randint(0, 256, (30, 1, 4, 4), dtype=torch.uint8), torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    ex = CountingProj(16)
    a = reference_feature_set(ds, "train", 0, ex, tmp_path)
    loads = []
    orig = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(1) or orig(*a, **k))
    b = reference_feature_set(ds, "train", 0, ex, tmp_path)
    assert not loads and b.info["cache"] == "hit" and b.feats is a.feats  # from memory: no 2nd read
    (path,) = (tmp_path / "refstats").glob("*.npz")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "rewritten": another mtime, read again
    c = reference_feature_set(ds, "train", 0, ex, tmp_path)
    assert loads and c.info["cache"] == "hit" and ex.seen == 30
    np.testing.assert_array_equal(c.sigma, a.sigma)


def _fake_inception(monkeypatch, in_dim: int, sha: str) -> FakeInception:
    ex = FakeInception(in_dim, sha)
    monkeypatch.setattr(inception, "inception_extractor", lambda ev=None, engine="torch-fidelity", mode="": ex)
    return ex


def test_fid_at_50000_vs_whole_50000_split_with_official_hash_is_comparable(tmp_path, monkeypatch):
    """The literature's shape end to end through the registered metrics: 50,000 generated samples vs the whole
    50,000-image training split, official hash (monkeypatched constant), eval.n_ref left at its default."""
    monkeypatch.setattr(inception, "TFID_SHA256", FAKE_OFFICIAL)
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (50_000, 3, 2, 2), dtype=torch.uint8, generator=g)  # RGB, as the literature's
    ds = MemImages(train, torch.randint(0, 256, (10, 3, 2, 2), dtype=torch.uint8, generator=g), name="cifar-shaped")
    gen = TensorSamples(torch.rand(50_000, 3, 2, 2, generator=g) * 2 - 1, batch=10_000)
    ex = _fake_inception(monkeypatch, 12, FAKE_OFFICIAL)
    ev = _ev(50_000, ["fid", "kid"])
    assert ev.n_ref == 5000  # the points-data default is not what image metrics use
    ctx = MetricContext(None, ds, ev, 0, tmp_path)
    for name in ("fid", "kid"):
        value, proto = METRICS.get(name)(gen, ctx)
        assert np.isfinite(value)
        assert proto["n_ref_used"] == proto["reference_split_size"] == 50_000 and proto["n_gen_used"] == 50_000
        assert proto["reference"].startswith("whole train split of cifar-shaped:train:n50000:")
        assert proto["comparable"] is True and proto["not_comparable_because"] == [] and not proto["comparable_reason"]
        assert proto["comparable_to"] == F.LITERATURE_SCOPE
        assert proto["weights_sha256"] == FAKE_OFFICIAL and proto["resize_mode"] == "tf1-bilinear-299"
    assert ex.seen == 100_000  # 50,000 generated once for both metrics + the whole split once (then cached)

    # the same run asking for a 5,000-image reference subset
    ctx = MetricContext(None, ds, _ev(50_000, ["fid"], n_ref_images=5000), 0, tmp_path)
    _, proto = METRICS.get("fid")(gen, ctx)
    assert proto["n_ref_used"] == 5000 and proto["reference"].startswith("seeded 5000-image subset of the train")
    assert proto["comparable"] is False
    assert proto["not_comparable_because"] == ["reference: 5000-image subset of train"]

    # the official file is another one: the same numbers are not comparable
    monkeypatch.setattr(inception, "TFID_SHA256", "d" * 64)
    ctx = MetricContext(None, ds, ev, 0, tmp_path)
    _, proto = METRICS.get("fid")(gen, ctx)
    assert proto["not_comparable_because"] == [
        "weights sha256 cccccccccccc… is not the official weights-inception-2015-12-05-6726825d.pth"
    ]


def test_n_ref_images_is_checked_before_training(monkeypatch):
    ds = MemImages(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    _fake_inception(monkeypatch, 3 * 8 * 8, FAKE_OFFICIAL)
    METRICS.get("fid").check(ds, _ev(10, ["fid"]))
    with pytest.raises(BenchError, match="eval.n_ref_images must be 0"):
        METRICS.get("fid").check(ds, _ev(10, ["fid"], n_ref_images=1))


# ---------------------------------------------------------------------------------------------- real loaders


@pytest.fixture(scope="module")
def random_inception_file(tmp_path_factory):
    """torch-fidelity's inception-v3-compat architecture with seeded random weights, saved under the official
    file name (test_fid.py builds the same network)."""
    from test_fid import _random_inception

    path = tmp_path_factory.mktemp("incep-protocol") / inception.TFID_FILENAME
    torch.save(_random_inception().state_dict(), path)
    return path


def test_inception_on_fake_cifar_whole_split_only_n_gen_fails(random_inception_file, tmp_path, monkeypatch):
    """Real route: the CIFAR-10 loader on fake batches (5 train images), the random Inception file with its
    sha256 declared official, eval.n_ref = 2: the reference is still the whole split, and the one reason left is
    n_gen."""
    path = tmp_path / inception.TFID_FILENAME
    shutil.copyfile(random_inception_file, path)  # a path of its own: the verification memo starts empty
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(inception, "TFID_SHA256", sha)
    monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", str(path))
    fake_cifar(tmp_path / "data", per_batch=1)
    ds = make("cifar10", root=str(tmp_path / "data"), verify=False)
    ev = _ev(2, ["kid"], n_ref=2)
    METRICS.get("kid").check(ds, ev)
    assert inception.inception_extractor(ev).weights_official
    gen = TensorSamples(from_uint8(ds.split_u8("test").repeat(2, 1, 1, 1)))
    value, proto = METRICS.get("kid")(gen, MetricContext(None, ds, ev, 0, tmp_path / "cache"))
    assert np.isfinite(value) and proto["weights_official"] and proto["weights_sha256"] == sha
    assert proto["n_ref_used"] == proto["reference_split_size"] == 5 and proto["reference_data_id"].startswith(
        "cifar10:train:3x32x32:n5:"
    )
    assert proto["not_comparable_because"] == ["n_gen 2 < 50000"] and proto["comparable"] is False


@pytest.fixture
def digits_ds_with_random_classifier(tmp_path, monkeypatch):
    """The real digits data set and a DigitsCNN file with random weights in the classifier cache, the shipped file
    hidden (no training: the protocol does not depend on what the features are)."""
    from bench.eval.metrics import classifier as C
    from bench.eval.metrics import digits_classifier as dc

    images = pytest.importorskip("bench.datasets.images")
    monkeypatch.setattr(C, "SHIPPED_DIR", tmp_path / "none")
    torch.manual_seed(0)
    payload = {"version": dc.VERSION, "state_dict": dc.DigitsCNN().state_dict(), "test_accuracy": 0.0}
    dc.classifier_path(tmp_path).parent.mkdir(parents=True)
    torch.save(payload, dc.classifier_path(tmp_path))
    return images.Digits(images.DigitsConfig()), tmp_path


def test_fd_digits_is_comparable_by_the_suite_protocol(digits_ds_with_random_classifier):
    ds, cache = digits_ds_with_random_classifier
    gen = TensorSamples(from_uint8(ds.split_u8("test")))
    ctx = MetricContext(None, ds, _ev(297, ["fd_digits", "kid_digits"], n_ref=100), 0, cache)
    for name in ("fd_digits", "kid_digits"):
        _, proto = METRICS.get(name)(gen, ctx)
        assert proto["n_ref_used"] == proto["reference_split_size"] == 1500  # eval.n_ref = 100 is not used
        assert proto["comparable"] is True and proto["not_comparable_because"] == []
        assert proto["comparable_to"] == F.SUITE_SCOPE and proto["resize_mode"] == "none"
    ctx = MetricContext(None, ds, _ev(40, ["fd_digits", "kid_digits"], n_ref_images=500), 0, cache)
    few = TensorSamples(from_uint8(ds.split_u8("test")[:40]))
    _, fd = METRICS.get("fd_digits")(few, ctx)
    _, kid = METRICS.get("kid_digits")(few, ctx)
    assert fd["not_comparable_because"] == [
        "reference: 500-image subset of train",
        "n_gen=40 < feature dim 64: covariance rank-deficient",
    ]
    assert kid["not_comparable_because"] == ["reference: 500-image subset of train"]  # no covariance in KID
