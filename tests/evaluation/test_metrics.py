"""Evaluation metrics: planted reconstructions with known errors, visibility, ground-truth depth maps."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import open3d as o3d
import pytest
import torch

from aquamvs_core.camera.distortion import undistorted_intrinsics
from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.camera.undistortion import build_undistortion_map
from aquamvs_core.evaluation.metrics import (
    cell_points,
    cloud_errors,
    height_at,
    mesh_metrics,
    reconstruction_metrics,
    visibility_count,
)
from aquamvs_core.stages.depth_map import DepthMap
from aquamvs_core.synthetic import SyntheticSurveyConfig, Terrain, make_rig, make_terrain, ring_center
from aquamvs_core.synthetic.ground_truth_views import gt_depth_maps


@pytest.fixture(scope="module")
def scene() -> SimpleNamespace:
    """4 ring cameras + the fisheye auxiliary, 160×120, over a 2 mm heightfield, with GT depth maps."""
    config = SyntheticSurveyConfig(
        seed=7, n_ring_cameras=4, image_size=(160, 120), n_frames=1, terrain_cell=0.002, texel_size=0.002
    )
    rig = make_rig(config)
    terrain = make_terrain(config)
    cameras = {
        n: RefractiveCamera.from_calibration(c, rig.interface, undistorted_intrinsics(c))
        for n, c in rig.cameras.items()
    }
    masks = {n: build_undistortion_map(c).valid.numpy() for n, c in rig.cameras.items()}
    return SimpleNamespace(
        config=config,
        rig=rig,
        terrain=terrain,
        cameras=cameras,
        masks=masks,
        depth=gt_depth_maps(rig, terrain, 0),
    )


def test_gt_depth_maps_lie_on_the_ground_truth(scene):
    for name, dm in scene.depth.items():
        assert dm.depth.shape == (120, 160) and dm.depth.dtype == torch.float32
        valid = dm.valid
        # The fisheye auxiliary sees past the edges of the terrain (those rays miss it: NaN).
        assert valid.float().mean() > (0.5 if name == "aux" else 0.95), name
        assert torch.equal(dm.confidence > 0, valid)
        # Nothing outside the undistortion map's validity (the fisheye's corners are outside).
        assert not (valid.numpy() & ~scene.masks[name]).any()
        pts, ok = dm.points(scene.cameras[name])
        err = cloud_errors(pts[ok].double().numpy(), scene.terrain, 0)
        # float32 ray depth (~1e-7 m) is the only error left.
        assert np.nanmax(np.abs(err)) < 2e-3, name


def test_cloud_errors_are_signed_vertical_millimetres(scene):
    cells = cell_points(scene.terrain, 0, 10).reshape(-1, 3)
    err = cloud_errors(cells + np.array([0.0, 0.0, 0.0007]), scene.terrain, 0)
    np.testing.assert_allclose(err, 0.7, atol=1e-9)
    err = cloud_errors(cells - np.array([0.0, 0.0, 0.002]), scene.terrain, 0)
    np.testing.assert_allclose(err, -2.0, atol=1e-9)
    outside = np.array([[10.0, 10.0, 1.2]])
    assert np.isnan(cloud_errors(outside, scene.terrain, 0)).all()


def _surface_samples(terrain, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points exactly on the bilinear ground truth, uniformly in XY over the inner 80 %."""
    rng = np.random.default_rng(seed)
    x0, x1, y0, y1 = terrain.x[0], terrain.x[-1], terrain.y[0], terrain.y[-1]
    mx, my = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
    xy = np.c_[rng.uniform(x0 + mx, x1 - mx, n), rng.uniform(y0 + my, y1 - my, n)]
    return np.c_[xy, height_at(terrain, 0, xy)]


def test_metrics_of_a_planted_constant_offset(scene):
    pts = _surface_samples(scene.terrain, 50_000) + np.array([0.0, 0.0, 0.0007])
    m = reconstruction_metrics(pts, scene.terrain, 0)
    assert m["n_points"] == m["n_evaluated"] == 50_000
    assert m["median_abs_error_mm"] == pytest.approx(0.7, abs=1e-9)
    assert m["p90_abs_error_mm"] == pytest.approx(0.7, abs=1e-9)
    assert m["mean_error_mm"] == pytest.approx(0.7, abs=1e-9)
    assert m["outlier_fraction"] == 0.0


def test_planted_outliers_are_counted(scene):
    pts = _surface_samples(scene.terrain, 40_000, seed=1) + np.array([0.0, 0.0, 0.0007])
    n_out = 1200  # 3 %
    pts[:n_out, 2] += 0.020
    m = reconstruction_metrics(pts, scene.terrain, 0, outlier_mm=10.0)
    assert m["outlier_fraction"] == pytest.approx(0.03, abs=1e-12)
    assert m["median_abs_error_mm"] == pytest.approx(0.7, abs=1e-9)  # the median ignores them
    assert m["p90_abs_error_mm"] == pytest.approx(0.7, abs=1e-9)
    assert m["mean_error_mm"] == pytest.approx(0.7 + 0.03 * 20.0, abs=1e-6)


def test_completeness_drops_by_the_removed_fraction(scene):
    step = 2
    cells = cell_points(scene.terrain, 0, step)
    vis = visibility_count(scene.terrain, 0, scene.cameras, scene.masks, scene.depth, cell_step=step)
    seen = vis >= 2
    pts = cells[seen]  # a perfect reconstruction of every seen cell
    full = reconstruction_metrics(pts, scene.terrain, 0, seen, cell_step=step)
    assert full["completeness"] == 1.0 and full["median_abs_error_mm"] == 0.0
    assert full["n_cells"] == seen.sum()

    # Remove every point west of x_cut: the cells more than 5 mm west of it (in XY, so also in 3-D)
    # become incomplete; cells within 5 mm of the cut may still have a neighbour east of it.
    x_cut = float(np.median(pts[:, 0]))
    kept = pts[pts[:, 0] >= x_cut]
    cut = reconstruction_metrics(kept, scene.terrain, 0, seen, cell_step=step)
    seen_x = cells[seen][:, 0]
    lost_surely = np.mean(seen_x < x_cut - 0.005)
    lost_at_most = np.mean(seen_x < x_cut)
    assert 1 - lost_at_most <= cut["completeness"] <= 1 - lost_surely
    assert cut["completeness"] == pytest.approx(0.5, abs=0.02)


def test_seen_mask_shape_is_checked(scene):
    with pytest.raises(ValueError, match="seen_mask"):
        reconstruction_metrics(np.zeros((1, 3)), scene.terrain, 0, np.ones((3, 3), bool), cell_step=2)


def _cell_index(terrain, step: int, xy: tuple[float, float]) -> tuple[int, int]:
    x, y = terrain.x[::step], terrain.y[::step]
    return int(np.argmin(np.abs(y - xy[1]))), int(np.argmin(np.abs(x - xy[0])))


def test_visibility_below_the_rig_and_outside_every_frustum(scene):
    step = 4
    vis = visibility_count(scene.terrain, 0, scene.cameras, scene.masks, scene.depth, cell_step=step)
    assert vis.shape == cell_points(scene.terrain, 0, step).shape[:2]
    centre = _cell_index(scene.terrain, step, tuple(ring_center(scene.config)[:2]))
    assert vis[centre] == len(scene.cameras) == 5
    corner = (0, 0)  # the terrain's corner, far outside every view
    assert vis[corner] == 0
    assert vis.max() == 5 and (vis >= 2).mean() > 0.4

    # An occluder in front of cam1 everywhere (its depth map says 5 cm nearer): cam1 no longer counts.
    occluded = dict(scene.depth)
    d = scene.depth["cam1"]
    occluded["cam1"] = DepthMap("cam1", d.depth - 0.05, d.confidence)
    vis_occ = visibility_count(scene.terrain, 0, scene.cameras, scene.masks, occluded, cell_step=step)
    assert vis_occ[centre] == 4
    assert np.all(vis_occ <= vis) and (vis_occ < vis).any()

    # A mask that rejects everything of cam2.
    masks = dict(scene.masks)
    masks["cam2"] = np.zeros_like(masks["cam2"])
    vis_mask = visibility_count(scene.terrain, 0, scene.cameras, masks, scene.depth, cell_step=step)
    assert vis_mask[centre] == 4


def test_mesh_metrics_of_an_offset_plane():
    terrain = Terrain.flat(z=1.2, center=(0.0, 0.0), size=0.2, cell=0.004)
    xs = np.linspace(-0.08, 0.08, 41)
    xx, yy = np.meshgrid(xs, xs)
    vertices = np.c_[xx.ravel(), yy.ravel(), np.full(xx.size, 1.2007)]
    idx = np.arange(xx.size).reshape(41, 41)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    tris = np.concatenate([np.c_[a, c, b], np.c_[b, c, d]])
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(tris))
    m = mesh_metrics(mesh, terrain, 0, n_samples=20_000)
    assert m["n_points"] == 20_000 and m["n_triangles"] == tris.shape[0]
    assert m["median_abs_error_mm"] == pytest.approx(0.7, abs=1e-9)
    assert m["vertex_median_abs_error_mm"] == pytest.approx(0.7, abs=1e-9)
    # The mesh covers the central 0.16 × 0.16 m of the 0.2 × 0.2 m ground truth.
    assert m["completeness"] == pytest.approx((0.16 + 0.01) ** 2 / 0.2**2, abs=0.03)
