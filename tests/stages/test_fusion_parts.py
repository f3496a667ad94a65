"""Fusion's parts against independent computations: the fast projection against the camera's own
exact projection, the witness read against the generic sampler, the voxel grid, outlier removal and
normals against Open3D, and the tile culling against an exhaustive projection."""

from __future__ import annotations

import math

import numpy as np
import open3d as o3d
import open3d.core as o3c
import pydantic
import pytest
import torch

from aquamvs_core.camera.lens import Lens
from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.camera.sampling import sample_flat_bilinear
from aquamvs_core.stages.depth_map import DepthMap
from aquamvs_core.stages.fusion import FusionConfig, FusionView, fuse_depth_maps, fuse_views, project_points
from aquamvs_core.stages.fusion.cleanup import VOXEL_ATTRS, VoxelGrid, insert_sorted, outliers_and_normals
from aquamvs_core.stages.fusion.consistency import source_points, tile_boxes, tiles_seen
from aquamvs_core.stages.fusion.views import prepare_view, sample_view


def _tilted_camera(tilt_deg: float = 25.0, size: tuple[int, int] = (320, 240)) -> RefractiveCamera:
    a = math.radians(tilt_deg)
    R = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    K = np.array([[250.0, 0.3, 160.0], [0, 252.0, 118.0], [0, 0, 1]])
    centre = np.array([0.12, -0.05, 0.0])
    return RefractiveCamera(K, R, -R @ centre, water_z=0.7, image_size=size)


def test_fast_projection_is_the_exact_projection():
    cam = _tilted_camera()
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(-1.5, 1.5, (4000, 2)), rng.uniform(0.71, 2.0, 4000)]
    pts = np.r_[pts, [[0.0, 0.0, 0.5], [0.3, 0.2, 0.7], [5.0, 5.0, 0.7001]]]  # above, at, grazing
    x = torch.from_numpy(pts)
    uv_ref, ok_ref = cam.project(x)
    p = project_points(cam, x)
    assert torch.equal(p.valid, ok_ref)
    assert not p.valid[-3:-1].any()
    err = torch.maximum((p.u - uv_ref[:, 0]).abs(), (p.v - uv_ref[:, 1]).abs())[ok_ref]
    assert float(err.max()) < 1e-7
    # The crossing lies on the water, on the camera's ray through the returned pixel.
    origins, _, _ = cam.cast_ray(torch.stack([p.u, p.v], 1)[ok_ref])
    np.testing.assert_allclose(origins[:, 0], p.cross_x[ok_ref], atol=1e-9)
    np.testing.assert_allclose(origins[:, 1], p.cross_y[ok_ref], atol=1e-9)
    # No Newton step: every point goes to the exact solver, same result.
    p0 = project_points(cam, x, steps=0)
    assert torch.equal(p0.valid, ok_ref)
    assert float((p0.u - uv_ref[:, 0]).abs()[ok_ref].max()) < 1e-7
    # float32 points: pixels in the image to ~1e-4 px.
    p32 = project_points(cam, x.float())
    in_image = ok_ref & cam.in_image(uv_ref)
    assert in_image.sum() > 500
    assert float((p32.u.double() - uv_ref[:, 0]).abs()[in_image].max()) < 1e-3
    assert float((p32.v.double() - uv_ref[:, 1]).abs()[in_image].max()) < 1e-3


def test_witness_read_is_the_generic_bilinear_read():
    rng = np.random.default_rng(1)
    h, w = 40, 50
    depth = 0.5 + 0.01 * rng.standard_normal((h, w)).astype(np.float32)
    depth[rng.random((h, w)) < 0.1] = np.nan
    conf = rng.uniform(0.0, 1.0, (h, w)).astype(np.float32)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    dm = DepthMap("c", torch.from_numpy(depth), torch.from_numpy(conf))
    view = prepare_view("c", FusionView(dm, image), _tilted_camera(), 0.2, torch.device("cpu"))
    n = 20000
    u = torch.from_numpy(rng.uniform(-1.2, w + 0.2, n).astype(np.float32))
    v = torch.from_numpy(rng.uniform(-1.2, h + 0.2, n).astype(np.float32))
    tol = torch.from_numpy(rng.uniform(0.0, 0.02, n).astype(np.float32))
    # Away from pixel edges and centres, where float rounding may pick the other neighbour.
    frac_u, frac_v = (u * 2).frac().abs(), (v * 2).frac().abs()
    clear = (frac_u > 1e-3) & (frac_u < 1 - 1e-3) & (frac_v > 1e-3) & (frac_v < 1 - 1e-3)
    u, v, tol = u[clear], v[clear], tol[clear]
    got = sample_view(view, u, v, tol)
    flat = view.planes.reshape(5, -1).T.contiguous()
    ref, ok, col_ok = sample_flat_bilinear(flat, h, w, torch.stack([u, v], 1), tol, 2)
    assert torch.equal(got.seen, ok) and torch.equal(got.color_ok, col_ok)
    # grid_sample's float32 coordinates: weights to ~1e-5 (random neighbours differ by up to 1 in
    # confidence and 255 in colour; depths by ~0.01 m).
    np.testing.assert_allclose(got.depth[ok], ref[ok, 0], atol=1e-6)
    np.testing.assert_allclose(got.conf[ok], ref[ok, 1], atol=3e-5)
    np.testing.assert_allclose(got.color.T[col_ok], ref[col_ok, 2:], atol=1e-2)
    assert 0.5 < ok.float().mean() < 0.95  # the case mixes bilinear, nearest and unseen reads


def _old_voxel_pipeline(cameras: list[dict[str, np.ndarray]], voxel: float) -> dict[str, np.ndarray]:
    """Per-camera Open3D voxel means, then Open3D's voxel means of all of them together."""

    def down(attrs):
        pcd = o3d.t.geometry.PointCloud(o3c.Tensor(attrs["positions"]))
        for k in VOXEL_ATTRS:
            pcd.point[k] = o3c.Tensor(np.ascontiguousarray(attrs[k]))
        d = pcd.voxel_down_sample(voxel)
        return {k: d.point[k].numpy() for k in ("positions", *VOXEL_ATTRS)}

    per = [down(a) for a in cameras]
    return down({k: np.concatenate([p[k] for p in per]) for k in per[0]})


def test_voxel_grid_is_open3d_per_camera_then_all_together():
    rng = np.random.default_rng(3)
    cams = []
    for c in range(3):
        n = 6000
        pos = rng.uniform(-0.01, 0.01, (n, 3)) * [1.0, 1.0, 0.2] + [0.001 * c, 0.0, 0.9]
        w = rng.uniform(0.1, 1.0, (n, 1))
        cams.append(
            {
                "positions": pos,
                "w": w,
                "wpos": w * pos,
                "wcol": w * rng.uniform(0, 255, (n, 3)),
                "wview": w * rng.normal(size=(n, 3)),
                "support": rng.integers(2, 6, (n, 1)).astype(np.float64),
            }
        )
    ref = _old_voxel_pipeline(cams, 0.001)
    grid = VoxelGrid(0.001)
    for a in cams:
        grid.add(a["positions"], a)
    got = grid.means()
    assert len(grid) == ref["w"].shape[0]
    got_pts, ref_pts = got["wpos"] / got["w"], ref["wpos"] / ref["w"]
    i, j = np.lexsort(np.floor(got_pts / 0.001).T), np.lexsort(np.floor(ref_pts / 0.001).T)
    for k in VOXEL_ATTRS:
        np.testing.assert_allclose(got[k][i], ref[k][j], rtol=1e-6, atol=1e-7)


def test_insert_sorted_is_numpys_insert():
    rng = np.random.default_rng(4)
    keys = np.sort(rng.choice(1000, 300, replace=False))
    columns = rng.normal(size=(4, keys.size))
    new_keys = np.setdiff1d(rng.choice(1200, 200, replace=False), keys)  # sorted, some past the end
    new_columns = rng.normal(size=(4, new_keys.size))
    at = np.searchsorted(keys, new_keys)
    got_keys, got_columns = insert_sorted(keys, columns, at, new_keys, new_columns)
    np.testing.assert_array_equal(got_keys, np.insert(keys, at, new_keys))
    np.testing.assert_array_equal(got_columns, np.insert(columns, at, new_columns, axis=1))
    assert np.all(np.diff(got_keys) > 0)
    empty_keys, empty_columns = insert_sorted(
        keys[:0], columns[:, :0], np.zeros(3, int), keys[:3], columns[:, :3]
    )
    np.testing.assert_array_equal(empty_keys, keys[:3])
    np.testing.assert_array_equal(empty_columns, columns[:, :3])


def _surface_with_outliers(n: int = 30000, seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-0.1, 0.1, (n, 2))
    z = 1.0 + 0.01 * np.sin(30 * xy[:, 0]) * np.cos(20 * xy[:, 1]) + rng.normal(0, 1e-4, n)
    pts = np.c_[xy, z]
    far = rng.uniform(-0.1, 0.1, (20, 3))
    far[:, 2] += 1.0 + rng.choice([-1, 1], 20) * rng.uniform(0.1, 0.2, 20)
    return np.r_[pts, far]


def test_outlier_removal_and_normals_match_open3d():
    pts = _surface_with_outliers()
    keep, normals = outliers_and_normals(pts, 20, 3.0, 30)
    pcd = o3d.t.geometry.PointCloud(o3c.Tensor(pts))
    _, ref_keep = pcd.remove_statistical_outliers(20, 3.0)
    np.testing.assert_array_equal(keep, ref_keep.numpy())
    assert not keep[-20:].any() and keep[:-20].mean() > 0.995  # the planted outliers go
    kept = o3d.t.geometry.PointCloud(o3c.Tensor(pts[keep]))
    kept.estimate_normals(max_nn=30)
    ref = kept.point.normals.numpy()
    dots = np.abs(np.einsum("ij,ij->i", normals, ref))
    assert np.quantile(dots, 0.999) > 1 - 1e-9 and dots.min() > 0.99
    # A search radius: Open3D's hybrid search (at most max_nn neighbours within the radius).
    _, normals_r = outliers_and_normals(pts[keep], 0, 1.0, 30, radius=0.002)
    kept.estimate_normals(max_nn=30, radius=0.002)
    dots = np.abs(np.einsum("ij,ij->i", normals_r, kept.point.normals.numpy()))
    few = ~np.isfinite(dots)  # fewer than 3 neighbours within the radius: no normal (NaN)
    assert few.mean() < 0.01
    assert np.median(dots[~few]) > 1 - 1e-9 and np.quantile(dots[~few], 0.99) > 0.9999


def test_normals_computed_side_by_side_are_those_of_one_thread_and_of_open3d(monkeypatch):
    """The neighbour search in 8 chunks whose normals are computed 3 at a time: bit for bit the
    normals of one thread, and Open3D's. Points 3 mm above the surface are removed as outliers and
    are among the nearest of the points below them, whose normals then come from their other
    neighbours (the masked path)."""
    from aquamvs_core.stages.fusion import cleanup

    surface = _surface_with_outliers()[:-20]
    above = surface[:12] - [0.0, 0.0, 0.003]
    pts = np.r_[above, surface]
    monkeypatch.setattr(cleanup, "KNN_CHUNK", 4096)
    keep, normals = outliers_and_normals(pts, 20, 3.0, 30, workers=3)
    keep_1, normals_1 = outliers_and_normals(pts, 20, 3.0, 30, workers=1)
    assert not keep[:12].any() and keep[12:].mean() > 0.99
    np.testing.assert_array_equal(keep, keep_1)
    np.testing.assert_array_equal(normals, normals_1)
    kept = o3d.t.geometry.PointCloud(o3c.Tensor(pts[keep]))
    kept.estimate_normals(max_nn=30)
    dots = np.abs(np.einsum("ij,ij->i", normals, kept.point.normals.numpy()))
    assert np.quantile(dots, 0.999) > 1 - 1e-9 and dots.min() > 0.99


def test_tile_culling_keeps_every_point_that_projects_near_the_image(gt_scene):
    names = list(gt_scene.depth)
    cams = dict(gt_scene.cameras)
    culled = []
    for src in names:
        view = prepare_view(src, FusionView(gt_scene.depth[src]), cams[src], 0.1, torch.device("cpu"))
        pts, _ = source_points(view, 1, 1.5, 0.001, 1 << 16)
        used, corners = tile_boxes(pts)
        for wit in names:
            if wit == src:
                continue
            h, w = gt_scene.depth[wit].depth.shape
            seen = tiles_seen(cams[wit], (h, w), used, corners, pts.n_tiles)[pts.tile]
            p = project_points(cams[wit], pts.cols[:3].T.double())
            near = p.valid & (p.u > -1) & (p.u < w) & (p.v > -1) & (p.v < h)
            assert not bool((near & ~seen).any()), (src, wit)
            culled.append(1.0 - float(seen.float().mean()))
    # It does leave points out (16-pixel tiles are coarse on these 160×120 images).
    assert max(culled) > 0.01


def test_streamed_views_give_the_same_cloud_whatever_the_cache(gt_scene):
    calls: list[str] = []

    def load(name: str) -> FusionView:
        calls.append(name)
        return FusionView(gt_scene.depth[name], gt_scene.images[name])

    sizes = {n: tuple(dm.depth.shape) for n, dm in gt_scene.depth.items()}
    base = FusionConfig(outlier_neighbors=0)
    roomy = fuse_views(load, sizes, gt_scene.cameras, base)
    assert sorted(calls) == sorted(sizes) and roomy.stats["view_loads"] == len(sizes)
    calls.clear()
    tight = fuse_views(load, sizes, gt_scene.cameras, base.model_copy(update={"view_cache_mb": 0}))
    assert len(calls) > len(sizes)  # one view at a time: reloaded when needed again
    np.testing.assert_array_equal(tight.points, roomy.points)
    np.testing.assert_array_equal(tight.colors, roomy.colors)
    same = fuse_depth_maps(gt_scene.depth, gt_scene.cameras, gt_scene.images, base)
    np.testing.assert_array_equal(same.points, roomy.points)


def test_a_camera_that_sees_nothing_of_the_source_is_never_loaded_as_its_witness(gt_scene):
    names = list(gt_scene.depth)[:2]
    cams = {n: gt_scene.cameras[n] for n in names}
    c = gt_scene.cameras[names[0]]
    away = RefractiveCamera(
        c.K, c.R, c.t - c.R @ torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64), c.water_z
    )
    cams["away"] = away
    depth = {**{n: gt_scene.depth[n] for n in names}, "away": gt_scene.depth[names[0]]}
    calls: list[str] = []

    def load(name: str) -> FusionView:
        calls.append(name)
        return FusionView(depth[name])

    sizes = {n: tuple(dm.depth.shape) for n, dm in depth.items()}
    cloud = fuse_views(load, sizes, cams, FusionConfig(outlier_neighbors=0))
    assert calls.count("away") == 1  # only as a source
    assert cloud.stats["witnesses"] == 2  # each of the two real cameras for the other
    wrong = FusionConfig(outlier_neighbors=0)
    with pytest.raises(ValueError, match="expected"):
        fuse_views(load, {**sizes, names[0]: (10, 10)}, cams, wrong)


# -- cameras on their original pixel grid (lens model in the camera) ---------------------------------

#: The real lab rig's strong barrel distortion (k1, k2, p1, p2, k3): folds ~44° off axis.
LAB_DIST = np.array([-0.5, 0.3, 0.0008, -0.0011, -0.17])


def _lens_camera(tilt_deg: float = 10.0) -> RefractiveCamera:
    a = math.radians(tilt_deg)
    R = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    K = np.array([[326.0, 0.0, 160.6], [0, 325.4, 119.1], [0, 0, 1]])
    centre = np.array([0.12, -0.05, 0.0])
    return RefractiveCamera(K, R, -R @ centre, water_z=0.7, image_size=(320, 240), lens=Lens(LAB_DIST, False))


@pytest.mark.parametrize("dtype, tol_px", [(torch.float64, 1e-7), (torch.float32, 2e-3)])
def test_fast_projection_through_a_lens_is_the_cameras_exact_projection(dtype, tol_px):
    """Fusion's and mesh colouring's fast projection, for a camera with the lab lens: the same pixels
    of the original image as RefractiveCamera.project (the lens applied), the same validity (points
    past the lens model's fold are invalid, not wrong pixels) and the crossing of the projected
    pixel's ray."""
    cam = _lens_camera()
    pinhole = RefractiveCamera(cam.K, cam.R, cam.t, cam.water_z, image_size=cam.image_size)
    rng = np.random.default_rng(3)
    pts = np.c_[rng.uniform(-1.8, 1.8, (6000, 2)), rng.uniform(0.71, 1.6, 6000)]
    x = torch.from_numpy(pts)
    uv_ref, ok_ref = cam.project(x)
    _, ok_pinhole = pinhole.project(x)
    beyond_fold = ok_pinhole & ~ok_ref
    assert int(beyond_fold.sum()) > 100  # the test has points past the fold
    in_image = ok_ref & cam.in_image(uv_ref)
    assert int(in_image.sum()) > 300
    p = project_points(cam, x.to(dtype))
    if dtype == torch.float64:
        assert torch.equal(p.valid, ok_ref)
        err = torch.maximum((p.u - uv_ref[:, 0]).abs(), (p.v - uv_ref[:, 1]).abs())[ok_ref]
    else:
        assert torch.equal(p.valid[in_image], ok_ref[in_image]) and not bool(p.valid[beyond_fold].any())
        err = torch.maximum((p.u.double() - uv_ref[:, 0]).abs(), (p.v.double() - uv_ref[:, 1]).abs())[
            in_image
        ]
    assert float(err.max()) < tol_px
    # Not the pinhole pixels: the lens moves image points by tens of pixels here.
    uv_pin, _ = pinhole.project(x)
    assert float((uv_pin - uv_ref)[in_image].norm(dim=1).max()) > 20.0
    # The crossing is where the ray of the projected pixel leaves the water (project_rays' origin).
    _, _, origins, _ = cam.project_rays(x)
    valid = p.valid & ok_ref
    np.testing.assert_allclose(
        p.cross_x[valid].double(), origins[valid, 0], atol=1e-9 if tol_px < 1e-6 else 1e-5
    )
    np.testing.assert_allclose(
        p.cross_y[valid].double(), origins[valid, 1], atol=1e-9 if tol_px < 1e-6 else 1e-5
    )


@pytest.fixture(scope="module")
def lab_lens_scene():
    """4 ring cameras with the lab lenses (k1 ≈ −0.5, half of them folding 45–48° off axis) at
    160×120, on their *original* pixel grids: lens cameras, raw renders and the exact ground-truth
    ray depth of every original pixel (the renderer's trace)."""
    from types import SimpleNamespace

    from aquamvs_core.evaluation.lens_visibility import original_depth_map, original_visibility_count
    from aquamvs_core.synthetic import SyntheticSurveyConfig, make_rig, make_terrain, render_view

    config = SyntheticSurveyConfig(
        seed=7,
        n_ring_cameras=4,
        auxiliary_camera=False,
        image_size=(160, 120),
        n_frames=1,
        supersample=1,
        terrain_cell=0.002,
        texel_size=0.001,
        lens_profile="lab",
    )
    rig, terrain = make_rig(config), make_terrain(config)
    cameras, images, depth = {}, {}, {}
    for name, cam in rig.cameras.items():
        cameras[name] = RefractiveCamera.from_calibration(cam, rig.interface, with_lens=True)
        images[name] = render_view(cam, rig.interface, terrain, 0)
        d = original_depth_map(cam, rig.interface, terrain, 0)[..., 0]
        depth[name] = DepthMap(name, d, torch.isfinite(d).float())
    seen = original_visibility_count(terrain, 0, rig) >= 2
    return SimpleNamespace(rig=rig, terrain=terrain, cameras=cameras, images=images, depth=depth, seen=seen)


def test_fusing_exact_original_grid_depth_maps_with_lab_lenses(lab_lens_scene):
    """Fusion of exact depth maps on the original pixel grids of strongly distorted lenses is as
    accurate and complete as on undistorted images: witnesses are read at the lens-distorted
    pixels of the fast projection (reading them at pinhole pixels would reject most points)."""
    from aquamvs_core.evaluation.metrics import reconstruction_metrics

    s = lab_lens_scene
    cloud = fuse_depth_maps(s.depth, s.cameras, s.images)
    m = reconstruction_metrics(cloud.points, s.terrain, 0, s.seen)
    assert m["median_abs_error_mm"] < 0.05
    assert m["p90_abs_error_mm"] < 0.2
    assert m["outlier_fraction"] == 0.0
    assert m["completeness"] > 0.95
    assert cloud.support.min() >= 2 and np.mean(cloud.support == 4) > 0.3
    assert 60 < np.median(cloud.colors.astype(float)) < 230


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_tile_culling_keeps_every_point_that_projects_near_a_lens_image(lab_lens_scene, stride):
    """The tiles' corner boxes bound their points' projections through the strong lab lenses too
    (the lens compresses the periphery: projections stay inside the corners' pixel box), also with
    a pixel stride, whose tiles are as many times larger."""
    s = lab_lens_scene
    names = list(s.depth)
    for src in names:
        view = prepare_view(src, FusionView(s.depth[src]), s.cameras[src], 0.1, torch.device("cpu"))
        pts, _ = source_points(view, stride, 1.5, 0.001, 1 << 16)
        assert len(pts) > 5000 // stride**2
        used, corners = tile_boxes(pts)
        for wit in names:
            if wit == src:
                continue
            h, w = s.depth[wit].depth.shape
            seen = tiles_seen(s.cameras[wit], (h, w), used, corners, pts.n_tiles)[pts.tile]
            p = project_points(s.cameras[wit], pts.cols[:3].T.double())
            near = p.valid & (p.u > -1) & (p.u < w) & (p.v > -1) & (p.v < h)
            assert int(near.sum()) > 1000, (src, wit)
            assert not bool((near & ~seen).any()), (src, wit)


def _nadir_view(f_px: float, height_m: float, depth_m: float) -> tuple:
    """A pinhole looking straight down from ``height_m`` above the water with one depth, ``depth_m``
    along the ray of its principal point (a whole pixel), and the other pixels without depth."""
    w, h = 101, 81
    K = np.array([[f_px, 0, 50.0], [0, f_px, 40.0], [0, 0, 1]])
    water_z = 0.7
    cam = RefractiveCamera(
        K, np.eye(3), -np.array([0.0, 0.0, water_z - height_m]), water_z, image_size=(w, h)
    )
    depth = torch.full((h, w), math.nan)
    depth[40, 50] = depth_m
    view = prepare_view(
        "nadir", FusionView(DepthMap("nadir", depth, torch.ones(h, w))), cam, 0.1, torch.device("cpu")
    )
    return view, cam


def test_pixel_footprint_is_the_analytic_spacing_of_neighbouring_rays_on_the_bed():
    from aquamvs_core.stages.fusion.consistency import pixel_footprint_mm

    f_px, height, depth = 800.0, 0.5, 0.45
    view, cam = _nadir_view(f_px, height, depth)
    # The neighbour's air ray leaves at angle a = atan(1/f) from the vertical, crosses the water
    # height·tan(a) from the nadir and bends to sin(b) = sin(a) n_air / n_water; its point at the
    # same ray depth lies depth·(sin b, cos b) beyond the crossing; the centre's point lies straight down.
    depth = float(np.float32(depth))  # the depth as fusion holds it
    a = math.atan(1.0 / f_px)
    b = math.asin(math.sin(a) * cam.n_air / cam.n_water)
    lateral = height * math.tan(a) + depth * math.sin(b)
    vertical = depth - depth * math.cos(b)
    expected_mm = math.hypot(lateral, vertical) * 1e3
    assert pixel_footprint_mm(view) == pytest.approx(expected_mm, rel=1e-9)
    # About (height + depth / n) / f: 1.05 mm a pixel here.
    assert expected_mm == pytest.approx((height + depth / cam.n_water) / f_px * 1e3, rel=1e-4)
    no_depth = prepare_view(
        "none",
        FusionView(DepthMap("none", torch.full((81, 101), math.nan), torch.ones(81, 101))),
        cam,
        0.1,
        torch.device("cpu"),
    )
    assert math.isnan(pixel_footprint_mm(no_depth))


def test_auto_pixel_stride_keeps_source_points_within_the_spacing(gt_scene):
    from aquamvs_core.stages.fusion.consistency import auto_pixel_stride, pixel_footprint_mm

    view, _ = _nadir_view(800.0, 0.5, 0.45)
    fp = pixel_footprint_mm(view)
    assert auto_pixel_stride(view, 0.5 * fp) == 1  # coarser pixels than the spacing: every pixel
    assert auto_pixel_stride(view, 1.99 * fp) == 1
    assert auto_pixel_stride(view, 2.01 * fp) == 2
    assert auto_pixel_stride(view, 3.5 * fp) == 3
    assert auto_pixel_stride(view, 100 * fp) == 8  # at most 8
    # In fusion, per camera: the shared scene's 8 mm pixels keep stride 1 at a 2 mm spacing (the
    # cloud is the default one), and a 20 mm spacing takes every second pixel of 8-9 mm pixels.
    names = list(gt_scene.depth)
    fp_scene = {
        n: pixel_footprint_mm(
            prepare_view(n, FusionView(gt_scene.depth[n]), gt_scene.cameras[n], 0.1, torch.device("cpu"))
        )
        for n in names
    }
    assert all(7.0 < v < 10.0 for v in fp_scene.values()), fp_scene
    auto = fuse_depth_maps(gt_scene.depth, gt_scene.cameras, None, FusionConfig())
    one = fuse_depth_maps(gt_scene.depth, gt_scene.cameras, None, FusionConfig(pixel_stride=1))
    assert auto.stats["pixel_stride"] == {n: 1 for n in names}
    np.testing.assert_array_equal(auto.points, one.points)
    wide = fuse_depth_maps(gt_scene.depth, gt_scene.cameras, None, FusionConfig(source_spacing_mm=20.0))
    assert wide.stats["pixel_stride"] == {n: 2 for n in names}
    two = fuse_depth_maps(gt_scene.depth, gt_scene.cameras, None, FusionConfig(pixel_stride=2))
    np.testing.assert_array_equal(wide.points, two.points)
    with pytest.raises(pydantic.ValidationError):
        FusionConfig(pixel_stride=9)
    with pytest.raises(pydantic.ValidationError):
        FusionConfig(pixel_stride="sometimes")
