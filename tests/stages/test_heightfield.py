"""The survey grid and the heightfield against analytic surfaces: exact planes, holes that must and
must not be filled, the first-order blur compensation on a sinusoid, and the uncertainty model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aquamvs_core.camera.calibration import parse_calibration
from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.config import ConfigError, build_config
from aquamvs_core.stages.bed_grid import BedGrid, footprint_grid, ground_sampling_distance, window_psf_sigma
from aquamvs_core.stages.heightfield import HeightfieldConfig, build_heightfield

CELL = 0.001


def _cloud(surface, gradient, lo=-0.05, hi=0.05, per_cell=4, seed=0, keep=None):
    """Points (N, 3) on ``z = surface(x, y)`` with exact unit normals, uniform in the square."""
    rng = np.random.default_rng(seed)
    n = int(per_cell * ((hi - lo) / CELL) ** 2)
    xy = rng.uniform(lo, hi, (n, 2))
    if keep is not None:
        xy = xy[keep(xy)]
    z = surface(xy[:, 0], xy[:, 1])
    gx, gy = gradient(xy[:, 0], xy[:, 1])
    normals = np.stack([gx, gy, -np.ones_like(gx)], axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return np.column_stack([xy, z]), normals, np.full(len(z), 4)


def _plane(x, y):
    return 1.2 + 0.05 * x - 0.03 * y


def _plane_gradient(x, y):
    return np.full_like(x, 0.05), np.full_like(x, -0.03)


def _grid():
    return BedGrid.covering(-0.06, 0.06, -0.06, 0.06, CELL)


def test_bed_grid_lattice_and_cell_lookup():
    grid = BedGrid.covering(-0.0104, 0.0203, 0.0051, 0.0099, CELL)
    assert (grid.i0, grid.j0, grid.nx, grid.ny) == (-10, 5, 31, 6)  # centres -10 mm ... 20 mm, 5 ... 10 mm
    np.testing.assert_allclose(grid.x[[0, -1]], [-0.010, 0.020])
    np.testing.assert_allclose(grid.y[[0, -1]], [0.005, 0.010])
    i, j, inside = grid.cell_of(np.array([[-0.0104, 0.0051], [0.01951, 0.00549], [0.0206, 0.0]]))
    assert i.tolist()[:2] == [0, 30] and j.tolist()[:2] == [0, 0] and inside.tolist() == [True, True, False]
    assert BedGrid.from_attrs(grid.attrs()) == grid


def _down_rig(survey_aquacal_dict, water_z=0.5):
    rig = parse_calibration(survey_aquacal_dict(image_size=(64, 48), water_z=water_z))
    return {n: RefractiveCamera.from_calibration(rig[n], rig.interface) for n in rig.camera_names}


def _footprint_x(center_x: float, depth: float, f=60.0, cx=32.0, air=0.5, n=1.333) -> tuple[float, float]:
    """Analytic X extent on the plane ``depth`` below the water of a camera looking straight down
    (image edge at u = -0.5 and W - 0.5), by Snell's law."""
    out = []
    for u in (-0.5, 63.5):
        t_air = (u - cx) / f
        sin_w = math.sin(math.atan(t_air)) / n
        out.append(center_x + air * t_air + depth * math.tan(math.asin(sin_w)))
    return out[0], out[1]


def test_footprint_grid_matches_the_analytic_footprint_through_the_water(survey_aquacal_dict):
    cams = _down_rig(survey_aquacal_dict)  # 3 cameras at x = 0, 0.1, 0.2, 0.5 m above the water
    depth, probe = 0.4, 0.005
    kwargs = {"water_depths": (depth, depth), "margin": 0.0, "probe_spacing": probe, "depth_planes": 1}
    union = footprint_grid(cams, None, CELL, min_views=1, **kwargs)
    lo, _ = _footprint_x(0.0, depth)
    _, hi = _footprint_x(0.2, depth)
    # The box is the probed area grown by one probe spacing: within two probe spacings of the truth.
    assert abs(union.x[0] - (lo - probe)) <= 2 * probe and abs(union.x[-1] - (hi + probe)) <= 2 * probe
    common = footprint_grid(cams, None, CELL, min_views=3, **kwargs)
    lo3, _ = _footprint_x(0.2, depth)
    _, hi3 = _footprint_x(0.0, depth)
    assert abs(common.x[0] - (lo3 - probe)) <= 2 * probe and abs(common.x[-1] - (hi3 + probe)) <= 2 * probe
    assert common.nx < union.nx and common.cell == CELL
    with pytest.raises(ValueError, match="seen by 4 cameras"):
        footprint_grid(cams, None, CELL, min_views=4, **kwargs)


def test_ground_sampling_distance_and_window_blur(survey_aquacal_dict):
    cams = _down_rig(survey_aquacal_dict)
    # Near the axis a pixel spans 1/f of the air path plus 1/(n f) of the water path.
    expected = 0.5 / 60 + 0.4 / (1.333 * 60)
    assert ground_sampling_distance(cams, 0.9) == pytest.approx(expected, rel=2e-3)
    box = np.linspace(-0.009, 0.009, 200_001)  # a 9-pixel window of 2 mm pixels on the bed
    assert window_psf_sigma(9, 0.002) == pytest.approx(float(box.std()), rel=1e-4)


def test_heightfield_of_a_tilted_plane_is_exact_at_cell_centres():
    grid = _grid()
    pts, normals, support = _cloud(_plane, _plane_gradient)
    bed = build_heightfield(pts, normals, support, grid, HeightfieldConfig(max_fill_cells=0))
    xx, yy = np.meshgrid(grid.x, grid.y)
    ok = bed.count > 0
    assert ok.sum() > 0.9 * (100 * 100)  # the sampled 100 × 100 mm square
    np.testing.assert_allclose(bed.z[ok], _plane(xx, yy)[ok], atol=1e-12)
    assert np.isnan(bed.z[np.abs(xx) > 0.0506]).all()  # nothing outside the cloud
    assert (bed.cameras[ok] == 4).all() and (bed.count[~bed.valid] == 0).all()


def test_small_holes_are_filled_and_wide_ones_and_the_rim_are_not():
    grid = _grid()

    def keep(xy):  # a 2-cell-wide strip and a 12 mm square hole
        strip = np.abs(xy[:, 0] - 0.0105) < 0.001
        square = (np.abs(xy[:, 0] + 0.02) < 0.006) & (np.abs(xy[:, 1]) < 0.006)
        return ~(strip | square)

    pts, normals, support = _cloud(_plane, _plane_gradient, keep=keep)
    bed = build_heightfield(pts, normals, support, grid, HeightfieldConfig(max_fill_cells=3))
    xx, yy = np.meshgrid(grid.x, grid.y)
    strip = (np.abs(xx - 0.0105) < 0.0009) & (np.abs(yy) < 0.04)
    assert bed.filled[strip].all() and (bed.count[strip] == 0).all()
    np.testing.assert_allclose(bed.z[strip], _plane(xx, yy)[strip], atol=1e-9)  # a local plane fit
    square = (np.abs(xx + 0.02) < 0.0045) & (np.abs(yy) < 0.0045)
    assert np.isnan(bed.z[square]).all()
    assert np.isnan(bed.z[np.abs(xx) > 0.0506]).all()  # the rim is not extrapolated
    filled_sigma = bed.sigma[strip]
    assert (filled_sigma > np.nanmedian(bed.sigma[bed.count > 0])).all()  # filled cells are less certain


def test_cell_medians_and_counts_are_numpys_per_cell():
    from aquamvs_core.stages.heightfield import _cell_medians

    rng = np.random.default_rng(8)
    flat = rng.integers(0, 40, 500)
    h = rng.normal(1.2, 0.01, 500)
    med, count = _cell_medians(flat, h, 50)
    for cell in range(50):
        here = h[flat == cell]
        assert count[cell] == here.size
        assert (np.isnan(med[cell]) and here.size == 0) or med[cell] == np.median(here)
    med, count = _cell_medians(np.zeros(0, np.int64), np.zeros(0), 3)  # no point at all
    assert np.isnan(med).all() and (count == 0).all()


def test_hole_plane_fit_is_the_weighted_least_squares_plane():
    """The fill's plane at each hole cell against an independent weighted least-squares solve
    (numpy's lstsq) over the valid cells within the radius; the weighted mean where the neighbours
    all lie on a line (no plane)."""
    from aquamvs_core.stages.heightfield import _plane_fit_at

    rng = np.random.default_rng(4)
    z = rng.normal(1.2, 0.003, (24, 30))
    valid = rng.random(z.shape) > 0.45
    valid[:, 20:] = False
    valid[10, 20:] = True  # right of column 20, only one row: collinear neighbours
    cells = ~valid
    radius = 3
    got = _plane_fit_at(np.where(valid, z, np.nan), valid, cells, radius)
    want = []
    for j, i in zip(*np.nonzero(cells), strict=True):
        dj, di = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        jj, ii = j + dj, i + di
        inside = (jj >= 0) & (jj < z.shape[0]) & (ii >= 0) & (ii < z.shape[1])
        jj, ii, dj, di = jj[inside], ii[inside], dj[inside], di[inside]
        use = valid[jj, ii]
        w = np.exp(-0.5 * (dj[use] ** 2 + di[use] ** 2))
        a = np.c_[np.ones(use.sum()), di[use], dj[use]] * np.sqrt(w)[:, None]
        rhs = z[jj[use], ii[use]] * np.sqrt(w)
        if use.sum() >= 3 and np.linalg.matrix_rank(a, tol=1e-6) == 3:
            want.append(np.linalg.lstsq(a, rhs, rcond=None)[0][0])
        else:
            want.append(np.sum(w * z[jj[use], ii[use]]) / max(w.sum(), 1e-300) if use.any() else 0.0)
    want = np.array(want)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    # Cell (12, 25): its only valid neighbours are on row 10 (a line): the weighted mean of those.
    at = np.flatnonzero(np.nonzero(cells)[0] * z.shape[1] + np.nonzero(cells)[1] == 12 * z.shape[1] + 25)
    w = np.exp(-0.5 * (4 + np.arange(-3, 4) ** 2))
    np.testing.assert_allclose(got[at], np.sum(w * z[10, 22:29]) / w.sum(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_blur_compensation_restores_a_sinusoid_to_the_order_of_its_steps(steps):
    """A sinusoid of amplitude A seen through a Gaussian blur σ has amplitude A·H, H = exp(-k²σ²/2);
    n Van Cittert steps give A·(1 − (1 − H)^(n+1)) (one step: A·H·(2 − H))."""
    amp, wavelength, blur = 0.001, 0.02, 0.003
    k = 2 * math.pi / wavelength
    gain = math.exp(-0.5 * (k * blur) ** 2)

    def surface(x, y):
        return 1.0 + amp * gain * np.sin(k * x)

    def gradient(x, y):
        return amp * gain * k * np.cos(k * x), np.zeros_like(x)

    grid = BedGrid.covering(-0.1, 0.1, -0.02, 0.02, CELL)
    pts, normals, support = _cloud(surface, gradient, lo=-0.1, hi=0.1, per_cell=2)
    pts, normals = pts[np.abs(pts[:, 1]) < 0.02], normals[np.abs(pts[:, 1]) < 0.02]
    cfg = HeightfieldConfig(psf_iterations=steps)
    plain = build_heightfield(pts, normals, support[: len(pts)], grid, cfg)
    sharp = build_heightfield(pts, normals, support[: len(pts)], grid, cfg, psf_sigma=blur)
    inner = (np.abs(grid.x) < 0.08)[None, :] & (np.abs(grid.y) < 0.005)[:, None]
    basis = np.sin(k * grid.x)[None, :].repeat(grid.ny, 0)

    def measured_amplitude(z):
        detail = z.astype(np.float64) - 1.0
        return float((detail[inner] * basis[inner]).sum() / (basis[inner] ** 2).sum())

    assert measured_amplitude(plain.z) == pytest.approx(amp * gain, rel=0.01)
    restored = amp * (1 - (1 - gain) ** (steps + 1))
    assert measured_amplitude(sharp.z) == pytest.approx(restored, rel=0.02)


def test_uncertainty_grows_with_point_noise_and_falls_with_cameras():
    grid = _grid()
    pts, normals, support = _cloud(_plane, _plane_gradient, per_cell=16, seed=1)
    cfg = HeightfieldConfig(max_fill_cells=0, sigma_floor_mm=0.0)
    exact = build_heightfield(pts, normals, support, grid, cfg)
    ok = exact.count > 0
    # No spread: only the cameras' repeatability, view_sigma_px · GSD / √cameras (GSD: 2 mm here).
    exact = build_heightfield(pts, normals, support, grid, cfg, gsd=0.002)
    np.testing.assert_allclose(exact.sigma[ok], cfg.view_sigma_px * 0.002 / 2, rtol=1e-5)
    noise = 0.0003
    noisy = pts + np.column_stack(
        [np.zeros((len(pts), 2)), np.random.default_rng(2).normal(0, noise, len(pts))]
    )
    bed = build_heightfield(noisy, normals, support, grid, cfg, gsd=0.002)
    counts = bed.count[ok].astype(np.float64)
    expected = np.sqrt(math.pi / 2 * noise**2 / counts + (cfg.view_sigma_px * 0.002) ** 2 / 4)
    assert np.median(bed.sigma[ok] / expected) == pytest.approx(1.0, abs=0.1)
    # ... and the errors of the noisy cells are about that large: 1.4826·MAD / σ of the median ≈ 1.
    err = (bed.z - exact.z)[ok] / np.sqrt(noise**2 * math.pi / 2 / counts)
    assert 1.4826 * np.median(np.abs(err)) == pytest.approx(1.0, abs=0.15)


def test_heightfield_config_is_validated_with_field_names():
    with pytest.raises(ConfigError, match=r"heightfield\.spread_window"):
        build_config(overrides={"heightfield": {"spread_window": 4}})
    with pytest.raises(ConfigError, match=r"heightfield\.extent_m"):
        build_config(overrides={"heightfield": {"extent_m": [0.1, 0.0, 0.0, 1.0]}})
    with pytest.raises(ConfigError, match=r"heightfield\.cell_mm"):
        build_config(overrides={"heightfield": {"cell_mm": 0}})
    assert build_config(overrides={"heightfield": {"cell_mm": 2}}).heightfield.cell_mm == 2.0
