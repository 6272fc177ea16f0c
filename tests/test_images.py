"""Image data sets through their real loaders, on tiny fakes in the real on-disk formats; sample grids."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from urllib.error import URLError

import bench.datasets  # noqa: F401  (registers)
import numpy as np
import pytest
import torch
from bench.methods.base import EvalPoint
from PIL import Image

from bench.core.noise import seeded_noise
from bench.errors import BenchError
from bench.eval.grids import GridTarget, grid_image, save_grid, write_eval_grid
from bench.pixels import to_uint8
from bench.registry import DATASETS


def make(name: str, **cfg):
    cls = DATASETS.get(name)
    return cls(cls.Config(**cfg), 0)


# ---------------------------------------------------------------------------------------------- fakes


def write_idx(path: Path, arr: np.ndarray) -> None:
    """The idx format: big-endian magic (0, 0, type 0x08 = uint8, ndim), big-endian dims, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def fake_mnist(root: Path, folder: str = "MNIST", n_train: int = 12, n_test: int = 5, gz: bool = False):
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        img = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        lab = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, arr in (("images-idx3", img), ("labels-idx1", lab)):
            p = root / folder / "raw" / f"{split}-{kind}-ubyte"
            write_idx(p, arr)
            if gz:
                p.with_name(p.name + ".gz").write_bytes(gzip.compress(p.read_bytes()))
                p.unlink()
        out[split] = img
    return out


def fake_cifar(root: Path, per_batch: int = 4) -> dict[str, np.ndarray]:
    """CIFAR-10 python batches: pickled dicts with 'data' (N x 3072 uint8, R then G then B planes)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        entry = {"batch_label": name, "labels": [int(v) for v in rng.integers(0, 10, per_batch)], "data": data}
        entry["filenames"] = [f"img{i}.png" for i in range(per_batch)]
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        out[name] = data
    meta = {"num_cases_per_batch": per_batch, "label_names": ["airplane"] * 10, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out


# ---------------------------------------------------------------------------------------------- digits


def test_digits_split_shapes_ranges_and_identity():
    ds = make("digits")
    assert ds.spec.kind == "image" and ds.spec.shape == (1, 8, 8) and not ds.spec.exact_reference
    tr, te = ds.split_u8("train"), ds.split_u8("test")
    assert tr.dtype == torch.uint8 and tr.shape == (1500, 1, 8, 8) and te.shape == (297, 1, 8, 8)
    assert tr.max() == 255 and tr.min() == 0
    # the split is a partition of sklearn's 1797 images, fixed across instances and run seeds
    from sklearn.datasets import load_digits

    allimg = torch.from_numpy(np.floor(load_digits().images * 255 / 16 + 0.5).astype(np.uint8))[:, None]
    assert sorted(map(bytes, torch.cat([tr, te]).numpy())) == sorted(map(bytes, allimg.numpy()))
    other = DATASETS.get("digits")(DATASETS.get("digits").Config(), seed=7)
    assert torch.equal(other.split_u8("train"), tr)
    assert ds.data_id("train") == other.data_id("train") != ds.data_id("test")
    assert ds.data_id("train").startswith("digits:train:1x8x8:n1500:")
    with pytest.raises(BenchError, match="no split 'valid'"):
        ds.split_u8("valid")


def test_train_batches_and_reference_in_range_seeded_from_training_split():
    ds = make("digits")
    b = ds.train_batch(32, torch.Generator().manual_seed(0))
    assert b.dtype == torch.float32 and b.shape == (32, 1, 8, 8) and b.min() >= -1 and b.max() <= 1
    r1, r2, r3 = ds.reference(100, 5), ds.reference(100, 5), ds.reference(100, 6)
    assert torch.equal(r1, r2) and not torch.equal(r1, r3)
    train = {bytes(x) for x in ds.split_u8("train").numpy()}
    assert all(bytes(x) in train for x in to_uint8(r1).numpy())
    assert len({bytes(x) for x in to_uint8(ds.reference(1500, 0)).numpy()}) == len(train)  # no repeats up to N
    assert ds.reference(2000, 0).shape == (2000, 1, 8, 8)


def test_image_floor_is_the_held_out_split_and_says_so(tmp_path):
    ds = make("digits")
    x, what = ds.floor_reference(2048, 3)
    assert x.shape == (297, 1, 8, 8) and "held-out test split (n=297)" in what and "n=2048" in what
    test = sorted(map(bytes, ds.split_u8("test").numpy()))
    assert sorted(map(bytes, to_uint8(x).numpy())) == test  # all of it, none of the training images
    small, what = ds.floor_reference(100, 3)
    assert small.shape == (100, 1, 8, 8) and torch.equal(small, ds.floor_reference(100, 3)[0])
    assert "biased" not in what
    fake_folder(tmp_path)  # no held-out split: the floor says it is a memorising model's score
    with pytest.warns(UserWarning):
        folder = make("imagefolder", root=str(tmp_path), resolution=8)
    assert "memorising" in folder.floor_reference(4, 0)[1]


def test_n_train_restricts_training_batches_only():
    ds = make("digits", n_train=10)
    seen = {bytes(x) for x in to_uint8(ds.train_batch(500, torch.Generator().manual_seed(0))).numpy()}
    assert len(seen) <= 10
    assert ds.split_u8("train").shape[0] == 1500  # reference and metrics keep the whole training split
    with pytest.raises(BenchError, match="n_train"):
        from bench.core.config import from_dict

        from_dict(DATASETS.get("digits").Config, {"n_train": -1})


# ---------------------------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_idx_files_load_through_torchvision(tmp_path, name, folder):
    written = fake_mnist(tmp_path, folder)
    ds = make(name, root=str(tmp_path))
    assert ds.spec.shape == (1, 28, 28)
    assert torch.equal(ds.split_u8("train")[:, 0], torch.from_numpy(written["train"]))
    assert torch.equal(ds.split_u8("test")[:, 0], torch.from_numpy(written["t10k"]))
    padded = make(name, root=str(tmp_path), pad_to_32=True)
    x = padded.split_u8("train")
    assert padded.spec.shape == (1, 32, 32) and x[:, :, :2].max() == 0 and x[:, :, :, -2:].max() == 0
    assert torch.equal(x[:, 0, 2:30, 2:30], torch.from_numpy(written["train"]))
    assert padded.data_id("train") != ds.data_id("train")


def test_mnist_official_gz_files_are_accepted(tmp_path):
    written = fake_mnist(tmp_path, gz=True)
    assert torch.equal(make("mnist", root=str(tmp_path)).split_u8("test")[:, 0], torch.from_numpy(written["t10k"]))


def test_fashion_mnist_found_in_the_system_location(tmp_path, monkeypatch):
    """Debian's dataset-fashion-mnist layout (official .gz files in one folder) is found when data.root has none;
    the files are unpacked into <root>/FashionMNIST/raw/ and the error names the package when both are absent."""
    from bench.datasets.images import FashionMNIST

    system = tmp_path / "usr-share"
    written = fake_mnist(system, "x", gz=True)
    (system / "fm").mkdir()
    for f in (system / "x" / "raw").iterdir():
        f.rename(system / "fm" / f.name)
    monkeypatch.setattr(FashionMNIST, "system_dirs", (str(system / "fm"),))
    ds = make("fashion-mnist", root=str(tmp_path / "data"))
    assert torch.equal(ds.split_u8("test")[:, 0], torch.from_numpy(written["t10k"]))
    assert (tmp_path / "data" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    monkeypatch.setattr(FashionMNIST, "system_dirs", (str(tmp_path / "nowhere"),))
    with pytest.raises(BenchError, match="apt-get install dataset-fashion-mnist"):
        make("fashion-mnist", root=str(tmp_path / "empty"))


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
    reason="the real files come with `apt-get install dataset-fashion-mnist`",
)
def test_real_fashion_mnist_from_the_system_package(tmp_path):
    ds = make("fashion-mnist", root=str(tmp_path))
    train, test = ds.split_u8("train"), ds.split_u8("test")
    assert train.shape == (60000, 1, 28, 28) and test.shape == (10000, 1, 28, 28)
    assert 60 < float(train.float().mean()) < 80  # Fashion-MNIST's mean pixel is 72.9 (of 255)


def test_mnist_missing_files_one_clear_error(tmp_path):
    with pytest.raises(BenchError) as e:
        make("mnist", root=str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in msg
    assert "t10k-labels-idx1-ubyte" in msg and "data.download=true" in msg


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.mnist as tv_mnist

    def offline(*a, **k):
        raise URLError("no network")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline)
    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(BenchError, match=r"download failed.*train-images|train-images.*download failed"):
        make("mnist", root=str(tmp_path), download=True)
    with pytest.raises(BenchError, match=r"cifar-10-batches-py/data_batch_1.*download failed"):
        make("cifar10", root=str(tmp_path), download=True)


# ---------------------------------------------------------------------------------------------- CIFAR-10


def test_cifar10_python_batches(tmp_path):
    written = fake_cifar(tmp_path)
    ds = make("cifar10", root=str(tmp_path), verify=False)
    tr = ds.split_u8("train")
    assert ds.spec.shape == (3, 32, 32) and tr.shape == (20, 3, 32, 32)
    first = written["data_batch_1"][0]
    assert torch.equal(tr[0, 0].flatten(), torch.from_numpy(first[:1024]))  # red plane first
    assert torch.equal(tr[0, 2].flatten(), torch.from_numpy(first[2048:]))
    assert torch.equal(tr[-1].flatten(), torch.from_numpy(written["data_batch_5"][-1]))
    assert torch.equal(ds.split_u8("test").reshape(4, -1), torch.from_numpy(written["test_batch"]))


def test_cifar10_checks_official_md5_by_default(tmp_path):
    fake_cifar(tmp_path)
    with pytest.raises(BenchError, match=r"md5 mismatch.*data_batch_1.*data.verify=false"):
        make("cifar10", root=str(tmp_path))


def test_cifar10_missing_and_malicious_files(tmp_path):
    with pytest.raises(BenchError, match=r"data_batch_1 \.\. data_batch_5, test_batch, batches.meta"):
        make("cifar10", root=str(tmp_path))
    fake_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(BenchError, match=r"data_batch_3.*refusing to load builtins.print"):
        make("cifar10", root=str(tmp_path), verify=False)


# ---------------------------------------------------------------------------------------------- imagefolder


def fake_folder(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(root / "a_red.png")
    Image.new("L", (12, 12), 200).save(root / "b_gray.png")
    Image.new("RGBA", (16, 20), (0, 0, 255, 255)).save(root / "sub" / "c_blue.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).save(root / "sub" / "d.jpg")
    (root / "e_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (root / "notes.txt").write_text("ignored")


def test_imagefolder_resizes_converts_and_skips_corrupt(tmp_path):
    fake_folder(tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds = make("imagefolder", root=str(tmp_path), resolution=8)
    assert ds.skipped == 1 and ds.skipped_files[0].endswith("e_corrupt.png")
    x = ds.split_u8("train")
    assert ds.spec.shape == (3, 8, 8) and x.shape == (4, 3, 8, 8)  # sorted by path: a, b, sub/c, sub/d
    assert (x[0, 0] == 255).all() and (x[0, 1:] == 0).all()  # red 40x30 -> cropped 8x8 red
    assert (x[1] == 200).all()  # grayscale replicated to RGB
    assert (x[2, 2] == 255).all() and (x[2, :2] == 0).all()  # RGBA -> RGB
    with pytest.warns(UserWarning):
        gray = make("imagefolder", root=str(tmp_path), resolution=6, channels=1, resize="stretch")
    assert gray.split_u8("train").shape == (4, 1, 6, 6)
    assert gray.data_id("train").startswith("imagefolder:train:1x6x6:n4:")
    with pytest.raises(BenchError, match="no split 'test'"):
        ds.split_u8("test")


def test_imagefolder_strict_modes_and_sizes(tmp_path):
    fake_folder(tmp_path)
    with pytest.raises(BenchError, match=r"b_gray.png has mode L, expected RGB"):
        make("imagefolder", root=str(tmp_path), mixed_modes="error")
    with pytest.raises(BenchError, match=r"b_gray.png is 12x12, others are 40x30"):
        make("imagefolder", root=str(tmp_path), mixed_sizes="error")


def test_imagefolder_empty_missing_or_all_corrupt(tmp_path):
    with pytest.raises(BenchError, match="is not a folder"):
        make("imagefolder", root=str(tmp_path / "nope"))
    with pytest.raises(BenchError, match="no image files"):
        make("imagefolder", root=str(tmp_path))
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(BenchError, match="none of the 1 image files"):
        make("imagefolder", root=str(tmp_path))
    with pytest.raises(BenchError, match="data.root must name"):
        from bench.core.config import from_dict

        from_dict(DATASETS.get("imagefolder").Config, {})


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_missing_data_exits_2_without_record(bench_cli, tmp_path):
    code, out, err = bench_cli("run", "--method", "flow", "--dataset", "cifar10", "--set", f"data.root={tmp_path}")
    assert code == 2
    text = out + err
    assert "cifar-10-batches-py" in text and "data_batch_1" in text and "Traceback" not in text
    assert bench_cli.records() == [] and not bench_cli.runs.exists()


# ---------------------------------------------------------------------------------------------- grids


def test_grid_layout_and_png(tmp_path):
    x = torch.arange(10 * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(10, 3, 4, 4)
    img = grid_image(x, nrow=4, padding=1, scale=1)
    assert img.mode == "RGB" and img.size == (1 + 4 * 5, 1 + 3 * 5)
    a = np.asarray(img)
    assert np.array_equal(a[1:5, 6:10].transpose(2, 0, 1), x[1].numpy())  # row 0, column 1
    assert np.array_equal(a[6:10, 1:5].transpose(2, 0, 1), x[4].numpy())  # row 1, column 0
    p = save_grid(torch.zeros(64, 1, 8, 8, dtype=torch.uint8), tmp_path / "g" / "grid.png")
    with Image.open(p) as im:
        assert im.mode == "L" and im.size == (2 + 8 * 34, 2 + 8 * 34)  # 8 px tiles enlarged 4x
    with pytest.raises(ValueError):
        grid_image(torch.zeros(2, 2, 4, 4, dtype=torch.uint8))


class _Identity:
    """A 'method' whose samples are its noise: the grid must show seeds sample_seed .. +63."""

    noise_shape = (1, 8, 8)

    def sample(self, z, point):
        return z.clamp(-1, 1), 1


def test_eval_grid_uses_the_fixed_seed_range(tmp_path):
    pt = EvalPoint("flow[icfm,D-param]", "euler", 4)
    rel = write_eval_grid(_Identity(), pt, 123, torch.device("cpu"), GridTarget(tmp_path, "grids/digits/run1"))
    assert rel == "grids/digits/run1/flow-icfm-D-param_euler_4.png"
    expect = np.asarray(grid_image(to_uint8(seeded_noise((1, 8, 8), range(123, 187)))))
    with Image.open(tmp_path / rel) as im:
        assert np.array_equal(np.asarray(im), expect)


def test_smoke_on_image_data_uses_the_micro_unet_unless_set():
    """--smoke on 28 px data: every U-Net left at "auto" (28 px: "compact", 1.7 s a step on one core) becomes
    "micro" and a flow is sampled with Euler only (an adaptive solve of an untrained image flow took 6 minutes); a
    preset the user names is kept, and points data are untouched."""
    from bench.run.runner import SMOKE_UNET, resolve_config

    assert resolve_config("flow", "fashion-mnist", None, [], None, True).method.net.unet == SMOKE_UNET
    chargen = resolve_config("chargen", "fashion-mnist", None, [], None, True).method
    assert chargen.teacher.flow.net.unet == SMOKE_UNET
    named = resolve_config("flow", "fashion-mnist", None, ["method.net.unet=tiny"], None, True)
    assert named.method.net.unet == "tiny"
    assert resolve_config("flow", "fashion-mnist", None, [], None, False).method.net.unet == "auto"
    assert resolve_config("flow", "moons", None, [], None, True).method.net.unet == "auto"
    assert resolve_config("flow", "fashion-mnist", None, [], None, True).eval.solvers == ["euler"]
    assert resolve_config("flow", "moons", None, [], None, True).eval.solvers == []  # the method's defaults


def test_image_data_without_any_metric_is_refused_before_training(monkeypatch):
    """28 px data without the Inception weights has no applicable metric: one clear error up front (it used to
    train and then refuse to write a record with no metrics)."""
    from types import SimpleNamespace

    from bench.datasets.base import DataSpec

    from bench.core.config import EvalConfig
    from bench.eval.metrics import fid
    from bench.eval.metrics.registry import preflight

    monkeypatch.setattr(fid, "_inception_present", lambda ev: False)
    ds = SimpleNamespace(spec=DataSpec("mnist", "image", (1, 28, 28), False))  # fashion-mnist has fd_fmnist
    with pytest.raises(BenchError, match="no metric applies to mnist on this machine"):
        preflight(ds, EvalConfig())
