"""bench.core.rowfile: a .npy written and read by file offset, equal to numpy's own reading of it."""

from __future__ import annotations

import numpy as np
import pytest

from bench.core.rowfile import RowFile


def test_rows_written_in_any_order_read_back_as_numpy_sees_them(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 6, 3, 4)).astype(np.float32)
    path = tmp_path / "t.npy"
    f = RowFile.create(path, a.shape)
    for start in (30, 0, 10, 45, 20, 40):  # chunks out of order, as ranks write them
        stop = {30: 40, 0: 10, 10: 20, 45: 50, 20: 30, 40: 45}[start]
        f.write_rows(start, a[start:stop])
    f.close()
    assert np.array_equal(np.load(path), a)  # a plain .npy
    g = RowFile.open(path)
    rows, cols = rng.integers(0, 50, 300), rng.integers(0, 6, 300)
    assert np.array_equal(g.read_items(rows, cols), a[rows, cols])
    assert np.array_equal(g.read_all(), a)
    assert np.array_equal(g.read_rows(1, 2), a[1:3]) and g.read_rows(3, 0).shape == (0, *a.shape[1:])
    with pytest.raises(IndexError):
        g.read_rows(2, len(a))
    with pytest.raises(IndexError):
        g.read_items(np.array([50]), np.array([0]))
    with pytest.raises(ValueError):
        RowFile.open(path, writable=True).write_rows(48, a[:5])


def test_truncated_padded_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.zeros((4, 3, 2), np.float32))
    data = path.read_bytes()
    for bad in (data[:-4], data + b"\0" * 8, data[:40], b"garbage"):
        path.write_bytes(bad)
        with pytest.raises(ValueError):
            RowFile.open(path)
    np.save(path, np.zeros(5, np.float32))  # 1-D
    with pytest.raises(ValueError):
        RowFile.open(path)
