"""Store-level sparse steps: pairs matched side by side write what one at a time writes."""

from __future__ import annotations

import shutil
import threading
from unittest import mock

import numpy as np

from aquamvs_core import steps
from aquamvs_core.config import build_config
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Product, product_path

FRAME = "f000000"


def test_pairs_matched_side_by_side_match_one_at_a_time(ingested, tmp_path):
    """Two workers (threads) sharing the frame's features write the same matches and points, bit
    for bit, as each pair's step on its own with no shared cache; every pair is reported once, in
    the caller's thread, and the summaries come back in the given order."""
    spec, store, pairs = ingested
    shutil.copytree(spec.store, tmp_path / "copy.zarr")
    serial = SurveyStore(tmp_path / "copy.zarr")
    config = build_config("fast")
    assert any(p.ref == q.src and p.src == q.ref for p in pairs for q in pairs)  # reverse pairs exist

    from aquamvs_core.stages.sparse import matching

    detected = []
    detect = matching._sift_features

    def counted(sift, grey):
        detected.append(grey.shape)
        return detect(sift, grey)

    reported = []
    both = config.model_copy(update={"pair_workers": 2})
    with mock.patch.object(matching, "_sift_features", counted):
        summaries = steps.match_frame_pairs(
            store,
            FRAME,
            pairs,
            both,
            on_done=lambda p, s: reported.append((p.key, threading.current_thread())),
        )
    cameras = {n for p in pairs for n in (p.ref, p.src)}
    assert len(detected) == len(cameras)  # each image's features once, for all its pairs
    one = {p.key: steps.sparse_matches_step(serial, FRAME, p, config) for p in pairs}
    assert list(summaries) == list(one) == [p.key for p in pairs]
    assert sorted(k for k, _ in reported) == sorted(p.key for p in pairs)
    assert {t for _, t in reported} == {threading.current_thread()}
    for pair in pairs:
        assert summaries[pair.key]["kept"] == one[pair.key]["kept"] > 0
        path = product_path(Product.SPARSE_MATCHES, FRAME, pair.key)
        a, b = store.read_product(path), serial.read_product(path)
        assert set(a) == set(b)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{pair.key} {name}")
    assert sum(s["kept"] for s in summaries.values()) > 100
    # Current products are reused, by every worker.
    detected.clear()
    with mock.patch.object(matching, "_sift_features", counted):
        again = steps.match_frame_pairs(store, FRAME, pairs, both)
    assert all(s["reused"] for s in again.values()) and detected == []  # nothing detected for nothing


def test_match_workers_default_to_the_cores_for_sift_on_the_cpu_only():
    with mock.patch("aquamvs_core.runtime.available_cores", return_value=2):
        assert steps.match_workers(build_config("balanced")) == 2
        assert steps.match_workers(build_config(overrides={"matching": {"method": "aliked"}})) == 1
        assert steps.match_workers(build_config(overrides={"matching": {"device": "cuda"}})) == 1
    assert steps.match_workers(build_config(overrides={"pair_workers": 3})) == 3
