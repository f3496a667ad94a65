"""Completeness split by view count and by silt, on planted reconstructions whose covered cells are
known, checked against brute-force distances and hand counts (not the Open3D search it uses)."""

from __future__ import annotations

import numpy as np
import pytest

from aquamvs_core import steps as steps
from aquamvs_core.config import build_config
from aquamvs_core.evaluation.metrics import (
    VIEW_BANDS,
    cell_completeness,
    cell_points,
    completeness_split,
    in_silt,
    silt_cells,
)
from aquamvs_core.evaluation.quality import quality_report
from aquamvs_core.stages.fusion import FusedCloud
from aquamvs_core.stages.mesh import MeshConfig, build_mesh
from aquamvs_core.survey import Product, product_path
from aquamvs_core.synthetic import GroundTruth, load_ground_truth, save_ground_truth

FRAME = "f000000"


def _bed(n: int = 60, cell: float = 0.002) -> GroundTruth:
    x = 0.1 + cell * np.arange(n)
    y = -0.2 + cell * np.arange(n)
    X, Y = np.meshgrid(x, y)
    z = 1.0 + 0.01 * np.sin(8 * X) * np.cos(6 * Y)
    cols, rows = (x[n // 3], x[n // 3 + 25 * n // 60]), (y[n // 6], y[n // 6 + n // 3])
    silt = (cols[0] < X) & (cols[1] > X) & (rows[0] < Y) & (rows[1] > Y)
    return GroundTruth(x, y, z[None], np.array([0]), silt_mask=silt)


def test_cell_completeness_matches_brute_force_distances():
    gt = _bed(30)
    rng = np.random.default_rng(3)
    cells = cell_points(gt, 0, 1).reshape(-1, 3)
    points = cells[rng.random(len(cells)) < 0.05] + rng.normal(0, 0.002, (1, 3))
    points = points + rng.normal(0, 0.001, points.shape)
    got = cell_completeness(points, gt, 0, completeness_radius_mm=3.0, cell_step=1)
    d = np.linalg.norm(cells[:, None, :] - points[None, :, :], axis=-1).min(axis=1)
    np.testing.assert_array_equal(got.ravel(), d <= 0.003)
    assert 0.1 < got.mean() < 0.9
    assert not cell_completeness(np.zeros((0, 3)), gt, 0, cell_step=1).any()


def test_completeness_split_counts_the_planted_cells():
    gt = _bed()
    cells = cell_points(gt, 0, 1)
    ny, nx = cells.shape[:2]
    views = (np.arange(nx)[None, :] // 6 % 9).repeat(ny, 0)  # column stripes seen by 0..8 cameras
    rng = np.random.default_rng(1)
    chosen = rng.random((ny, nx)) < np.where(views >= 4, 0.9, 0.3)
    # Points exactly on the chosen cells, with a radius below the 2 mm spacing: no neighbour counts.
    points = cells[chosen]
    complete = cell_completeness(points, gt, 0, completeness_radius_mm=1.0, cell_step=1)
    np.testing.assert_array_equal(complete, chosen)
    silt = silt_cells(gt, 1)
    assert silt is not None and silt.sum() == 24 * 19
    assert silt_cells(gt, 2).shape == cell_points(gt, 0, 2).shape[:2]
    split = completeness_split(complete, views, silt, min_views=2)
    for key, lo, hi in VIEW_BANDS:
        band = (views >= lo) & (views <= (hi if hi is not None else 99))
        assert split[f"cells_{key}"] == band.sum() > 0
        assert split[f"completeness_{key}"] == pytest.approx(chosen[band].mean())
    seen = views >= 2
    assert split["silt_cells"] == (seen & silt).sum() and split["outside_silt_cells"] == (seen & ~silt).sum()
    assert split["silt_completeness"] == pytest.approx(chosen[seen & silt].mean())
    assert split["outside_silt_completeness"] == pytest.approx(chosen[seen & ~silt].mean())
    # Empty bands are None; no silt keys without a mask.
    none = completeness_split(complete, np.minimum(views, 3))
    assert none["completeness_6plus_views"] is None and none["cells_6plus_views"] == 0
    assert "silt_completeness" not in none
    with pytest.raises(ValueError):
        completeness_split(complete, views[:, :-1])


def test_in_silt_finds_points_by_their_nearest_node():
    gt = _bed()
    X, Y = np.meshgrid(gt.x, gt.y)
    pts = np.stack([X.ravel(), Y.ravel(), np.ones(X.size)], 1) + np.array([0.0009, -0.0009, 0.0])
    np.testing.assert_array_equal(in_silt(pts, gt), gt.silt_mask.ravel())
    outside = np.array([[gt.x[0] - 0.01, gt.y[15], 1.0], [np.nan, np.nan, np.nan]])
    assert not in_silt(outside, gt).any()
    assert not in_silt(pts, GroundTruth(gt.x, gt.y, gt.z, gt.frame_indices)).any()


def test_quality_report_splits_a_planted_reconstruction(ingested, tmp_path):
    spec, store, _ = ingested
    gt = load_ground_truth(spec.ground_truth)
    # Plant a silt mask on the left half of the bed, and a cloud that covers the right half only.
    X, Y = np.meshgrid(gt.x, gt.y)
    middle = 0.5 * (gt.x[0] + gt.x[-1])
    silty = save_ground_truth(tmp_path / "gt.npz", gt.x, gt.y, gt.z, gt.frame_indices, middle > X)
    right = X[::2, ::2] > middle
    xy = np.column_stack([X[::2, ::2][right], Y[::2, ::2][right]])
    points = np.column_stack([xy, gt.height_at(0, xy) + 0.0003])
    n = len(points)
    normals = np.tile(np.array([0.0, 0.0, -1.0], np.float32), (n, 1))
    cloud = FusedCloud(points, np.full((n, 3), 128, np.uint8), normals, np.full(n, 2, np.int32))
    store.write_product(product_path(Product.FUSED_CLOUD, FRAME), cloud.as_arrays())
    mesh = build_mesh(cloud, MeshConfig(method="heightfield", color_source="cloud"))
    store.write_product(product_path(Product.MESH, FRAME), steps.mesh_to_arrays(mesh))
    report = quality_report(store, FRAME, silty, build_config())
    # The bands partition the cells seen by two or more cameras.
    counts = [report[f"cells_{key}"] for key, _, _ in VIEW_BANDS]
    assert sum(counts) == report["cells_seen_by_2plus"] > 0
    weighted = sum(
        report[f"completeness_{k}"] * c for (k, _, _), c in zip(VIEW_BANDS, counts, strict=True) if c
    )
    assert weighted / sum(counts) == pytest.approx(report["cloud_completeness"], abs=1e-3)
    # The earlier keys are still there and agree with the new bands.
    if report["cells_2_views"] + report["cells_3_views"]:
        pair = (report["completeness_2_views"] or 0) * report["cells_2_views"] + (
            report["completeness_3_views"] or 0
        ) * report["cells_3_views"]
        assert report["completeness_2_to_3_views"] == pytest.approx(
            pair / (report["cells_2_views"] + report["cells_3_views"]), abs=1e-3
        )
    # Nothing planted in the silt (the left half): silt completeness only from the 5 mm seam.
    assert report["silt_completeness"] < 0.05 and report["outside_silt_completeness"] > 0.9
    assert report["outside_silt_median_abs_error_mm"] == pytest.approx(0.3, abs=0.01)
    assert report["silt_median_abs_error_mm"] is None  # no point lies over the silt
