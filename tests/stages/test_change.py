"""Bed change between heightfields: analytic volumes, the level of detection's formula and its
calibration on noise of known size, regions, and configuration errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aquamvs_core.config import ConfigError, build_config
from aquamvs_core.stages.bed_grid import BedGrid
from aquamvs_core.stages.change import ChangeConfig, Region, change_rows, change_volumes, compute_change
from aquamvs_core.stages.heightfield import Heightfield

CELL = 0.001


def _bed(grid: BedGrid, z: np.ndarray, sigma: float) -> Heightfield:
    valid = np.isfinite(z)
    return Heightfield(
        grid,
        z.astype(np.float64),
        np.where(valid, 3, 0).astype(np.int32),
        np.where(valid, 4, 0).astype(np.int16),
        np.where(valid, sigma, np.nan).astype(np.float32),
    )


def _pit_and_mound(grid: BedGrid, depth: float, height: float, s: float = 0.01) -> np.ndarray:
    """A flat bed at Z = 1 m with a Gaussian pit of ``depth`` at (-50, 0) mm and a mound of
    ``height`` at (+50, 0) mm, 10 σ apart (Z down: the pit is +Z)."""
    xx, yy = np.meshgrid(grid.x, grid.y)
    pit = depth * np.exp(-((xx + 0.05) ** 2 + yy**2) / (2 * s * s))
    mound = height * np.exp(-((xx - 0.05) ** 2 + yy**2) / (2 * s * s))
    return 1.0 + pit - mound


def test_volumes_of_a_deepening_pit_and_a_growing_mound_are_analytic():
    grid = BedGrid.covering(-0.1, 0.1, -0.05, 0.05, CELL)
    a = _bed(grid, _pit_and_mound(grid, 0.002, 0.001), 1e-5)
    b = _bed(grid, _pit_and_mound(grid, 0.003, 0.0025), 1e-5)
    change = compute_change(a, b, ChangeConfig(relative_sigma=0.0))
    s = 0.01
    np.testing.assert_allclose(change.dz, b.z.astype(np.float64) - a.z.astype(np.float64))  # z_B − z_A
    vol = change_volumes(change)
    assert vol["deepened_m3"] == pytest.approx(0.001 * 2 * math.pi * s * s, rel=1e-5)  # ∫ Δdepth·gauss
    assert vol["raised_m3"] == pytest.approx(0.0015 * 2 * math.pi * s * s, rel=1e-5)
    assert vol["net_m3"] == pytest.approx(vol["deepened_m3"] - vol["raised_m3"], rel=1e-9)
    # Everything deeper than the LoD (1.96·√2·0.01 mm) is detected; the far field is not changed.
    lod = 1.959964 * math.sqrt(2) * 1e-5
    np.testing.assert_allclose(change.lod[change.valid], lod, rtol=1e-6)
    # Above a threshold t, a Gaussian of peak A holds 2π s² (A − t).
    assert vol["deepened_detected_m3"] == pytest.approx(2 * math.pi * s * s * (0.001 - lod), rel=5e-3)
    assert vol["area_deepened_m2"] == pytest.approx(np.count_nonzero(change.dz > lod) * CELL * CELL)
    assert vol["area_compared_m2"] == pytest.approx(grid.nx * grid.ny * CELL * CELL)


def test_change_only_where_both_frames_have_a_height():
    grid = BedGrid.covering(-0.01, 0.01, -0.01, 0.01, CELL)
    za, zb = np.full(grid.shape, 1.0), np.full(grid.shape, 1.001)
    za[:, :5] = np.nan
    zb[:3] = np.nan
    change = compute_change(_bed(grid, za, 1e-4), _bed(grid, zb, 1e-4))
    assert np.array_equal(change.valid, np.isfinite(za) & np.isfinite(zb))
    assert np.isnan(change.lod[~change.valid]).all()
    assert change_volumes(change)["deepened_m3"] == pytest.approx(0.001 * change.valid.sum() * CELL * CELL)
    other = BedGrid(CELL, grid.i0 + 1, grid.j0, grid.nx, grid.ny)
    with pytest.raises(ValueError, match="different grids"):
        compute_change(_bed(grid, za, 1e-4), _bed(other, zb, 1e-4))


@pytest.mark.parametrize("confidence", [0.68, 0.95, 0.99])
def test_lod_holds_its_confidence_on_noise_of_the_stated_size(confidence):
    """Unchanged bed, independent normal errors of the stated sigma in each frame: the fraction of
    cells with |dz| under the LoD is the confidence."""
    grid = BedGrid.covering(-0.15, 0.15, -0.15, 0.15, CELL)  # 90 601 cells
    rng = np.random.default_rng(3)
    sig_a = rng.uniform(0.5e-4, 2e-4, grid.shape)  # spatially varying uncertainty
    sig_b = rng.uniform(0.5e-4, 2e-4, grid.shape)
    za = 1.0 + rng.normal(0.0, 1.0, grid.shape) * sig_a
    zb = 1.0 + rng.normal(0.0, 1.0, grid.shape) * sig_b
    a, b = _bed(grid, za, 0.0), _bed(grid, zb, 0.0)
    a.sigma[:], b.sigma[:] = sig_a, sig_b
    change = compute_change(a, b, ChangeConfig(confidence=confidence, relative_sigma=0.0))
    under = np.mean(np.abs(change.dz) <= change.lod)
    assert under == pytest.approx(confidence, abs=0.006)  # binomial std at 90 k cells: < 0.002
    assert change_volumes(change)["area_changed_m2"] == pytest.approx(
        (1 - under) * grid.nx * grid.ny * CELL**2
    )


def test_lod_grows_with_the_local_change():
    grid = BedGrid.covering(-0.1, 0.1, -0.05, 0.05, CELL)
    a = _bed(grid, _pit_and_mound(grid, 0.002, 0.0), 2e-5)
    b = _bed(grid, _pit_and_mound(grid, 0.004, 0.0), 2e-5)
    flat = compute_change(a, b, ChangeConfig(relative_sigma=0.0))
    rel = compute_change(a, b, ChangeConfig(relative_sigma=0.3, relative_window_mm=3.0))
    centre = (np.argmin(np.abs(grid.y)), np.argmin(np.abs(grid.x + 0.05)))
    far = (0, 0)
    # At the pit's centre dz² = (2 mm)²·exp(-r²/s²); its mean over a Gaussian window of σ_w = 3 mm is
    # (2 mm)² / (1 + 2 σ_w²/s²). Far away the LoD is that of the frames' sigmas alone.
    rms = 0.002 / math.sqrt(1 + 2 * (3 / 10) ** 2)
    assert rel.lod[centre] == pytest.approx(1.96 * math.sqrt(8e-10 + (0.3 * rms) ** 2), rel=0.01)
    assert rel.lod[far] == pytest.approx(flat.lod[far], rel=1e-3)


def test_regions_circle_and_polygon_split_the_volumes():
    grid = BedGrid.covering(-0.1, 0.1, -0.05, 0.05, CELL)
    a = _bed(grid, _pit_and_mound(grid, 0.002, 0.001), 1e-5)
    b = _bed(grid, _pit_and_mound(grid, 0.003, 0.0025), 1e-5)
    change = compute_change(a, b)
    nest = Region(name="nest", center_m=(-0.05, 0.0), radius_m=0.04)
    mound = Region(name="mound", polygon_m=((0.0, -0.05), (0.1, -0.05), (0.1, 0.05), (0.0, 0.05)))
    assert nest.mask(grid).sum() == pytest.approx(math.pi * 40**2, rel=0.01)
    assert mound.mask(grid).sum() == pytest.approx(100 * 100, rel=0.03)  # cells whose centre is inside
    rows = {r["region"]: r for r in change_rows(change, (nest, mound))}
    assert set(rows) == {"all", "nest", "mound"}
    assert rows["nest"]["deepened_m3"] == pytest.approx(rows["all"]["deepened_m3"], rel=1e-3)
    assert rows["nest"]["raised_m3"] < 1e-3 * rows["all"]["raised_m3"]
    assert rows["mound"]["raised_m3"] == pytest.approx(rows["all"]["raised_m3"], rel=0.01)


def test_change_config_is_validated_with_field_names():
    with pytest.raises(ConfigError, match="either center_m and radius_m, or polygon_m"):
        build_config(
            overrides={"change": {"regions": [{"name": "x", "center_m": [0, 0], "polygon_m": [[0, 0]]}]}}
        )
    with pytest.raises(ConfigError, match="at least 3 vertices"):
        build_config(overrides={"change": {"regions": [{"name": "x", "polygon_m": [[0, 0], [1, 1]]}]}})
    with pytest.raises(ConfigError, match="unique"):
        circle = {"center_m": [0, 0], "radius_m": 0.1}
        build_config(overrides={"change": {"regions": [{"name": "n", **circle}, {"name": "n", **circle}]}})
    with pytest.raises(ConfigError, match=r"change\.confidence"):
        build_config(overrides={"change": {"confidence": 1.5}})
    cfg = build_config(overrides={"change": {"confidence": 0.99, "reference_frame": 3}}).change
    assert cfg.quantile == pytest.approx(2.5758, abs=1e-4) and cfg.reference_frame == 3
