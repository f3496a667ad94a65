"""Pipeline products in the store: round trips, commit protocol, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import aquamvs_core.store.commit as commit_module
from aquamvs_core.store import StoreKeyError, SurveyStore


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    root = str(tmp_path / "s.zarr") if request.param == "local" else f"memory://products-{tmp_path.name}"
    return SurveyStore(root)


def test_product_round_trip_keeps_values_nan_and_attrs(store):
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.4, 0.6, (48, 64)).astype(np.float32)
    depth[5:9, 10:20] = np.nan
    points = rng.normal(size=(2_500_000, 3))  # long table: chunked by rows
    store.write_product("depth/f000001/cam0-cam1", {"depth": depth}, {"pair": "cam0-cam1", "hyp": 128})
    store.write_product("cloud/f000001", {"points": points, "colors": np.zeros((len(points), 3), np.uint8)})
    got = store.read_product("depth/f000001/cam0-cam1")["depth"]
    np.testing.assert_array_equal(got, depth)  # NaN positions equal too
    assert store.product_attrs("depth/f000001/cam0-cam1")["hyp"] == 128
    np.testing.assert_array_equal(store.read_product("cloud/f000001", ["points"])["points"], points)
    assert store.list_products("depth/f000001") == ["cam0-cam1"]
    assert store.has_product("cloud/f000001") and not store.has_product("cloud/f000002")


def test_crash_mid_write_leaves_no_half_written_product(store, monkeypatch):
    """A crash while a product is rewritten leaves the previous version, whole; a crash while a new
    product is written leaves nothing that reads as complete."""
    arrays = {"a": np.ones((4, 4), np.float32), "b": np.zeros((4, 4), np.float32)}
    store.write_product("mesh/f000003", arrays)
    calls = {"n": 0}
    real = commit_module.write_array

    def crash_after_first(group, name, data, chunks=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real(group, name, data, chunks)

    monkeypatch.setattr(commit_module, "write_array", crash_after_first)
    with pytest.raises(OSError, match="disk full"):
        store.write_product("mesh/f000003", {"a": 2 * arrays["a"], "b": arrays["b"]})
    assert store.list_products("mesh") == ["f000003"]
    back = store.read_product("mesh/f000003")
    assert all(np.array_equal(back[k], arrays[k]) for k in arrays)  # the previous version, whole
    calls["n"] = 0
    with pytest.raises(OSError, match="disk full"):
        store.write_product("mesh/f000004", arrays)
    assert not store.has_product("mesh/f000004")
    assert store.list_products("mesh") == ["f000003"]
    with pytest.raises(StoreKeyError, match="incomplete"):
        store.read_product("mesh/f000004")


def test_bad_product_input_writes_nothing(store):
    with pytest.raises(ValueError, match="invalid product path"):
        store.write_product("depth/../x", {"a": np.ones(3)})
    with pytest.raises(ValueError, match="numpy array"):
        store.write_product("depth/f1", {"a": [1, 2, 3]})
    with pytest.raises(ValueError, match="JSON"):
        store.write_product("depth/f1", {"a": np.ones(3)}, {"bad": object()})
    assert store.list_products("depth") == []
    with pytest.raises(StoreKeyError):
        store.read_product("depth/f1")


def test_product_paths_lists_every_committed_part(store):
    store.write_product("pairwise_depths/f000001/cam0-cam1", {"d": np.ones(2)})
    store.write_product("pairwise_depths/f000001/cam1-cam0", {"d": np.ones(2)})
    store.write_product("fused_cloud/f000001", {"p": np.ones((2, 3))})
    assert store.product_paths("pairwise_depths") == [
        "pairwise_depths/f000001/cam0-cam1",
        "pairwise_depths/f000001/cam1-cam0",
    ]
    assert store.product_paths("fused_cloud") == ["fused_cloud/f000001"]
    assert store.product_paths("mesh") == []


@pytest.mark.parametrize("when", ["before the arrays", "after the arrays"])
def test_a_product_rewritten_while_being_read_is_read_whole_from_the_new_version(store, monkeypatch, when):
    """Another writer commits a new version of the product, and deletes the one being read, in the
    middle of a read (two runs of one frame at once): before its arrays are read (they are gone) or
    after (its chunks may have been deleted under the reader). The read returns the new version,
    whole, never a mixture; a committed version that is itself broken is an error, not a loop."""
    from aquamvs_core.store import survey_store as module

    old = {"a": np.full((4, 4), 1.0, np.float32), "b": np.full((3,), 1.0)}
    new = {"a": np.full((4, 4), 2.0, np.float32), "b": np.full((3,), 2.0)}
    store.write_product("heightfield/f000001", old)
    real_get = SurveyStore._committed_product
    rewrites = []

    def rewrite_once():
        if not rewrites:
            rewrites.append(1)
            writer = SurveyStore(store.root)
            writer.write_product("heightfield/f000001", new)

    def committed_then_rewritten(self, path):
        group = real_get(self, path)
        if when == "before the arrays":
            rewrite_once()
        return group

    monkeypatch.setattr(SurveyStore, "_committed_product", committed_then_rewritten)
    if when == "after the arrays":
        real_group_get = module.zarr.Group.get
        reads = {"n": 0}

        def get_after_the_arrays(self, key, *args, **kwargs):
            if key == "products/heightfield/f000001":
                reads["n"] += 1
                if reads["n"] == 2:  # 1: the committed product is found; 2: the check after its arrays
                    rewrite_once()
            return real_group_get(self, key, *args, **kwargs)

        monkeypatch.setattr(module.zarr.Group, "get", get_after_the_arrays)
    got = store.read_product("heightfield/f000001")
    assert rewrites == [1]
    for name in new:
        np.testing.assert_array_equal(got[name], new[name])
    monkeypatch.undo()
    # A committed version whose arrays are gone (not a rewrite): the error is raised.
    attrs = store.product_attrs("heightfield/f000001")
    del store._group[f"products/heightfield/f000001/{attrs['version']}"]
    with pytest.raises((KeyError, FileNotFoundError)):
        store.read_product("heightfield/f000001")
