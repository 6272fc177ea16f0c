"""FD_fmnist (the suite's Fashion-MNIST classifier features): deterministic training on the labelled training
split, the cache keyed by the training data, batch-size independence, real-vs-real small and real-vs-noise large,
the automatic choice, the floor row of a run, and the grayscale Inception path marked not comparable. The data
are idx files the tests write (class k: a bright block at place k), so nothing needs the system package; one
test uses the real files when `apt-get install dataset-fashion-mnist` put them there."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_images import make, write_idx

from bench.core.config import EvalConfig
from bench.eval.metrics.registry import MetricContext, applicable_metrics
from bench.eval.sampling import TensorSamples
from bench.pixels import from_uint8
from bench.registry import METRICS

NAMES = ["fd_fmnist", "kid_fmnist", "precision_fmnist", "recall_fmnist"]


def separable_fmnist(root: Path, n_train: int = 2000, n_test: int = 300, seed: int = 0) -> Path:
    """Fashion-MNIST-format idx files whose 10 classes a small CNN separates in a few steps."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        lab = rng.integers(0, 10, n).astype(np.uint8)
        img = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(lab):
            r, c = 2 + 5 * (k // 5) + rng.integers(0, 3), 2 + 5 * (k % 5) + rng.integers(0, 2)
            img[i, r : r + 6, c : c + 4] = rng.integers(180, 256)
        write_idx(root / "FashionMNIST" / "raw" / f"{split}-images-idx3-ubyte", img)
        write_idx(root / "FashionMNIST" / "raw" / f"{split}-labels-idx1-ubyte", lab)
    return root


@pytest.fixture(scope="module")
def fake_ds(tmp_path_factory):
    torch.set_num_threads(1)
    return make("fashion-mnist", root=str(separable_fmnist(tmp_path_factory.mktemp("fmnist"))))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fmnist-cache")


def _ctx(ds, cache, n_gen):
    return MetricContext(None, ds, EvalConfig(n_gen=n_gen, metrics=NAMES), 0, cache)


def test_labels_follow_the_images(fake_ds):
    y = fake_ds.labels("train")
    assert (
        y.dtype == torch.int64
        and len(y) == len(fake_ds.split_u8("train")) == 2000
        and set(y.tolist()) <= set(range(10))
    )


def test_classifier_trains_deterministically_and_is_cached_per_training_data(fake_ds, cache, tmp_path):
    from bench.eval.metrics import classifier as C
    from bench.eval.metrics import fmnist_classifier as fc

    t0 = time.perf_counter()
    clf = fc.load_or_train(fake_ds, cache)
    trained_s = time.perf_counter() - t0
    assert clf.test_accuracy >= fc.RECIPE.min_accuracy
    assert clf.path == fc.classifier_path(fake_ds, cache) and fake_ds.data_id("train").endswith(clf.path.stem[-16:])
    assert clf.sha256 == hashlib.sha256(clf.path.read_bytes()).hexdigest()
    C.MEMO.clear()
    t0 = time.perf_counter()
    assert fc.load_or_train(fake_ds, cache).sha256 == clf.sha256 and time.perf_counter() - t0 < max(1.0, trained_s / 4)
    sd, acc = C.train_classifier(fc.RECIPE, (fake_ds.split_u8("train"), fake_ds.labels("train"),
                                             fake_ds.split_u8("test"), fake_ds.labels("test")))  # fmt: skip
    same = C.load_classifier(fc.RECIPE, clf.path).net.state_dict()
    assert acc == clf.test_accuracy and all(torch.equal(sd[k], same[k]) for k in sd)  # deterministic
    other = make("fashion-mnist", root=str(separable_fmnist(tmp_path / "other", seed=1)))
    assert fc.classifier_path(other, cache) != clf.path  # other training data, another file


def test_fd_fmnist_real_vs_real_small_noise_large_and_batch_size_independent(fake_ds, cache):
    test_imgs = from_uint8(fake_ds.split_u8("test"))
    vals, protos = {}, {}
    for batch in (64, 300):
        for n in NAMES:
            vals[(n, batch)], protos[n] = METRICS.get(n)(
                TensorSamples(test_imgs, batch=batch), _ctx(fake_ds, cache, 300)
            )
    for n in NAMES:
        assert vals[(n, 64)] == pytest.approx(vals[(n, 300)], rel=1e-6, abs=1e-9)
    proto = protos["fd_fmnist"]
    assert proto["extractor"] == "fmnist-cnn-v1" and proto["feature_dim"] == 128 and proto["resize_mode"] == "none"
    assert proto["comparable"] is True and proto["comparable_to"].startswith("this suite")
    assert proto["n_ref_used"] == proto["reference_split_size"] == 2000 and proto["classifier_test_accuracy"] >= 0.88
    noise = TensorSamples(torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    fd_noise, _ = METRICS.get("fd_fmnist")(noise, _ctx(fake_ds, cache, 300))
    assert vals[("fd_fmnist", 300)] < 0.05 * fd_noise
    assert vals[("precision_fmnist", 300)] > 0.7 and vals[("recall_fmnist", 300)] > 0.7


def test_automatic_choice(fake_ds, tmp_path):
    names = {m.name for m in applicable_metrics(fake_ds.spec, EvalConfig())}
    assert set(NAMES) <= names and "fid" not in names and "fd_digits" not in names
    padded = make("fashion-mnist", root=fake_ds.cfg.root, pad_to_32=True)
    assert not set(NAMES) & {m.name for m in applicable_metrics(padded.spec, EvalConfig())}
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="pad_to_32 pads it"):
        METRICS.get("fd_fmnist").check(padded, EvalConfig(metrics=["fd_fmnist"]))


def test_a_run_records_fd_fmnist_rows_and_the_floor(fake_ds, cache, bench_cli):
    sets = ["train.steps=2", "eval.n_gen=200", "eval.repeats=1", "eval.nfe=[1]", "eval.solvers=[euler]",
            "eval.timing=false", f"data.root={fake_ds.cfg.root}", "data.n_train=0"]  # fmt: skip
    args = ["run", "--method", "flow", "--dataset", "fashion-mnist", "--smoke"]
    code, _, err = bench_cli(*args, *[a for s in sets for a in ("--set", s)])  # trains its classifier in its cache
    assert code == 0, err
    (rec,) = bench_cli.records()
    assert set(NAMES) <= set(rec["rows"][0]["metrics"]) and set(NAMES) <= set(rec["reference_floor"])
    floor = rec["reference_floor"]["fd_fmnist"]
    assert "test" in floor["what"] and floor["mean"] < rec["rows"][0]["metrics"]["fd_fmnist"]["mean"]
    assert rec["rows"][0]["metrics"]["fd_fmnist"]["protocol"]["extractor"] == "fmnist-cnn-v1"
    json.dumps(rec)


def test_grayscale_inception_path_repeats_channels_and_is_not_literature_comparable():
    from bench.eval.metrics.fid import literature_protocol_check
    from bench.eval.metrics.inception import _rgb

    gray = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    rgb = _rgb(gray)
    assert rgb.shape == (2, 3, 28, 28) and all(torch.equal(rgb[:, c], gray[:, 0]) for c in range(3))
    reasons = literature_protocol_check({"input_channels": 1, "n_gen_used": 50000})
    assert any("grayscale" in r for r in reasons)
    assert not any("grayscale" in r for r in literature_protocol_check({"input_channels": 3, "n_gen_used": 50000}))


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz").is_file(),
    reason="the real files come with `apt-get install dataset-fashion-mnist`",
)
def test_real_fashion_mnist_classifier(tmp_path):
    from bench.eval.metrics import classifier as C
    from bench.eval.metrics import fmnist_classifier as fc

    ds = make("fashion-mnist", root=str(tmp_path / "data"))
    assert len(ds.labels("train")) == 60000 and len(ds.labels("test")) == 10000
    clf = fc.load_or_train(ds, tmp_path / "cache")  # the shipped file: the same features on every machine
    assert clf.path.parent == C.SHIPPED_DIR and clf.path.name == fc.classifier_path(ds).name
    assert clf.sha256.startswith("197d2847") and clf.test_accuracy >= 0.88
