"""The bed as a heightfield: world Z on the survey grid (:mod:`aquamvs_core.stages.bed_grid`),
the same for every frame so that frames line up cell for cell.

**A heightfield** (:func:`build_heightfield`) from a fused cloud (points, normals, support):

1. each point gives the height of its tangent plane (from its normal) at its cell's centre, so
   slopes do not bias a cell (a point steeper than ~73° gives its own Z); per cell ``z`` is the
   median of those heights, ``count`` the points and ``cameras`` the most cameras behind one of
   them (fusion's ``support``);
2. holes (cells without points) at most ``max_fill_cells`` wide, i.e. closed by a morphological
   closing with a ``max_fill_cells + 1`` square, are filled from the local plane through the
   measured cells around them (``count = 0``); wider holes and everything outside the cloud stay
   NaN, so nothing is interpolated across a real gap or extrapolated past the edge of the cloud;
3. **resolution compensation** (``psf_sigma``): stereo matching with a ``w``-pixel window measures
   the bed averaged over the window, a blur of standard deviation ``w·GSD/√12`` on the bed (GSD:
   the cameras' ground sampling distance,
   :func:`~aquamvs_core.stages.bed_grid.ground_sampling_distance`). Fine relief (sand
   ripples) comes out flattened by it, and so do the volumes of fine changes. ``n =
   psf_iterations`` Van Cittert steps, ``ẑ ← ẑ + (z − G_σ * ẑ)`` from ``ẑ = z`` (normalised
   Gaussian convolution over the valid cells), undo it to order ``n``: a component of gain ``H``
   gets ``1 − (1 − H)^(n+1)`` (one step: ``H·(2 − H)``), and noise the blur did not shape is
   amplified at most ``n + 1`` times. Two steps are the default: one left the volumes of ripple
   migration with 46–48 mm wavelengths 8–14 % short, three added more noise than they restored
   (``benchmarks/results/psf_iterations_cpu.md``). The
   steps are tapered to nothing where less than ``psf_min_support`` of the kernel lies on valid
   cells (at the rim of the cloud);
4. ``sigma``, the standard uncertainty of a cell's ``z`` as it matters for change detection (the
   part of the error that differs between two frames; errors that the two frames share, such as
   the texture's own matching bias, cancel in ``dz``):
   ``sigma² = (π/2)·spread² / count + (view_sigma_px·GSD)² / cameras`` (the first term is the
   standard error of a median of ``count`` points), where ``spread`` is the robust point
   spread (√(π/2) × mean absolute deviation from the cell medians) pooled over a
   ``spread_window`` neighbourhood (it grows with image noise) and ``view_sigma_px`` is the
   frame-to-frame repeatability of one camera's depth in pixels of the ground sampling distance
   (stereo errors scale with the pixel's footprint), calibrated against the ground truth of the
   synthetic survey (``benchmarks/change_bench.py``); filled cells get ``fill_sigma_factor`` × the
   RMS sigma around them.

Units: metres (world frame, Z down); ``z[j, i]`` is the height at ``(x[i], y[j])``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.stages.bed_grid import BedGrid, footprint_grid

#: Normals with |n_z| below this are too steep for their tangent plane to move a point to its cell centre.
STEEP_NZ = 0.3


class HeightfieldConfig(BaseModel):
    """Parameters of the survey grid and of :func:`build_heightfield` (see the module docstring).

    Attributes:
        cell_mm: grid cell, mm (1 mm is about the fused cloud's voxel).
        extent_m: ``(x_min, x_max, y_min, y_max)`` of the grid, world metres; None: the rig's footprint.
        footprint_min_views: cameras that must see a bed point for it to be in the footprint.
        footprint_water_depth_m: water depths (m below the surface) between which the bed lies.
        footprint_margin_mm: added around the footprint, mm.
        max_fill_cells: holes at most this many cells wide are filled (0: none); wider ones stay NaN.
        min_points: points a cell needs for a measured ``z``.
        psf_sigma_mm: blur compensated in step 3, mm; None: ``w·GSD/√12`` for the plane-sweep
            pathways (``w``: the NCC window) and none for RoMa; 0: no compensation.
        psf_iterations: Van Cittert steps of the compensation (1: first order).
        psf_min_support: fraction of the Gaussian kernel on valid cells below which the compensation
            tapers to nothing (rim of the cloud).
        spread_window: side (cells, odd) of the neighbourhood pooled for a cell's point spread.
        view_sigma_px: frame-to-frame repeatability of one camera's depth, in ground sampling
            distances (calibrated: 0.04 mm at the demo survey's 2.2 mm pixels).
        sigma_floor_mm: smallest sigma, mm.
        fill_sigma_factor: sigma of a filled cell relative to the RMS sigma of its neighbours.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cell_mm: float = Field(1.0, gt=0.05, le=100.0)
    extent_m: tuple[float, float, float, float] | None = None
    footprint_min_views: int = Field(2, ge=1, le=64)
    footprint_water_depth_m: tuple[float, float] = (0.1, 1.0)
    footprint_margin_mm: float = Field(10.0, ge=0.0, le=1000.0)
    max_fill_cells: int = Field(3, ge=0, le=32)
    min_points: int = Field(1, ge=1)
    psf_sigma_mm: float | None = Field(None, ge=0.0, le=100.0)
    psf_iterations: int = Field(2, ge=1, le=5)
    psf_min_support: float = Field(0.5, ge=0.0, lt=1.0)
    spread_window: int = Field(5, ge=1, le=51)
    view_sigma_px: float = Field(0.018, gt=0.0, le=100.0)
    sigma_floor_mm: float = Field(0.01, ge=0.0, le=100.0)
    fill_sigma_factor: float = Field(1.5, ge=1.0, le=10.0)

    @field_validator("extent_m")
    @classmethod
    def _check_extent(cls, v: tuple[float, float, float, float] | None) -> tuple | None:
        if v is not None and not (all(math.isfinite(c) for c in v) and v[0] < v[1] and v[2] < v[3]):
            raise ValueError(f"extent_m {v} must be finite (x_min, x_max, y_min, y_max) with min < max")
        return v

    @field_validator("footprint_water_depth_m")
    @classmethod
    def _check_depths(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 100:
            raise ValueError(f"footprint_water_depth_m {v} must satisfy 0 < low <= high <= 100")
        return v

    @field_validator("spread_window")
    @classmethod
    def _check_window(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"spread_window {v} must be odd")
        return v


# --------------------------------------------------------------------------------------------
# Heightfield
# --------------------------------------------------------------------------------------------


@dataclass
class Heightfield:
    """A frame's bed on the survey grid (see the module docstring).

    Attributes:
        grid: the survey grid.
        z: (ny, nx) float64 world Z, metres (Z down); NaN where unknown.
        count: (ny, nx) int32 points in each cell (0: unknown or filled from the neighbours).
        cameras: (ny, nx) int16 most cameras behind a point of the cell (filled: of the neighbours).
        sigma: (ny, nx) float32 standard uncertainty of ``z``, metres; NaN where ``z`` is NaN.
    """

    grid: BedGrid
    z: np.ndarray
    count: np.ndarray
    cameras: np.ndarray
    sigma: np.ndarray

    def __post_init__(self) -> None:
        for name in ("z", "count", "cameras", "sigma"):
            shape = getattr(self, name).shape
            if shape != self.grid.shape:
                raise ValueError(f"Heightfield.{name} has shape {shape}, the grid {self.grid.shape}")

    @property
    def valid(self) -> np.ndarray:
        """(ny, nx) bool: cells with a height."""
        return np.isfinite(self.z)

    @property
    def filled(self) -> np.ndarray:
        """(ny, nx) bool: cells whose height was filled from their neighbours."""
        return self.valid & (self.count == 0)

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {"z": self.z, "count": self.count, "cameras": self.cameras, "sigma": self.sigma}

    @classmethod
    def from_arrays(cls, grid: BedGrid, arrays: dict[str, np.ndarray]) -> Heightfield:
        return cls(
            grid,
            np.asarray(arrays["z"], dtype=np.float64),
            np.asarray(arrays["count"], dtype=np.int32),
            np.asarray(arrays["cameras"], dtype=np.int16),
            np.asarray(arrays["sigma"], dtype=np.float32),
        )

    def stats(self) -> dict[str, float]:
        """Cells with a height, filled cells, coverage of the grid, median sigma (mm), Z range (m)."""
        valid = self.valid
        n = int(valid.sum())
        return {
            "cells": int(valid.size),
            "valid_cells": n,
            "filled_cells": int(self.filled.sum()),
            "grid_coverage": round(n / valid.size, 4),
            "median_sigma_mm": round(float(np.median(self.sigma[valid])) * 1e3, 4) if n else math.nan,
            "z_min_m": round(float(np.nanmin(self.z)), 5) if n else math.nan,
            "z_max_m": round(float(np.nanmax(self.z)), 5) if n else math.nan,
        }


def survey_grid_for(
    cameras: dict[str, RefractiveCamera], masks: dict[str, np.ndarray] | None, config: HeightfieldConfig
) -> BedGrid:
    """The survey grid of ``config``: ``extent_m`` if set, else the rig's footprint
    (:func:`~aquamvs_core.stages.bed_grid.footprint_grid`)."""
    cell = config.cell_mm * 1e-3
    if config.extent_m is not None:
        return BedGrid.covering(*config.extent_m, cell)
    return footprint_grid(
        cameras,
        masks,
        cell,
        config.footprint_min_views,
        config.footprint_water_depth_m,
        config.footprint_margin_mm * 1e-3,
    )


def box_sum(a: np.ndarray, size: int) -> np.ndarray:
    """(ny, nx) float64 sum of ``a`` over the ``size`` × ``size`` window around each cell (0 outside)."""
    return cv2.boxFilter(
        np.ascontiguousarray(a, dtype=np.float64),
        -1,
        (size, size),
        normalize=False,
        borderType=cv2.BORDER_CONSTANT,
    )


def masked_gaussian(a: np.ndarray, valid: np.ndarray, sigma_cells: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalised Gaussian convolution of ``a`` (ny, nx) over the ``valid`` cells: the weighted mean
    (NaN where no weight) and the fraction of the kernel on valid cells, both (ny, nx) float64."""
    size = 2 * math.ceil(3 * sigma_cells) + 1
    w = valid.astype(np.float64)
    num = cv2.GaussianBlur(
        np.where(valid, a, 0.0).astype(np.float64), (size, size), sigma_cells, borderType=cv2.BORDER_CONSTANT
    )
    den = cv2.GaussianBlur(w, (size, size), sigma_cells, borderType=cv2.BORDER_CONSTANT)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-12, num / den, np.nan), den


def _cell_medians(flat: np.ndarray, h: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Median of ``h`` (N,) per cell index ``flat`` (N,): (size,) medians (NaN: no point), (size,) counts."""
    order = np.lexsort((h, flat))
    k, v = flat[order], h[order]
    start = np.flatnonzero(np.r_[k.size > 0, k[1:] != k[:-1]])  # k is sorted: its runs are the cells
    uniq, counts = k[start], np.diff(np.r_[start, k.size])
    med = np.full(size, np.nan)
    med[uniq] = 0.5 * (v[start + (counts - 1) // 2] + v[start + counts // 2])
    count = np.zeros(size, dtype=np.int64)
    count[uniq] = counts
    return med, count


def build_heightfield(
    points: np.ndarray,
    normals: np.ndarray,
    support: np.ndarray,
    grid: BedGrid,
    config: HeightfieldConfig | None = None,
    psf_sigma: float = 0.0,
    gsd: float | None = None,
) -> Heightfield:
    """The heightfield of a fused cloud on ``grid`` (steps 1–4 of the module docstring).

    Args:
        points: (N, 3) world points, metres. normals: (N, 3) unit normals (either orientation).
        support: (N,) cameras behind each point (fusion's ``support``).
        grid: the survey grid (:func:`survey_grid_for`); points outside it are ignored.
        gsd: the cameras' ground sampling distance on the bed, metres (None: the cell size).
        psf_sigma: blur to compensate, metres (0: none; see
            :func:`~aquamvs_core.stages.bed_grid.window_psf_sigma`).
    """
    config = config or HeightfieldConfig()
    ny, nx = grid.shape
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    i, j, keep = grid.cell_of(pts[:, :2])
    keep &= np.all(np.isfinite(pts), axis=1)
    pts, i, j = pts[keep], i[keep], j[keep]
    n = np.asarray(normals, dtype=np.float64).reshape(-1, 3)[keep]
    sup = np.asarray(support).reshape(-1)[keep].astype(np.int16)

    # 1. Tangent-plane height of each point at its cell centre; per-cell median, count, cameras.
    cx, cy = (grid.i0 + i) * grid.cell, (grid.j0 + j) * grid.cell
    steep = np.abs(n[:, 2]) < STEEP_NZ
    nz = np.where(steep, 1.0, n[:, 2])
    h = pts[:, 2] - np.where(steep, 0.0, (n[:, 0] * (cx - pts[:, 0]) + n[:, 1] * (cy - pts[:, 1])) / nz)
    flat = j * nx + i
    z, count = _cell_medians(flat, h, ny * nx)
    cams = np.zeros(ny * nx, dtype=np.int16)
    np.maximum.at(cams, flat, sup)
    abs_dev = np.bincount(flat, weights=np.abs(h - z[flat]), minlength=ny * nx)
    measured = count >= config.min_points
    z = np.where(measured, z, np.nan).reshape(ny, nx)
    count, cams = np.where(measured, count, 0).reshape(ny, nx), cams.reshape(ny, nx)
    view_sigma = config.view_sigma_px * (grid.cell if gsd is None else gsd)
    sigma = _measured_sigma(abs_dev.reshape(ny, nx), count, cams, config, view_sigma)

    # 2. Small holes; 3. resolution compensation.
    z, sigma, cams = _fill_small_holes(z, sigma, cams, config)
    if psf_sigma > 0:
        z = _compensate_psf(z, psf_sigma / grid.cell, config.psf_min_support, config.psf_iterations)
    valid = np.isfinite(z)
    return Heightfield(
        grid,
        z.astype(np.float64),
        count.astype(np.int32),
        np.where(valid, cams, 0).astype(np.int16),
        np.where(valid, sigma, np.nan).astype(np.float32),
    )


def _measured_sigma(
    abs_dev: np.ndarray, count: np.ndarray, cams: np.ndarray, config: HeightfieldConfig, view: float
) -> np.ndarray:
    """(ny, nx) sigma of the measured cells, metres (NaN elsewhere): step 4 of the module docstring.
    A cell of ``m`` points has ``m − 1`` degrees of freedom around its median; the spread is pooled
    over the neighbourhood's degrees of freedom (0 where there are none)."""
    measured = count > 0
    dof = box_sum(np.maximum(count - 1, 0), config.spread_window)
    dev = box_sum(np.where(measured, abs_dev, 0.0), config.spread_window)
    spread = math.sqrt(math.pi / 2) * dev / np.maximum(dof, 1.0)
    var = (math.pi / 2) * spread**2 / np.maximum(count, 1) + view**2 / np.maximum(cams, 1)
    sigma = np.maximum(np.sqrt(var), config.sigma_floor_mm * 1e-3)
    return np.where(measured, sigma, np.nan)


def _plane_fit_at(z: np.ndarray, valid: np.ndarray, cells: np.ndarray, radius: int) -> np.ndarray:
    """Height at ``cells`` (bool (ny, nx)) of the plane fitted by least squares to the valid cells
    within ``radius``, Gaussian-weighted (σ = 1 cell); the weighted mean where the fit is singular
    (fewer than three neighbours, or all on a line)."""
    d = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * d * d)
    w = valid.astype(np.float64)
    wz = np.where(valid, z, 0.0)

    def corr(src: np.ndarray, px: int, py: int) -> np.ndarray:
        """Σ_offsets g(dx) g(dy) dx^px dy^py · src[cell + offset] at ``cells`` (the kernel is
        separable: two 1-D passes instead of one 2-D one)."""
        out = cv2.sepFilter2D(src, cv2.CV_64F, g * d**px, g * d**py, borderType=cv2.BORDER_CONSTANT)
        return out[cells]

    m0, mx, my = corr(w, 0, 0), corr(w, 1, 0), corr(w, 0, 1)
    mxx, mxy, myy = corr(w, 2, 0), corr(w, 1, 1), corr(w, 0, 2)
    b0, b1, b2 = corr(wz, 0, 0), corr(wz, 1, 0), corr(wz, 0, 1)
    # The normal equations [[m0, mx, my], [mx, mxx, mxy], [my, mxy, myy]] c = b, solved for the
    # plane's height at the cell, c0, by Cramer's rule on the symmetric 3×3 matrix (cofactors of the
    # first column), element-wise over the cells.
    c00 = mxx * myy - mxy * mxy
    c01 = mxy * my - mx * myy
    c02 = mx * mxy - mxx * my
    det = m0 * c00 + mx * c01 + my * c02
    scale = np.maximum(m0, 1e-300)
    ok = det > 1e-6 * scale**3
    mean = b0 / scale
    return np.where(ok, (b0 * c00 + b1 * c01 + b2 * c02) / np.where(ok, det, 1.0), mean)


def _fill_small_holes(
    z: np.ndarray, sigma: np.ndarray, cams: np.ndarray, config: HeightfieldConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 2 of the module docstring: the holes closed by a ``max_fill_cells + 1`` square get the
    height of a local plane fitted to the measured cells within ``max_fill_cells`` (exact on a
    plane), ``fill_sigma_factor`` × their RMS sigma and their largest camera count. Everything else
    is returned unchanged."""
    valid = np.isfinite(z)
    k = config.max_fill_cells
    if k <= 0 or valid.all() or not valid.any():
        return z, sigma, cams
    # Closing with a (k + 1)² square: dilation, then erosion by the reflected square (with an even
    # side, OpenCV's MORPH_CLOSE would shift the result by a cell).
    square, a = np.ones((k + 1, k + 1), np.uint8), k // 2
    grown = cv2.dilate(
        valid.astype(np.uint8), square, anchor=(a, a), borderType=cv2.BORDER_CONSTANT, borderValue=0
    )
    closed = cv2.erode(grown, square, anchor=(k - a, k - a), borderType=cv2.BORDER_CONSTANT, borderValue=1)
    win = 2 * k + 1
    weight = box_sum(valid, win)
    holes = closed.astype(bool) & ~valid & (weight > 0)
    if not holes.any():
        return z, sigma, cams
    rms_sigma = np.sqrt(
        np.maximum(box_sum(np.where(valid, sigma, 0.0) ** 2, win), 0.0) / np.maximum(weight, 1.0)
    )
    near_cams = cv2.dilate(cams, np.ones((win, win), np.uint8))
    z, sigma, cams = z.copy(), sigma.copy(), cams.copy()
    z[holes] = _plane_fit_at(z, valid, holes, k)
    sigma[holes] = config.fill_sigma_factor * rms_sigma[holes]
    cams[holes] = near_cams[holes]
    return z, sigma, cams


def _compensate_psf(z: np.ndarray, sigma_cells: float, min_support: float, iterations: int) -> np.ndarray:
    """Step 3 of the module docstring: ``iterations`` steps ``ẑ ← ẑ + a·(z − G * ẑ)`` from ``ẑ = z``,
    with ``a`` = 1 where the kernel lies wholly on valid cells, tapering linearly to 0 where only
    ``min_support`` of it does."""
    valid = np.isfinite(z)
    _, support = masked_gaussian(z, valid, sigma_cells)
    amount = np.clip((support - min_support) / (1.0 - min_support), 0.0, 1.0)
    estimate = z
    for _ in range(iterations):
        blurred, _ = masked_gaussian(estimate, valid, sigma_cells)
        estimate = np.where(valid, estimate + amount * np.where(valid, z - blurred, 0.0), np.nan)
    return estimate
