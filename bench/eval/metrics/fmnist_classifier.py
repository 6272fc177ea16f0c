"""A small CNN trained by the suite on the Fashion-MNIST training split: its penultimate layer defines FD_fmnist
(with KID and precision/recall in the same features), the suite's own metric for 28x28 Fashion-MNIST, which needs
no download (the Inception weights are not on this project's machines).

Network: conv3x3(32)-ReLU-maxpool2 (14x14) - conv3x3(64)-ReLU-maxpool2 (7x7) - fc(128) [features,
pre-activation] - ReLU - fc(10). Training (bench/eval/metrics/classifier.py): the whole training split (60,000 images
with their labels), 3 epochs, batch 128, Adam 1e-3 with a cosine rate, fixed seed, one CPU thread, deterministic
algorithms; its accuracy on the 10,000 test images goes into the file and every protocol (it must reach 0.88).
The file is named per training data, ``fmnist-cnn-v1-<digest>.pt`` (digest = the content hash of the uint8
training split). The official files' classifier ships with the suite (``weights/``, sha256 197d2847..., test
accuracy 0.8954), since retraining gives other weights on other CPUs; other data (e.g. test-written files) train
their own, cached as ``<cache>/fmnist_classifier/fmnist-cnn-v1-<digest>.pt`` and never reused for other data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import BenchError
from bench.eval.metrics import classifier as C
from bench.eval.metrics.features import default_cache_dir
from bench.pixels import from_uint8

VERSION = "fmnist-cnn-v1"
FEATURE_DIM = 128
TFID_NAME = "bench-fmnist-cnn-v1"


class FMNISTCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)

    def embed(self, u8: Tensor) -> Tensor:
        """Penultimate-layer features of uint8 (N, 1, 28, 28) images (pixels mapped to [-1, 1] first)."""
        x = F.max_pool2d(F.relu(self.conv1(from_uint8(u8))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc1(x.flatten(1))

    def head(self, f: Tensor) -> Tensor:
        return self.fc2(F.relu(f))

    def forward(self, u8: Tensor) -> Tensor:
        return self.head(self.embed(u8))


RECIPE = C.Recipe(VERSION, (1, 28, 28), FMNISTCNN, FEATURE_DIM, epochs=3, batch=128, lr=1e-3, min_accuracy=0.88,
                  tfid_name=TFID_NAME)  # fmt: skip


def classifier_path(dataset: Any, cache_dir: str | Path | None = None) -> Path:
    digest = dataset.data_id("train").rsplit(":", 1)[-1]
    root = Path(cache_dir if cache_dir is not None else default_cache_dir())
    return root / "fmnist_classifier" / f"{VERSION}-{digest}.pt"


def load_or_train(dataset: Any, cache_dir: str | Path | None = None) -> C.Classifier:
    """The classifier of ``dataset``'s training split (a Fashion-MNIST data set with labels), cached."""
    if tuple(dataset.spec.shape) != RECIPE.shape or not hasattr(dataset, "labels"):
        raise BenchError(f"FD_fmnist needs labelled 1x28x28 Fashion-MNIST images; {dataset.spec.name} is not")

    def data() -> C.Split:
        return (dataset.split_u8("train"), dataset.labels("train"), dataset.split_u8("test"), dataset.labels("test"))

    meta = {"train_seed": RECIPE.seed, "epochs": RECIPE.epochs, "train_data": dataset.data_id("train")}
    return C.load_or_train(RECIPE, classifier_path(dataset, cache_dir), data, meta)


class FMNISTExtractor(C.ClassifierExtractor):
    """FD_fmnist features: the classifier's 128-d penultimate layer on native 28x28 grayscale images."""

    def __init__(self, dataset: Any, cache_dir: str | Path | None = None) -> None:
        super().__init__(RECIPE, load_or_train(dataset, cache_dir))


def _no_default() -> C.Classifier:
    raise BenchError(f"{TFID_NAME}: pass feature_extractor_weights_path (a cached {VERSION} file)")


C.register_with_torch_fidelity(RECIPE, _no_default)
