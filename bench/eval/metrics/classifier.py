"""Small CNN classifiers the suite trains itself on a data set's labelled training split; their penultimate layer
is the feature space of the suite's own Fréchet distance, KID and precision/recall (``fd_digits``, ``fd_fmnist``).

One recipe per classifier (:class:`Recipe`: network, epochs, batch, rate, the test accuracy it must reach).
Training is seeded and deterministic on one machine (a fixed seed, one CPU thread, deterministic algorithms,
Adam with a cosine rate), but not across machines: the CPU's kernels (vector width, cache blocking) change the
float rounding, and over 1,400 Adam steps the change grows (the same Fashion-MNIST recipe gave 197d2847... on two
machines of this project and 9d1f3e6b... on a third; the digits recipe two files as well). So the files of the
official data are committed in ``weights/``, their sha256 pinned in ``weights/SHA256SUMS``, and they always win:
only other data (test fakes, a user's own files) train a classifier, cached and written atomically. The file's
sha256 enters every metric protocol. Each classifier is also registered with
torch-fidelity (features ``penultimate`` and ``logits``), so its numbers can be cross-checked there.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.core.checkpoint import atomic_write_bytes
from bench.errors import BenchError
from bench.eval.metrics.features import FeatureExtractor, sha256_file

Split = tuple[Tensor, Tensor, Tensor, Tensor]  # x_train (uint8 N,C,H,W), y_train, x_test, y_test


@dataclass(frozen=True)
class Recipe:
    version: str  # the extractor's name in protocols, and the file's stem
    shape: tuple[int, int, int]  # C, H, W of its uint8 input
    build: Callable[[], nn.Module]  # a net with ``embed(u8) -> features`` and ``head(features) -> logits``
    feature_dim: int
    epochs: int
    batch: int
    lr: float
    min_accuracy: float  # test accuracy below this is an error, not a feature space
    tfid_name: str  # its torch-fidelity feature-extractor name
    seed: int = 0


def train_classifier(recipe: Recipe, data: Split) -> tuple[dict[str, Tensor], float]:
    """Train ``recipe``'s network deterministically on ``data``; returns (state dict, test accuracy)."""
    xtr, ytr, xte, yte = data
    was_det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)  # one thread: a fixed reduction order (and no oversubscription on busy CPUs)
        try:
            net = recipe.build()
            opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
            g = torch.Generator().manual_seed(recipe.seed)
            steps = recipe.epochs * ((len(xtr) + recipe.batch - 1) // recipe.batch)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
            for _ in range(recipe.epochs):
                for idx in torch.randperm(len(xtr), generator=g).split(recipe.batch):
                    loss = F.cross_entropy(net.head(net.embed(xtr[idx])), ytr[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
            net.eval()
            with torch.no_grad():
                pred = torch.cat([net.head(net.embed(x)).argmax(1) for x in xte.split(1024)])
                acc = float((pred == yte).float().mean())
        finally:
            torch.use_deterministic_algorithms(was_det)
            torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}, acc


@dataclass
class Classifier:
    net: nn.Module
    path: Path
    sha256: str
    test_accuracy: float


def load_classifier(recipe: Recipe, path: Path) -> Classifier:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("version") != recipe.version:
        raise BenchError(f"{path} is not a {recipe.version} classifier file; delete it to retrain")
    net = recipe.build()
    net.load_state_dict(payload["state_dict"])
    net.eval().requires_grad_(False)
    return Classifier(net, path, sha256_file(path), float(payload["test_accuracy"]))


MEMO: dict[str, Classifier] = {}
SHIPPED_DIR = Path(__file__).with_name("weights")  # the committed files of the official data, pinned


def shipped_file(name: str) -> Path | None:
    """The committed classifier file called ``name``, checked against its pinned sha256; None if none ships."""
    path = SHIPPED_DIR / name
    if not path.is_file():
        return None
    sums = SHIPPED_DIR / "SHA256SUMS"
    pins = dict(line.split()[::-1] for line in sums.read_text().splitlines() if line.strip()) if sums.is_file() else {}
    if pins.get(name) != sha256_file(path):
        raise BenchError(f"{path} does not match its sha256 in {sums}; restore it from the repository")
    return path


def load_or_train(recipe: Recipe, path: Path, data: Callable[[], Split], meta: dict[str, Any]) -> Classifier:
    """The committed file of this name (:func:`shipped_file`) if there is one, else the classifier cached at
    ``path``, trained on ``data()`` when absent and written atomically with ``meta`` (its provenance: seeds,
    epochs, which data) after the version, weights and test accuracy."""
    path = shipped_file(path.name) or path
    memo = MEMO.get(str(path))
    if memo is not None and path.is_file() and sha256_file(path) == memo.sha256:
        return memo
    if not path.is_file():
        sd, acc = train_classifier(recipe, data())
        if acc < recipe.min_accuracy:
            raise BenchError(f"{recipe.version} reached only {acc:.3f} test accuracy (< {recipe.min_accuracy})")
        buf = io.BytesIO()
        torch.save({"version": recipe.version, "state_dict": sd, "test_accuracy": acc, **meta}, buf)
        atomic_write_bytes(path, buf.getvalue())
    clf = load_classifier(recipe, path)
    MEMO[str(path)] = clf
    return clf


class ClassifierExtractor(FeatureExtractor):
    """Features: the classifier's penultimate layer on native-resolution uint8 images (no resize)."""

    engine = "bench"
    resize_mode = "none"
    batch_size = 2048

    def __init__(self, recipe: Recipe, clf: Classifier) -> None:
        c, h, w = recipe.shape
        self.recipe, self.clf = recipe, clf
        self.name, self.dim, self.resize = recipe.version, recipe.feature_dim, f"none (native {c}x{h}x{w})"
        self.weights_sha256 = clf.sha256
        self.weights_official = True  # the suite's own, reproducible by retraining
        self.test_accuracy = clf.test_accuracy

    @torch.no_grad()
    def features(self, u8: Tensor) -> Tensor:
        if u8.dtype != torch.uint8 or tuple(u8.shape[1:]) != self.recipe.shape:
            shape = "x".join(map(str, self.recipe.shape))
            raise BenchError(f"{self.name} needs uint8 (N, {shape}) images, got {u8.dtype} {tuple(u8.shape)}")
        return self.clf.net.embed(u8)

    def describe(self) -> dict:
        return {**super().describe(), "classifier_test_accuracy": self.test_accuracy}


def register_with_torch_fidelity(recipe: Recipe, default: Callable[[], Classifier]) -> None:
    """Register ``recipe``'s classifier as a torch-fidelity feature extractor (``feature_extractor=tfid_name``);
    ``feature_extractor_weights_path`` = its file (default: ``default()``, the suite's cached one)."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    class TorchFidelityClassifier(FeatureExtractorBase):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            path = feature_extractor_weights_path
            self.net = (load_classifier(recipe, Path(path)) if path else default()).net

        def forward(self, x):
            if x.dtype != torch.uint8:
                raise ValueError("expecting uint8 images")
            f = self.net.embed(x)
            out = {"penultimate": f, "logits": self.net.head(f)}
            return tuple(out[k] for k in self.features_list)

        @staticmethod
        def get_provided_features_list():
            return ("penultimate", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "penultimate", "kid": "penultimate", "prc": "penultimate"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, *recipe.shape, dtype=torch.uint8)

    if recipe.tfid_name not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(recipe.tfid_name, TorchFidelityClassifier)
