"""Refractive plane-sweep stereo (aquamvs_core.stages.stereo) against exact geometry and ray-traced
ground truth.

Scenes are small (200×150, 6 ring cameras, no lens distortion) renders of the built-in synthetic
bed (:mod:`aquamvs_core.synthetic`); ground truth comes from :func:`trace_pixels` of the same
pixels. At this size one pixel of disparity between neighbouring cameras is about 30 mm of depth,
so the depth bounds below are ~0.04 px of matching precision.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aquamvs_core.camera.distortion import distort_pixels, undistorted_intrinsics
from aquamvs_core.camera.refraction import RefractiveCamera, point_at_ray_depth, world_z_to_ray_depth
from aquamvs_core.camera.sampling import pixel_grid
from aquamvs_core.stages.depth_map import DepthMap, z_range_from_samples
from aquamvs_core.stages.stereo import (
    PRESETS,
    CameraDepth,
    PairDepth,
    PlaneSweepConfig,
    StereoView,
    build_warp_field,
    combine_pair_depths,
    depth_for_camera,
    parabola_peak,
    prepare_image,
    resolve_z_range,
    sweep_pair,
)
from aquamvs_core.stages.stereo import combine as combine_module
from aquamvs_core.stages.stereo.ncc import RefWindows, ref_windows, slice_ncc, window_sum
from aquamvs_core.synthetic import (
    SyntheticSurveyConfig,
    Terrain,
    make_rig,
    make_terrain,
    render_view,
    trace_pixels,
)

W, H = 200, 150
Z_RANGE = (1.15, 1.25)


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------


class Scene:
    """A small rendered scene: undistorted images (no lens distortion), cameras and ground truth."""

    def __init__(self, terrain_kind: str, cameras: tuple[str, ...] = ("cam0", "cam1", "cam5", "cam2")):
        cfg = SyntheticSurveyConfig(
            image_size=(W, H),
            lens_distortion=False,
            auxiliary_camera=False,
            n_ring_cameras=6,
            terrain_size=2.0,  # no terrain edge in view (its straight edge on a flat background is ambiguous)
            terrain_cell=0.002,
            texel_size=0.001,
            texture_blur=0.001,
            n_frames=1,
        )
        self.rig = make_rig(cfg)
        relief = make_terrain(cfg)
        if terrain_kind == "flat":
            self.terrain = Terrain.flat(
                1.2, center=(-0.3, 0.0), size=2.0, cell=0.002, texture=relief.texture, texel_size=0.001
            )
        else:
            self.terrain = relief
        self.interface = self.rig.interface
        self.cams = {n: RefractiveCamera.from_calibration(self.rig[n], self.interface) for n in cameras}
        self.images = {n: render_view(self.rig[n], self.interface, self.terrain, 0) for n in cameras}
        pix = pixel_grid(W, H, dtype=torch.float64).reshape(-1, 2)
        hits = trace_pixels(self.rig["cam0"], self.interface, self.terrain, 0, pix)
        self.gt_z = hits.points[:, 2].reshape(H, W)
        self.gt_points = torch.from_numpy(hits.points.reshape(H, W, 3))

    def z_error_mm(self, world_z: torch.Tensor) -> np.ndarray:
        return np.abs(world_z.double().numpy() - self.gt_z) * 1e3

    def seen_by(self, src: str, margin: float = 0.0) -> np.ndarray:
        """(H, W) reference pixels whose true bed point projects inside ``src``'s image (``margin`` px in)."""
        pts = torch.nan_to_num(self.gt_points, nan=0.0)
        uv, ok = self.cams[src].project(pts)
        inside = self.cams[src].in_image(uv, margin) if margin >= 0 else self.cams[src].in_image(uv)
        return (ok & inside).numpy() & np.isfinite(self.gt_z)

    def distance_outside(self, src: str) -> np.ndarray:
        """(H, W) how far (px) outside ``src``'s image the true point projects (negative: inside)."""
        pts = torch.nan_to_num(self.gt_points, nan=0.0)
        uv, _ = self.cams[src].project(pts)
        u, v = uv[..., 0].numpy(), uv[..., 1].numpy()
        d = np.maximum.reduce([-0.5 - u, u - (W - 0.5), -0.5 - v, v - (H - 0.5)])
        return np.where(np.isfinite(self.gt_z), d, np.nan)


@pytest.fixture(scope="module")
def flat_scene() -> Scene:
    return Scene("flat")


@pytest.fixture(scope="module")
def relief_scene() -> Scene:
    return Scene("relief")


def _sweep(scene: Scene, src: str, config: PlaneSweepConfig | None = None, **kw) -> PairDepth:
    return sweep_pair(
        scene.images["cam0"],
        scene.images[src],
        scene.cams["cam0"],
        scene.cams[src],
        config=config or PlaneSweepConfig(),
        z_range=Z_RANGE,
        names=("cam0", src),
        **kw,
    )


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def test_config_validation_and_presets():
    assert set(PRESETS) == {"fast", "balanced", "quality"}
    assert PRESETS["balanced"] == PlaneSweepConfig()
    assert PRESETS["balanced"].num_depths == 128
    for bad in (
        {"window": 8},
        {"z_min": 1.0},
        {"z_min": 1.2, "z_max": 1.1},
        {"refine_schedule": ((0, 0.5), (1, 0.5))},  # levels must not increase
        {"refine_schedule": ((3, 0.5),)},  # above coarse_level
        {"device": "no-such-device"},
        {"min_valid_fraction": 0.0},
    ):
        with pytest.raises(ValueError):
            PlaneSweepConfig(**bad)
    cfg = PlaneSweepConfig(z_min=1.1, z_max=1.3)
    assert resolve_z_range(cfg, 0.7) == (1.1, 1.3)
    assert resolve_z_range(cfg, 0.7, (1.0, 1.4)) == (1.0, 1.4)
    assert resolve_z_range(PlaneSweepConfig(), 0.7) == pytest.approx((0.75, 2.7))
    z = np.linspace(1.18, 1.22, 101)
    lo, hi = z_range_from_samples(z, 0.7, percentiles=(0.0, 100.0), margin_m=0.02)
    assert lo == pytest.approx(1.16) and hi == pytest.approx(1.24)


# --------------------------------------------------------------------------------------------
# Warp
# --------------------------------------------------------------------------------------------


def _exact_warp(ref: RefractiveCamera, src: RefractiveCamera, pixels: torch.Tensor, z: torch.Tensor):
    origins, directions, _ = ref.cast_ray(pixels)
    depth = world_z_to_ray_depth(directions, z, ref.water_z)
    return src.project(point_at_ray_depth(origins, directions, depth))[0]


def _grid_to_px(grid: torch.Tensor, lw, pad: int, src_size: tuple[int, int]) -> torch.Tensor:
    """Level-0 grid coordinates (align_corners=True, padded by ``pad``) back to source pixels."""
    sw, sh = src_size
    u = (grid[..., 0] + 1) * (sw + 2 * pad - 1) / 2 - pad
    v = (grid[..., 1] + 1) * (sh + 2 * pad - 1) / 2 - pad
    return torch.stack([u, v], dim=-1)


def test_warp_interpolation_error_against_exact_projection():
    """Default survey geometry (640×480, distorted lenses → undistorted K): the lattice warp is within
    0.01 px (measured ~1e-4 px) of the exact per-pixel refractive warp, for a neighbour, the opposite
    camera and the fisheye auxiliary, at depths between the fit nodes."""
    rig = make_rig(SyntheticSurveyConfig())
    cams = {
        n: RefractiveCamera.from_calibration(rig[n], rig.interface, undistorted_intrinsics(rig[n]))
        for n in ("cam0", "cam1", "cam4", "aux")
    }
    ref = cams["cam0"]
    w, h = ref.image_size
    pix = pixel_grid(w, h, dtype=torch.float64)[::3, ::3]  # every 3rd pixel: off the lattice too
    zs = (1.1537, 1.2011, 1.2463)
    for name in ("cam1", "cam4", "aux"):
        src = cams[name]
        field = build_warp_field(ref, src, 1.14, 1.26, stride=16, degree=5)
        assert field.fit_residual_px < 1e-4
        lw = field.level(0, src.image_size, pad=1, border=0, dtype=torch.float64)
        for z in zs:
            zmap = torch.full((h, w), z, dtype=torch.float64)
            got = _grid_to_px(lw.at_z(zmap)[::3, ::3], lw, 1, src.image_size)
            plane = _grid_to_px(
                lw.planes(field.t_of_z(torch.tensor([z], dtype=torch.float64)))[0], lw, 1, src.image_size
            )
            exact = _exact_warp(ref, src, pix, torch.full(pix.shape[:-1], z, dtype=torch.float64))
            inside = src.in_image(exact)
            err = (got - exact).norm(dim=-1)[inside]
            assert inside.float().mean() > 0.2
            assert float(err.max()) < 0.01, (name, z, float(err.max()))
            assert float((plane[::3, ::3] - got).abs().max()) < 1e-9
        # Derivatives: the Taylor expansion used by the refinement matches the warp 1 mm away.
        zmap = torch.full((h, w), 1.2, dtype=torch.float64)
        w0, d1, d2 = lw.taylor(zmap, order=2)
        ahead = lw.at_z(zmap + 1e-3)
        taylor = w0 + d1 * 1e-3 + 0.5 * d2 * 1e-6
        px_err = ((taylor - ahead) * lw.px_per_grid).norm(dim=-1)
        assert float(px_err.max()) < 1e-4
        sens = lw.sensitivity(zmap)
        assert float(sens.median()) > 20.0  # px per metre: the pair has depth resolution


def test_warp_bilinear_lattice_would_not_meet_the_bound():
    """Why the lattice is interpolated by cubics: plain bilinear interpolation of the exact pixel map
    at the same stride is 100× worse (documented numbers for the design choice)."""
    rig = make_rig(SyntheticSurveyConfig())
    ref, src = (
        RefractiveCamera.from_calibration(rig[n], rig.interface, undistorted_intrinsics(rig[n]))
        for n in ("cam0", "cam4")
    )
    w, h = ref.image_size
    stride = 16
    us = torch.arange(0, w - 1 + stride, stride, dtype=torch.float64).clamp(max=w - 1)
    vs = torch.arange(0, h - 1 + stride, stride, dtype=torch.float64).clamp(max=h - 1)
    lattice = torch.stack(torch.meshgrid(us, vs, indexing="xy"), dim=-1)  # (Nv, Nu, 2)
    z = torch.full(lattice.shape[:-1], 1.2, dtype=torch.float64)
    nodes = _exact_warp(ref, src, lattice, z).permute(2, 0, 1)[None]  # (1, 2, Nv, Nu)
    pix = pixel_grid(w, h, dtype=torch.float64)
    gx = torch.from_numpy(np.interp(pix[0, :, 0].numpy(), us.numpy(), np.arange(len(us))))
    gy = torch.from_numpy(np.interp(pix[:, 0, 1].numpy(), vs.numpy(), np.arange(len(vs))))
    grid = torch.stack(
        torch.meshgrid(2 * gx / (len(us) - 1) - 1, 2 * gy / (len(vs) - 1) - 1, indexing="xy"), -1
    )
    bilinear = F.grid_sample(nodes, grid[None], align_corners=True)[0].permute(1, 2, 0)
    exact = _exact_warp(ref, src, pix, torch.full((h, w), 1.2, dtype=torch.float64))
    inside = src.in_image(exact)
    bil_err = float((bilinear - exact).norm(dim=-1)[inside].max())
    field = build_warp_field(ref, src, 1.14, 1.26, stride=stride)
    lw = field.level(0, src.image_size, pad=1, dtype=torch.float64)
    cub = _grid_to_px(lw.at_z(torch.full((h, w), 1.2, dtype=torch.float64)), lw, 1, src.image_size)
    cub_err = float((cub - exact).norm(dim=-1)[inside].max())
    assert bil_err > 0.02
    assert cub_err < bil_err / 100


# --------------------------------------------------------------------------------------------
# NCC building blocks
# --------------------------------------------------------------------------------------------


def test_window_sum_and_masked_ncc_match_direct_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 23, 31, generator=g, dtype=torch.float64)
    for k in (3, 5, 7, 9):
        ref = F.avg_pool2d(x[:, None], k, 1)[:, 0] * k * k
        assert torch.allclose(window_sum(x, k), ref, atol=1e-12)
    x[0, 10, 10] = math.nan
    s = window_sum(x, 7)
    assert torch.isnan(s[0, 4:11, 4:11]).all() and torch.isfinite(s[0, :4]).all()

    # Masked path: with invalid source samples, NCC over the valid part of the window equals the
    # textbook formula on those samples; in the fast path such windows are NaN. (Interpolation
    # spreads a NaN to the samples that touch it, so the valid set is read off the samples.)
    img = torch.rand(20, 20, generator=g, dtype=torch.float64)
    rw = ref_windows(img, 5, 0.0)
    y = 0.3 + 2.0 * rw.x + 0.05 * torch.rand(20, 20, generator=g, dtype=torch.float64)
    y[8:12, 4] = math.nan
    yp = F.pad(y, (2, 2, 2, 2), value=math.nan)
    src_padded = F.pad(yp, (1, 1, 1, 1), value=math.nan)[None, None]
    hh, ww = yp.shape
    gx = (torch.arange(ww, dtype=torch.float64) + 1) * 2 / (ww + 1) - 1
    gy = (torch.arange(hh, dtype=torch.float64) + 1) * 2 / (hh + 1) - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)[None]
    sampled = F.grid_sample(src_padded, grid, align_corners=True)[0, 0, 2:-2, 2:-2]

    def grid_fn(sl, rows):
        return grid[:, rows]

    fast = slice_ncc(rw, src_padded, grid_fn, 1, min_std=0.0)[0]
    masked = slice_ncc(rw, src_padded, grid_fn, 1, min_std=0.0, min_valid_fraction=0.6)[0]
    r, c = 9, 6  # window rows 7..11, cols 4..8: holds invalid samples, centre valid
    win = (slice(r - 2, r + 3), slice(c - 2, c + 3))
    xs, ys = rw.x[win].flatten(), sampled[win].flatten()
    keep = torch.isfinite(ys)
    assert 15 <= int(keep.sum()) < 25
    assert torch.isnan(fast[r, c])
    xs, ys = xs[keep], ys[keep]
    direct = ((xs - xs.mean()) * (ys - ys.mean())).mean() / (xs.std(unbiased=False) * ys.std(unbiased=False))
    assert float(masked[r, c]) == pytest.approx(float(direct), abs=1e-9)
    assert torch.isnan(masked[10, 4])  # centre sample invalid
    # Fully valid windows: both paths agree.
    assert torch.allclose(fast[2:6, 8:16], masked[2:6, 8:16], atol=1e-9)


def test_textureless_windows_are_invalid():
    flat = torch.full((30, 30), 0.5, dtype=torch.float64)
    rw = ref_windows(flat, 7, 0.004)
    assert isinstance(rw, RefWindows) and torch.isnan(rw.std).all()


def test_parabola_peak():
    off, peak = parabola_peak(torch.tensor([0.5]), torch.tensor([1.0]), torch.tensor([0.8]))
    # y = 1 - a (x - x0)²: through (-1, .5), (0, 1), (1, .8): x0 = 0.3 / (2 * 0.7)
    assert float(off) == pytest.approx(0.3 / 1.4)
    assert float(peak) > 1.0
    off, _ = parabola_peak(torch.tensor([math.nan]), torch.tensor([1.0]), torch.tensor([0.8]))
    assert float(off) == 0.0


# --------------------------------------------------------------------------------------------
# Plane sweep on rendered scenes
# --------------------------------------------------------------------------------------------


def test_flat_bottom_is_recovered(flat_scene: Scene):
    """A textured horizontal bed at Z = 1.2 m: neighbour (cam1) and second neighbour (cam2) pairs.
    Measured: median |ΔZ| 0.77 / 0.50 mm (≈ 0.025 px), p90 2.2 / 1.3 mm, 98 % of the overlap valid."""
    for src, med_bound in (("cam1", 1.1), ("cam2", 0.75)):
        pd = _sweep(flat_scene, src)
        err = flat_scene.z_error_mm(pd.world_z)
        valid = np.isfinite(err)
        seen = flat_scene.seen_by(src, margin=4.0)
        assert valid[seen].mean() > 0.95, src
        assert np.median(err[valid]) < med_bound, (src, np.median(err[valid]))
        assert np.percentile(err[valid], 90) < 3 * med_bound
        assert np.mean(err[valid] > 20) < 0.005
        # depth is ray depth: the world Z of o + s d equals the returned world_z
        pts, ok = DepthMap("cam0", pd.depth, pd.confidence).points(flat_scene.cams["cam0"])
        assert torch.allclose(pts[..., 2][ok].double(), pd.world_z[ok].double(), atol=1e-5)
        assert torch.equal(pd.confidence > 0, pd.valid)
        assert float(pd.confidence.max()) <= 1.0 and float(pd.confidence.min()) >= 0.0


def test_plane_count_steps_the_most_sensitive_pixel_by_plane_step_px(flat_scene: Scene):
    """The full-range sweep takes as many planes as step the source sample of the pair's most
    sensitive pixel by at most ``plane_step_px``: against the exact travel of every coarse-level pixel
    between the range's ends (refracted ray → points at z_lo and z_hi → exact projection into the
    source), within the bend of the path; ``min_depths`` and ``num_depths`` bound it."""
    ref, src = flat_scene.cams["cam0"], flat_scene.cams["cam1"]
    level, step = 2, 0.05
    f = 2**level
    u = (torch.arange(W // f, dtype=torch.float64) + 0.5) * f - 0.5
    v = (torch.arange(H // f, dtype=torch.float64) + 0.5) * f - 0.5
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    origins, dirs, ok = ref.cast_ray(torch.stack([uu, vv], dim=-1).reshape(-1, 2))
    ends = []
    for z in Z_RANGE:
        depth = world_z_to_ray_depth(dirs, torch.full_like(dirs[:, 2], z), ref.water_z)
        uv, valid = src.project(point_at_ray_depth(origins, dirs, depth))
        ok &= valid
        ends.append(uv)
    travel = float(((ends[1] - ends[0]).norm(dim=-1)[ok]).max()) / f  # coarse-level pixels
    config = PlaneSweepConfig(coarse_level=level, plane_step_px=step, min_depths=2, num_depths=4096)
    planes = _sweep(flat_scene, "cam1", config).planes
    assert math.ceil(travel / step) + 1 <= planes <= math.ceil(1.2 * travel / step) + 1, (travel, planes)
    assert (
        _sweep(flat_scene, "cam1", config.model_copy(update={"min_depths": planes + 7})).planes == planes + 7
    )
    assert (
        _sweep(flat_scene, "cam1", config.model_copy(update={"num_depths": planes - 5})).planes == planes - 5
    )
    assert (
        _sweep(flat_scene, "cam1", config.model_copy(update={"plane_step_px": None, "num_depths": 40})).planes
        == 40
    )


def test_relief_pairs_and_combined_depth(relief_scene: Scene, monkeypatch):
    """Textured relief (undulations, mounds, nest, ripples). Measured at 200×150: per pair median
    1.05–1.09 mm (neighbours) / 0.88 mm (second neighbour), p90 2.8 / 2.1 mm, 96–98 % of the overlap
    valid; combined: median 0.92 mm, p90 2.2 mm, 0.17 % beyond 10 mm (at the image borders),
    98 % of the pixels seen by a source."""
    pairs = [_sweep(relief_scene, s) for s in ("cam1", "cam5", "cam2")]
    for pd in pairs:
        err = relief_scene.z_error_mm(pd.world_z)
        valid = np.isfinite(err)
        seen = relief_scene.seen_by(pd.src, margin=4.0)
        assert valid[seen].mean() > 0.93, pd.src
        assert np.median(err[valid]) < 1.5, (pd.src, np.median(err[valid]))
        assert np.percentile(err[valid], 90) < 3.5, (pd.src, np.percentile(err[valid], 90))
        assert np.mean(err[valid] > 20) < 0.01
    combined = combine_pair_depths(pairs, PlaneSweepConfig())
    assert isinstance(combined, CameraDepth) and isinstance(combined, DepthMap)
    pts, ok = combined.points(relief_scene.cams["cam0"])
    err = relief_scene.z_error_mm(torch.where(ok, pts[..., 2], torch.nan))
    valid = np.isfinite(err)
    seen_any = np.logical_or.reduce([relief_scene.seen_by(s, margin=4.0) for s in ("cam1", "cam5", "cam2")])
    assert valid[seen_any].mean() > 0.95
    assert np.median(err[valid]) < 1.2, np.median(err[valid])
    assert np.percentile(err[valid], 90) < 3.0
    assert np.mean(err[valid] > 10) < 0.005
    assert int(combined.support.max()) == 3 and (combined.support[combined.valid] >= 1).all()
    assert (combined.confidence[~combined.valid] == 0).all()
    # The rule runs in bands of rows (two here, the last short): any banding gives the same maps.
    for band in (7 * 200 * 9, 1 << 40):
        monkeypatch.setattr(combine_module, "_COMBINE_BAND", band)
        other = combine_pair_depths(pairs, PlaneSweepConfig())
        for key in ("depth", "confidence", "support", "candidates"):
            torch.testing.assert_close(
                getattr(other, key), getattr(combined, key), rtol=0, atol=0, equal_nan=True
            )


def test_partial_overlap_gives_nan_not_garbage(relief_scene: Scene):
    """cam2 sees only part of cam0's view: where the bed point is outside cam2's image the depth is
    NaN, and just inside the border of cam2's footprint the depth is as good as elsewhere (outside
    samples are excluded, not black). Measured in the 1–12 px band: 75 % valid with masked windows
    (default), 33 % when windows must be complete; median error 1.1 mm, p90 2.9 mm, as elsewhere."""
    for frac, coverage in ((0.6, 0.65), (1.0, 0.25)):
        pd = _sweep(relief_scene, "cam2", PlaneSweepConfig(min_valid_fraction=frac))
        err = relief_scene.z_error_mm(pd.world_z)
        valid = np.isfinite(err)
        dist = relief_scene.distance_outside("cam2")
        outside = dist > 1.0
        assert outside.mean() > 0.1  # the test needs a real partial overlap
        assert not valid[outside].any()
        band = (dist < -1.0) & (dist > -12.0)  # 1–12 px inside the source's footprint
        assert valid[band].mean() > coverage, (frac, valid[band].mean())
        assert np.median(err[band & valid]) < 1.5
        assert np.percentile(err[band & valid], 90) < 4.0


def test_source_mask_excludes_invalid_region(relief_scene: Scene):
    """A black, masked-out half of the source (like the invalid corners of an undistorted fisheye)
    yields NaN where the bed is only visible there, and no artefact next to it. Measured 1–10 px
    next to the mask edge: 85 % valid, median 1.5 mm; the same black half *without* its mask (black
    taken as image data) gives 13 % valid with a median error of 8 mm there."""
    src = relief_scene.images["cam1"].copy()
    mask = np.ones((H, W), dtype=bool)
    mask[:, : W // 2] = False
    src[~mask] = 0
    pts = torch.nan_to_num(relief_scene.gt_points, nan=0.0)
    u = relief_scene.cams["cam1"].project(pts)[0][..., 0].numpy()
    near = (u > W / 2 + 1) & (u < W / 2 + 10) & relief_scene.seen_by("cam1", margin=4.0)
    results = {}
    for name, m in (("masked", mask), ("black", None)):
        pd = sweep_pair(
            relief_scene.images["cam0"],
            src,
            relief_scene.cams["cam0"],
            relief_scene.cams["cam1"],
            src_mask=m,
            config=PlaneSweepConfig(),
            z_range=Z_RANGE,
        )
        err = relief_scene.z_error_mm(pd.world_z)
        results[name] = (err, np.isfinite(err))
    err, valid = results["masked"]
    assert not valid[u < W / 2 - 1.5].any()
    assert valid[near].mean() > 0.7
    assert np.median(err[near & valid]) < 2.0
    black_err, black_valid = results["black"]
    good = valid[near] & (err[near] < 5.0)
    black_good = black_valid[near] & (black_err[near] < 5.0)
    assert good.mean() > 2 * black_good.mean()


def test_result_independent_of_batching_and_tiling(relief_scene: Scene):
    base = _sweep(relief_scene, "cam1", PlaneSweepConfig(hypothesis_batch=128, tile_elements=1 << 20))
    other = _sweep(relief_scene, "cam1", PlaneSweepConfig(hypothesis_batch=7, tile_elements=3000))
    same = torch.isfinite(base.depth) == torch.isfinite(other.depth)
    assert bool(same.all())
    v = torch.isfinite(base.depth)
    assert float((base.depth[v] - other.depth[v]).abs().max()) <= 1e-6
    assert float((base.confidence - other.confidence).abs().max()) <= 1e-6


def test_float64_and_prepared_images_agree(relief_scene: Scene):
    cfg32 = PlaneSweepConfig()
    cfg64 = PlaneSweepConfig(dtype="float64")
    a = _sweep(relief_scene, "cam2", cfg32)
    b = _sweep(relief_scene, "cam2", cfg64)
    assert b.depth.dtype == torch.float64 and a.depth.dtype == torch.float32
    both = torch.isfinite(a.depth) & torch.isfinite(b.depth)
    assert both.float().mean() > 0.5
    assert float((a.depth[both].double() - b.depth[both]).abs().median()) < 1e-5
    prepared = prepare_image(relief_scene.images["cam0"], None, cfg32)
    c = sweep_pair(
        prepared,
        relief_scene.images["cam2"],
        relief_scene.cams["cam0"],
        relief_scene.cams["cam2"],
        config=cfg32,
        z_range=Z_RANGE,
    )
    assert torch.equal(torch.isfinite(a.depth), torch.isfinite(c.depth))
    with pytest.raises(ValueError):
        sweep_pair(
            prepared,
            relief_scene.images["cam2"],
            relief_scene.cams["cam0"],
            relief_scene.cams["cam2"],
            config=PlaneSweepConfig(image_blur_sigma=0.0),
            z_range=Z_RANGE,
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(relief_scene: Scene):
    """Device-agnostic: the same sweep on CUDA gives the CPU's depths (up to float rounding)."""
    cpu = _sweep(relief_scene, "cam2")
    gpu = _sweep(relief_scene, "cam2", PlaneSweepConfig(device="cuda"))
    assert gpu.depth.device.type == "cuda"
    both = torch.isfinite(cpu.depth) & torch.isfinite(gpu.depth.cpu())
    assert both.float().mean() > 0.9 * torch.isfinite(cpu.depth).float().mean()
    assert float((cpu.depth[both] - gpu.depth.cpu()[both]).abs().median()) < 1e-5


def test_depth_for_camera_with_distorted_lenses():
    """End to end with lens distortion: views undistorted by StereoView.from_distorted, ground truth
    traced from the distorted pixels of the undistorted grid. Measured: 89 % of the pixels valid,
    median 1.0 mm, p90 2.7 mm (two pairs)."""
    cfg = SyntheticSurveyConfig(
        image_size=(W, H),
        auxiliary_camera=False,
        n_ring_cameras=6,
        terrain_cell=0.002,
        texel_size=0.001,
        texture_blur=0.001,
        n_frames=1,
    )
    rig = make_rig(cfg)
    terrain = make_terrain(cfg)
    names = ("cam0", "cam1", "cam5")
    views = {
        n: StereoView.from_distorted(rig[n], rig.interface, render_view(rig[n], rig.interface, terrain, 0))
        for n in names
    }
    combined, pairs = depth_for_camera(
        "cam0", views, ["cam1", "cam5"], PlaneSweepConfig(), Z_RANGE, workers=2
    )
    assert [p.src for p in pairs] == ["cam1", "cam5"] and combined.camera == "cam0"
    pix = pixel_grid(W, H, dtype=torch.float64).reshape(-1, 2)
    k_new = undistorted_intrinsics(rig["cam0"])
    gt = trace_pixels(rig["cam0"], rig.interface, terrain, 0, distort_pixels(pix, rig["cam0"], k_new))
    gt_depth = gt.ray_depth.reshape(H, W)
    cam = views["cam0"].camera
    _, d, _ = cam.cast_ray(pixel_grid(W, H, dtype=torch.float64))
    err = np.abs(combined.depth.double().numpy() - gt_depth) * d[..., 2].numpy() * 1e3  # vertical, mm
    valid = np.isfinite(err)
    assert valid.mean() > 0.8
    assert np.median(err[valid]) < 1.5, np.median(err[valid])
    assert np.percentile(err[valid], 90) < 4.0


# --------------------------------------------------------------------------------------------
# Combination rule
# --------------------------------------------------------------------------------------------


def _pair(z: list[float], conf: list[float], src: str = "s", px_per_mm: float = 0.1) -> PairDepth:
    """A 1×N PairDepth for a camera looking straight down from the water surface (d_z = 1)."""
    zt = torch.tensor([z], dtype=torch.float32)
    ct = torch.tensor([conf], dtype=torch.float32)
    valid = torch.isfinite(zt)
    return PairDepth(
        ref="r",
        src=src,
        depth=zt - 0.7,
        confidence=torch.where(valid, ct, 0.0),
        ncc=torch.where(valid, 0.95, torch.nan),
        world_z=zt,
        px_per_mm=torch.full_like(zt, px_per_mm),
    )


def test_combination_rule():
    nan = math.nan
    cfg = PlaneSweepConfig(agreement_tol_mm=2.0, single_pair_min_confidence=0.5, min_pair_confidence=0.1)
    pairs = [
        _pair([1.2000, 1.2000, nan, nan, 1.2000, 1.2000], [0.9, 0.9, 0.0, 0.0, 0.9, 0.2], "a"),
        _pair([1.2010, 1.2500, nan, nan, 1.2300, nan], [0.9, 0.9, 0.0, 0.0, 0.9, 0.0], "b"),
        _pair([1.2004, 1.2502, 1.2100, 1.2100, 1.2600, nan], [0.6, 0.9, 0.8, 0.3, 0.9, 0.0], "c"),
    ]
    out = combine_pair_depths(pairs, cfg.model_copy(update={"combine_method": "median"}))
    z = out.depth[0] + 0.7
    # pixel 0: three agree → median 1.2004, support 3
    assert float(z[0]) == pytest.approx(1.2004, abs=1e-6) and int(out.support[0, 0]) == 3
    # pixel 1: b and c agree (1.2500, 1.2502) against a: the larger consensus wins, mean of two
    assert float(z[1]) == pytest.approx(1.2501, abs=1e-6) and int(out.support[0, 1]) == 2
    assert float(out.confidence[0, 1]) == pytest.approx((1 - 0.1 * 0.1) * 2 / 3, abs=1e-5)
    # pixel 2: a single confident pair is kept (areas seen by two cameras), pixel 3: too unsure
    assert float(z[2]) == pytest.approx(1.21, abs=1e-6) and int(out.support[0, 2]) == 1
    assert math.isnan(float(z[3])) and float(out.confidence[0, 3]) == 0.0
    # pixel 4: three mutually disagreeing confident pairs: one is kept, confidence reflects 1/3 support
    assert int(out.support[0, 4]) == 1 and float(out.confidence[0, 4]) <= 0.9 / 3 + 1e-6
    # pixel 5: one candidate below single_pair_min_confidence
    assert math.isnan(float(z[5]))
    assert out.candidates[0].tolist() == [3, 3, 1, 1, 3, 1]

    # Weighted mean: the pair with 2× the depth resolution gets 4× the weight.
    pairs = [_pair([1.2000], [0.8], "a", px_per_mm=0.2), _pair([1.2010], [0.8], "b", px_per_mm=0.1)]
    wm = combine_pair_depths(pairs, cfg.model_copy(update={"combine_method": "weighted_mean"}))
    assert float(wm.depth[0, 0] + 0.7) == pytest.approx(1.2002, abs=1e-6)
    med = combine_pair_depths(pairs, cfg.model_copy(update={"combine_method": "weighted_median"}))
    assert float(med.depth[0, 0] + 0.7) == pytest.approx(1.2000, abs=1e-6)
    with pytest.raises(ValueError):
        combine_pair_depths([])
