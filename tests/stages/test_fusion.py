"""Depth-map fusion on the synthetic survey, with exact, noisy and corrupted ground-truth depth maps."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pydantic
import pytest
import torch

from aquamvs_core.camera.sampling import sample_map
from aquamvs_core.evaluation.metrics import cloud_errors, reconstruction_metrics, visibility_count
from aquamvs_core.stages.depth_map import DepthMap
from aquamvs_core.stages.fusion import FusedCloud, FusionConfig, fuse_depth_maps


@pytest.fixture(scope="module")
def scene(gt_scene) -> SimpleNamespace:
    """The shared 4-camera ground-truth scene plus the cells seen by two or more cameras."""
    seen = visibility_count(gt_scene.terrain, 0, gt_scene.cameras, gt_scene.masks, gt_scene.depth) >= 2
    return SimpleNamespace(**vars(gt_scene), seen=seen)


@pytest.fixture(scope="module")
def fused_gt(scene) -> FusedCloud:
    return fuse_depth_maps(scene.depth, scene.cameras, scene.images)


def _with_depth(dm: DepthMap, depth: np.ndarray) -> DepthMap:
    return DepthMap(dm.camera, torch.from_numpy(depth.astype(np.float32)), dm.confidence.clone())


def test_fusing_exact_depth_maps_is_accurate_and_complete(scene, fused_gt):
    cloud = fused_gt
    m = reconstruction_metrics(cloud.points, scene.terrain, 0, scene.seen)
    # The only error left is the bilinear interpolation of the witnesses' depth maps between
    # 8 mm pixels of a rippled bed.
    assert m["median_abs_error_mm"] < 0.05
    assert m["p90_abs_error_mm"] < 0.2
    assert m["outlier_fraction"] == 0.0
    assert m["completeness"] > 0.95
    assert len(cloud) > 0.8 * cloud.stats["source_pixels"]
    assert cloud.points.dtype == np.float64 and cloud.colors.dtype == np.uint8
    assert cloud.normals.dtype == np.float32 and cloud.support.dtype == np.int32
    np.testing.assert_allclose(np.linalg.norm(cloud.normals, axis=1), 1.0, atol=1e-5)
    # Normals face the cameras: up (-Z) for a bed seen from above.
    assert np.all(cloud.normals[:, 2] < 0)
    assert np.median(cloud.normals[:, 2]) < -0.95
    # Support counts the agreeing cameras, the source included; most of the bed is seen by all 4.
    assert cloud.support.min() >= 2 and cloud.support.max() == 4
    assert np.mean(cloud.support == 4) > 0.5
    # Colours are the bed's (sand, not the black outside the undistorted image nor mid-grey).
    assert 60 < np.median(cloud.colors.astype(float)) < 230
    assert np.mean(np.all(cloud.colors == 128, axis=1)) < 0.01


def test_colours_are_the_mean_of_the_agreeing_views(scene):
    cfg = FusionConfig(voxel_size_mm=0, outlier_neighbors=0)
    mono = {n: np.full_like(img, 10 * (i + 1)) for i, (n, img) in enumerate(scene.images.items())}
    cloud = fuse_depth_maps(scene.depth, scene.cameras, mono, cfg)
    # Every point's colour is the mean over 2 to 4 of the values 10, 20, 30, 40.
    vals = cloud.colors[:, 0].astype(float)
    assert np.all((vals >= 15) & (vals <= 35))
    four = cloud.support == 4
    assert np.all(np.abs(vals[four] - 25) <= 0.5)


def test_fusion_rejects_planted_outliers(scene):
    rng = np.random.default_rng(3)
    corrupted = {}
    n_bad = 0
    for name, dm in scene.depth.items():
        d = dm.depth.numpy().astype(np.float64)
        bad = rng.random(d.shape) < 0.02
        d[bad] += rng.choice([-1.0, 1.0], bad.sum()) * rng.uniform(0.005, 0.05, bad.sum())
        h, w = d.shape
        d[h // 2 - 8 : h // 2 + 8, w // 2 - 8 : w // 2 + 8] -= 0.10  # a blob floating 10 cm up
        n_bad += int(bad.sum()) + 256
        corrupted[name] = _with_depth(dm, d)

    # Without fusion the corrupted pixels are there: single-camera points have outliers.
    pts, ok = corrupted["cam0"].points(scene.cameras["cam0"])
    single = reconstruction_metrics(pts[ok].double().numpy(), scene.terrain, 0)
    assert single["outlier_fraction"] > 0.02

    cloud = fuse_depth_maps(corrupted, scene.cameras, scene.images)
    m = reconstruction_metrics(cloud.points, scene.terrain, 0, scene.seen)
    err = np.abs(cloud_errors(cloud.points, scene.terrain, 0))
    assert m["outlier_fraction"] == 0.0
    assert np.quantile(err, 0.999) < 1.0  # the 3-D test tolerance is ~2 mm
    assert m["median_abs_error_mm"] < 0.06
    assert m["completeness"] > 0.95
    # The corrupted source pixels were dropped, not merged.
    assert cloud.stats["consistent"] < cloud.stats["source_pixels"] - 0.8 * n_bad


def test_free_space_check_removes_ghosts_that_two_wrong_maps_agree_on(scene):
    # Every camera's centre patch floats 10 cm above the bed. Where two such floating sheets cross,
    # two cameras agree on a wrong point, but the other cameras see the bed through it.
    floating = {}
    for name, dm in scene.depth.items():
        d = dm.depth.numpy().copy()
        h, w = d.shape
        d[h // 2 - 8 : h // 2 + 8, w // 2 - 8 : w // 2 + 8] -= 0.10
        floating[name] = _with_depth(dm, d)
    no_sor = FusionConfig(outlier_neighbors=0)
    ghosts = fuse_depth_maps(
        floating, scene.cameras, None, no_sor.model_copy(update={"free_space_check": False})
    )
    err = np.abs(cloud_errors(ghosts.points, scene.terrain, 0))
    n_ghosts = int((err > 50).sum())
    assert n_ghosts >= 10 and np.all(ghosts.support[err > 50] == 2)
    clean = fuse_depth_maps(floating, scene.cameras, None, no_sor)
    assert np.abs(cloud_errors(clean.points, scene.terrain, 0)).max() < 1.0
    assert len(clean) >= len(ghosts) - n_ghosts - 0.01 * len(ghosts)  # little else went with them


def test_merging_averages_depth_noise(scene):
    rng = np.random.default_rng(4)
    noisy = {
        name: _with_depth(dm, dm.depth.numpy() + rng.normal(0.0, 0.0005, dm.depth.shape))
        for name, dm in scene.depth.items()
    }
    single = []
    for name, dm in noisy.items():
        pts, ok = dm.points(scene.cameras[name])
        single.append(np.abs(cloud_errors(pts[ok].double().numpy(), scene.terrain, 0)))
    single_median = float(np.nanmedian(np.concatenate(single)))
    cloud = fuse_depth_maps(noisy, scene.cameras, scene.images)
    m = reconstruction_metrics(cloud.points, scene.terrain, 0, scene.seen)
    # σ = 0.5 mm along near-vertical rays: a single camera's median |error| is ~0.67σ ≈ 0.32 mm.
    assert 0.28 < single_median < 0.36
    # Up to 4 views are averaged: the error drops by ~2 (√4 where all 4 agree).
    assert m["median_abs_error_mm"] < 0.6 * single_median
    assert m["outlier_fraction"] == 0.0 and m["completeness"] > 0.95


def test_min_consistent_views(scene):
    one = {"cam0": scene.depth["cam0"]}
    assert len(fuse_depth_maps(one, scene.cameras, scene.images)) == 0
    cfg = FusionConfig(min_consistent_views=0, voxel_size_mm=0, outlier_neighbors=0)
    alone = fuse_depth_maps(one, scene.cameras, scene.images, cfg)
    assert len(alone) == int(scene.depth["cam0"].valid.sum())
    assert np.all(alone.support == 1)
    strict = fuse_depth_maps(scene.depth, scene.cameras, None, FusionConfig(min_consistent_views=3))
    assert len(strict) > 0 and strict.support.min() == 4
    assert np.all(strict.colors == 128)  # no images: neutral grey


def test_low_confidence_depths_are_ignored(scene):
    maps = dict(scene.depth)
    dm = scene.depth["cam1"]
    maps["cam1"] = DepthMap("cam1", dm.depth, dm.confidence * 0.05)  # below min_confidence 0.1
    cloud = fuse_depth_maps(maps, scene.cameras, None, FusionConfig(voxel_size_mm=0, outlier_neighbors=0))
    assert cloud.support.max() == 3  # cam1 neither source nor witness


def test_chunking_does_not_change_the_result(scene):
    names = ["cam0", "cam1"]
    maps = {n: scene.depth[n] for n in names}
    base = FusionConfig(voxel_size_mm=0, outlier_neighbors=0)
    a = fuse_depth_maps(maps, scene.cameras, scene.images, base)
    b = fuse_depth_maps(maps, scene.cameras, scene.images, base.model_copy(update={"chunk_size": 1024}))
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.colors, b.colors)


def test_workers_do_not_change_the_cloud(scene):
    """Source cameras fused side by side (threads, a view cache that holds one camera, so views
    are evicted and reloaded while others use them) give the cloud of one camera at a time, bit
    for bit: each camera's points are merged in camera order."""
    one = fuse_depth_maps(scene.depth, scene.cameras, scene.images, FusionConfig(workers=1))
    tight = FusionConfig(workers=3, view_cache_mb=0.0)
    three = fuse_depth_maps(scene.depth, scene.cameras, scene.images, tight)
    assert len(one) > 1000
    for name in ("points", "colors", "normals", "support"):
        np.testing.assert_array_equal(getattr(one, name), getattr(three, name), err_msg=name)
    assert three.stats["view_loads"] >= len(scene.depth)


def test_write_ply_is_atomic_and_round_trips(fused_gt, tmp_path):
    path = fused_gt.write_ply(tmp_path / "out" / "cloud.ply")
    assert path.is_file() and sorted(p.name for p in path.parent.iterdir()) == ["cloud.ply"]
    back = FusedCloud.read_ply(path)
    np.testing.assert_array_equal(back.points, fused_gt.points)
    np.testing.assert_array_equal(back.colors, fused_gt.colors)
    np.testing.assert_array_equal(back.normals, fused_gt.normals)
    np.testing.assert_array_equal(back.support, fused_gt.support)
    pcd = fused_gt.to_open3d()
    assert len(pcd.points) == len(fused_gt) and pcd.has_colors() and pcd.has_normals()


def test_sample_map_bilinear_nearest_and_validity():
    h, w = 5, 6
    vv, uu = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    ramp = (2 * uu + 3 * vv + 1).unsqueeze(-1)  # linear: bilinear is exact
    uv = torch.tensor(
        [[1.25, 2.5], [0.0, 0.0], [4.9, 3.2], [-0.4, 1.0], [-0.6, 1.0], [2.0, math.nan]], dtype=torch.float64
    )
    out, ok = sample_map(ramp, uv)
    assert ok.tolist() == [True, True, True, True, False, False]
    np.testing.assert_allclose(out[:3, 0].numpy(), [2 * 1.25 + 7.5 + 1, 1, 2 * 4.9 + 9.6 + 1])
    assert out[3, 0] == 4.0  # outside the pixel-centre hull: nearest pixel (u, v) = (0, 1)
    assert torch.isnan(out[4:, 0]).all()
    # A NaN neighbour: bilinear falls back to the nearest valid pixel, or fails if that is the NaN.
    holed = ramp.clone()
    holed[2, 2, 0] = math.nan
    out, ok = sample_map(holed, torch.tensor([[1.4, 1.4], [1.6, 1.6]], dtype=torch.float64))
    assert ok.tolist() == [True, False] and out[0, 0] == 2 + 3 + 1
    out, ok = sample_map(ramp, torch.tensor([[1.4, 2.6]], dtype=torch.float64), "nearest")
    assert out[0, 0] == 2 + 9 + 1


def test_config_is_validated():
    with pytest.raises(pydantic.ValidationError):
        FusionConfig(tol_3d_mm=-1.0)
    with pytest.raises(pydantic.ValidationError):
        FusionConfig(sampling="cubic")
    with pytest.raises(pydantic.ValidationError):
        FusionConfig(tolerance=2.0)  # unknown field


def test_missing_camera_or_bad_image_is_an_error(scene):
    with pytest.raises(KeyError, match="cam0"):
        fuse_depth_maps({"cam0": scene.depth["cam0"]}, {}, None)
    bad = {"cam0": np.zeros((10, 10, 3), np.uint8)}
    with pytest.raises(ValueError, match="cam0"):
        fuse_depth_maps({"cam0": scene.depth["cam0"]}, scene.cameras, bad)


def test_pixel_stride_uses_a_quarter_of_the_source_pixels_and_stays_accurate(scene, fused_gt):
    cfg = FusionConfig(pixel_stride=2)
    cloud = fuse_depth_maps(scene.depth, scene.cameras, scene.images, cfg)
    ratio = cloud.stats["source_pixels"] / fused_gt.stats["source_pixels"]
    assert 0.22 < ratio < 0.28
    m = reconstruction_metrics(cloud.points, scene.terrain, 0, scene.seen)
    assert m["median_abs_error_mm"] < 0.05 and m["outlier_fraction"] == 0.0
    # 8 mm pixels here: a quarter of them still covers most cells within the 5 mm radius.
    assert m["completeness"] > 0.6
