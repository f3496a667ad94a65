"""Store-level dense depth steps: what they record, and that they refuse a stale product."""

from __future__ import annotations

import pytest

from aquamvs_core import steps
from aquamvs_core.config import build_config
from aquamvs_core.survey import Product, product_path

FRAME = "f000000"


def test_pairwise_depth_seconds_is_the_sweeps_total_once(ingested):
    """The recorded ``seconds`` is the sweep's own ``total``, not the sum of every timing (which
    counts the total a second time on top of its parts)."""
    _, store, pairs = ingested
    config = build_config("fast")
    summary = steps.pairwise_depths_step(store, FRAME, pairs[0], config)
    timings = store.product_attrs(product_path(Product.PAIRWISE_DEPTHS, FRAME, pairs[0].key))["timings"]
    parts = sum(v for k, v in timings.items() if k != "total")
    assert summary["seconds"] == pytest.approx(timings["total"], abs=1e-3)
    assert parts <= timings["total"] + 1e-3  # the stages are inside the total
    assert summary["seconds"] < 0.75 * sum(timings.values())  # the old sum was about twice the time


def test_camera_depths_refuse_a_product_of_the_other_pathway(ingested):
    """A plane-sweep pairwise depth is not read as a RoMa one (same product, other arrays)."""
    _, store, pairs = ingested
    ref_pairs = [p for p in pairs if p.ref == pairs[0].ref]
    config = build_config("fast")
    for pair in pairs:
        steps.sparse_matches_step(store, FRAME, pair, config)
    steps.sparse_cloud_step(store, FRAME, pairs, config)
    for pair in ref_pairs:
        steps.pairwise_depths_step(store, FRAME, pair, config)
    with pytest.raises(ValueError, match="written by the 'sift' pathway, not 'roma'"):
        steps.camera_depths_step(store, FRAME, ref_pairs, build_config("fast", "roma"))
    summary = steps.camera_depths_step(store, FRAME, ref_pairs, config)
    assert 0.5 < summary[pairs[0].ref]["valid_fraction"] <= 1.0


def test_pairs_swept_side_by_side_match_one_at_a_time(ingested, tmp_path):
    """Two pair workers (threads) sharing the frame's prepared views write the same pair and camera
    depths, bit for bit, as each pair's step on its own, one at a time; they report every pair in
    the caller's thread and return the summaries in the given order."""
    import shutil
    import threading

    import numpy as np

    from aquamvs_core.store import SurveyStore

    spec, store, pairs = ingested
    config = build_config("fast")
    for pair in pairs:
        steps.sparse_matches_step(store, FRAME, pair, config)
    steps.sparse_cloud_step(store, FRAME, pairs, config)
    dense = steps.dense_pairs(store, pairs, config)
    refs = list(dict.fromkeys(p.ref for p in dense))[:2]
    dense = [p for p in dense if p.ref in refs]
    shutil.copytree(spec.store, tmp_path / "copy.zarr")
    serial = SurveyStore(tmp_path / "copy.zarr")

    reported = []
    both = config.model_copy(update={"pair_workers": 2})
    summaries = steps.sweep_frame_pairs(
        store, FRAME, dense, both, on_done=lambda p, s: reported.append((p.key, threading.current_thread()))
    )
    alone = config.model_copy(update={"pair_workers": 1})
    one = {p.key: steps.pairwise_depths_step(serial, FRAME, p, alone) for p in dense}  # no shared views
    assert list(summaries) == list(one) == [p.key for p in dense]
    assert sorted(k for k, _ in reported) == sorted(p.key for p in dense)
    assert {t for _, t in reported} == {threading.current_thread()}
    for pair in dense:
        path = product_path(Product.PAIRWISE_DEPTHS, FRAME, pair.key)
        a, b = store.read_product(path), serial.read_product(path)
        assert set(a) == set(steps.PAIR_DEPTH_ARRAYS)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{pair.key} {name}")
        assert np.isfinite(a["depth"]).mean() > 0.5
    # The cameras combined side by side, too.
    side_by_side = steps.camera_depths_step(store, FRAME, dense, both)
    assert list(side_by_side) == refs
    assert steps.camera_depths_step(serial, FRAME, dense, config.model_copy(update={"pair_workers": 1})) == (
        side_by_side
    )
    for ref in refs:
        path = product_path(Product.CAMERA_DEPTHS, FRAME, ref)
        a, b = store.read_product(path), serial.read_product(path)
        for name in ("depth", "confidence", "support"):
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{ref} {name}")


def test_pair_workers_default_to_the_cores_on_the_cpu_only():
    from unittest import mock

    auto = build_config("balanced")
    with mock.patch("aquamvs_core.runtime.available_cores", return_value=2):
        assert steps.pair_workers(auto) == 2
        assert steps.pair_workers(build_config("balanced", "roma")) == 1
        assert steps.pair_workers(build_config(overrides={"plane_sweep": {"device": "cuda"}})) == 1
    with mock.patch("aquamvs_core.runtime.available_cores", return_value=64):
        assert steps.pair_workers(auto) == 4
    assert steps.pair_workers(build_config(overrides={"pair_workers": 3})) == 3
