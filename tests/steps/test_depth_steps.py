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
