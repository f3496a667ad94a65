"""Atomic writers of local files."""

from __future__ import annotations

import numpy as np
import pytest

from aquamvs_core.files import atomic_write_npz


def test_atomic_write_npz_round_trip_compression_and_failure(tmp_path):
    z = np.full((300, 400), np.nan)
    z[50:250, 60:340] = np.linspace(1.1, 1.2, 200 * 280).reshape(200, 280)
    arrays = {"x": np.arange(400) * 1e-3, "z": z, "count": np.arange(12, dtype=np.int32).reshape(3, 4)}
    path = atomic_write_npz(tmp_path / "out" / "hf.npz", arrays)
    assert path == tmp_path / "out" / "hf.npz"
    with np.load(path) as back:
        assert set(back.files) == set(arrays)
        for k, v in arrays.items():
            assert back[k].dtype == v.dtype
            np.testing.assert_array_equal(back[k], v)
    assert path.stat().st_size < 0.5 * sum(v.nbytes for v in arrays.values())  # deflated
    # A failing writer (object arrays are refused) leaves the earlier file and no temporary behind.
    before = path.read_bytes()
    with pytest.raises(ValueError):
        atomic_write_npz(path, {"bad": np.array([{"a": 1}], dtype=object)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["hf.npz"]
