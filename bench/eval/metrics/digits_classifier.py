"""A small CNN trained by the suite on scikit-learn's 8x8 digits: its penultimate layer defines FD_digits.

Data: ``sklearn.datasets.load_digits`` (1,797 images, values 0..16) scaled to uint8 as
``floor(x * 255 / 16 + 0.5)`` and split exactly like the ``digits`` data set (datasets/images.py):
``torch.randperm(1797, generator=torch.Generator().manual_seed(0))``, the first 1,500 indices train, the
other 297 test; so the classifier never sees the test split. Training (bench/eval/metrics/classifier.py): Adam,
fixed seed, CPU, one thread, deterministic algorithms, a few seconds.
The weights file ships with the suite (``weights/digits-cnn-v1.pt``, sha256 d9e4cc18..., test accuracy
0.983; retraining gives other weights on other CPUs), its sha256 goes into every metric protocol; without it
the classifier is trained into ``<cache>/digits_classifier/digits-cnn-v1.pt``. The extractor is also
registered with torch-fidelity as ``bench-digits-cnn-v1`` (features ``penultimate`` and ``logits``).
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from bench.datasets.images import DIGITS_N_TRAIN, DIGITS_SPLIT_SEED, digits_split
from bench.eval.metrics import classifier as C
from bench.eval.metrics.features import default_cache_dir
from bench.pixels import from_uint8

VERSION = "digits-cnn-v1"
FEATURE_DIM = 64
TFID_NAME = "bench-digits-cnn-v1"
_MEMO = C.MEMO


class DigitsCNN(nn.Module):
    """conv3x3(32)-ReLU-conv3x3(64)-ReLU-maxpool2 -> fc(64) [features, pre-activation] -> ReLU -> fc(10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)

    def embed(self, u8: Tensor) -> Tensor:
        """Penultimate-layer features of uint8 (N, 1, 8, 8) images (pixels mapped to [-1, 1] first)."""
        x = from_uint8(u8)
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.fc1(x.flatten(1))

    def head(self, f: Tensor) -> Tensor:
        return self.fc2(F.relu(f))

    def forward(self, u8: Tensor) -> Tensor:
        return self.head(self.embed(u8))


RECIPE = C.Recipe(VERSION, (1, 8, 8), DigitsCNN, FEATURE_DIM, epochs=20, batch=64, lr=2e-3, min_accuracy=0.95,
                  tfid_name=TFID_NAME)  # fmt: skip
META = {"split_seed": DIGITS_SPLIT_SEED, "train_seed": RECIPE.seed, "epochs": RECIPE.epochs, "n_train": DIGITS_N_TRAIN}


def train_classifier() -> tuple[dict[str, Tensor], float]:
    """Train :class:`DigitsCNN` deterministically on the digits training split; returns (state dict, accuracy)."""
    return C.train_classifier(RECIPE, digits_split())


def classifier_path(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / "digits_classifier" / f"{VERSION}.pt"


def _load(path: Path) -> C.Classifier:
    return C.load_classifier(RECIPE, path)


def load_or_train(cache_dir: str | Path | None = None) -> C.Classifier:
    """The cached classifier, trained (and written atomically) when its file is absent."""
    return C.load_or_train(RECIPE, classifier_path(cache_dir), digits_split, META)


class DigitsExtractor(C.ClassifierExtractor):
    """FD_digits features: the classifier's 64-d penultimate layer on native 8x8 grayscale images."""

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        super().__init__(RECIPE, load_or_train(cache_dir))


C.register_with_torch_fidelity(RECIPE, load_or_train)
