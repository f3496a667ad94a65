"""Bed change between two heightfields of a survey: dz, its level of detection, volumes, regions.

**Change.** ``dz = z_B − z_A`` (metres) per cell of the survey grid where both frames have a height;
world Z points down, so **positive dz means the bed went deeper** (erosion, digging) and negative
means it rose (deposition, a mound).

**Level of detection** (LoD, metres): ``LoD = q · σ_dz`` with ``q`` the two-sided normal quantile
of ``confidence`` (1.96 at 95 %) and

    σ_dz² = σ_A² + σ_B² + (κ · m)²,

``σ_A``, ``σ_B`` the two heightfields' per-cell uncertainties (see
:mod:`aquamvs_core.stages.heightfield`) and ``m`` the local RMS of ``dz`` (Gaussian window of
``relative_window`` cells): the reconstruction measures the bed through a blur of a few pixels,
so its error in ``dz`` grows with the change around a cell, by the relative amount
``κ = relative_sigma``. A cell with ``|dz| <= LoD`` shows **no detectable change**: for a truly
unchanged cell this holds with probability ``confidence`` when the model is calibrated, which
``benchmarks/change_bench.py`` measures against ground truth.

**Volumes** (m³, cell area × dz): deepened (Σ dz > 0), raised (Σ −dz over dz < 0), net, and the
same over the cells above the LoD only ("detected"); areas (m²) compared, deepened, raised and
changed (above the LoD); the median |dz| (mm). Optionally per **region** (:class:`Region`: a
circle or a polygon in world x, y metres, e.g. one per nest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aquamvs_core.stages.bed_grid import BedGrid
from aquamvs_core.stages.heightfield import Heightfield, masked_gaussian


class Region(BaseModel):
    """A named region of the bed: a circle (``center_m``, ``radius_m``) or a polygon
    (``polygon_m``, at least three (x, y) vertices), in world metres."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    center_m: tuple[float, float] | None = None
    radius_m: float | None = Field(None, gt=0.0)
    polygon_m: tuple[tuple[float, float], ...] | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> Region:
        circle = self.center_m is not None or self.radius_m is not None
        if circle == (self.polygon_m is not None):
            raise ValueError(f"region {self.name!r}: give either center_m and radius_m, or polygon_m")
        if circle and (self.center_m is None or self.radius_m is None):
            raise ValueError(f"region {self.name!r}: a circle needs both center_m and radius_m")
        if self.polygon_m is not None and len(self.polygon_m) < 3:
            raise ValueError(f"region {self.name!r}: a polygon needs at least 3 vertices")
        return self

    def mask(self, grid: BedGrid) -> np.ndarray:
        """(ny, nx) bool: cells whose centre lies in the region."""
        if self.polygon_m is None:
            xx, yy = np.meshgrid(grid.x, grid.y)
            cx, cy = self.center_m  # type: ignore[misc]
            return (xx - cx) ** 2 + (yy - cy) ** 2 <= self.radius_m**2  # type: ignore[operator]
        # Vertices in cell units (cv2 fills by pixel centres: integer positions are cell centres).
        shift = 8
        poly = np.asarray(self.polygon_m, dtype=np.float64) / grid.cell - [grid.i0, grid.j0]
        mask = np.zeros(grid.shape, np.uint8)
        cv2.fillPoly(
            mask, [np.round(poly * (1 << shift)).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=shift
        )
        return mask.astype(bool)


class ChangeConfig(BaseModel):
    """Parameters of :func:`compute_change` and of the bed-change step.

    Attributes:
        confidence: of the level of detection (two-sided, normal quantile).
        relative_sigma: κ, the relative uncertainty of dz with the local change (calibrated).
        relative_window_mm: Gaussian window (σ) of the local RMS of dz, mm; None: the heightfields'
            compensated blur (at least 3 cells).
        reference_frame: frame index every frame is also compared with; None: the first frame.
        regions: named circles or polygons reported separately.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    confidence: float = Field(0.95, ge=0.5, le=0.9999)
    relative_sigma: float = Field(0.40, ge=0.0, le=10.0)
    relative_window_mm: float | None = Field(None, gt=0.0, le=1000.0)
    reference_frame: int | None = Field(None, ge=0)
    regions: tuple[Region, ...] = ()

    @model_validator(mode="after")
    def _unique_regions(self) -> ChangeConfig:
        names = [r.name for r in self.regions]
        if len(set(names)) != len(names) or "all" in names:
            raise ValueError(f"region names must be unique and not 'all', got {names}")
        return self

    @property
    def quantile(self) -> float:
        """The LoD's multiple of σ_dz (1.96 at 95 %)."""
        return NormalDist().inv_cdf(0.5 + self.confidence / 2)


@dataclass
class BedChange:
    """The change from frame A to frame B on the survey grid (see the module docstring).

    Attributes:
        grid: the survey grid.
        dz: (ny, nx) float64 ``z_B − z_A``, metres (positive: deeper); NaN where either is unknown.
        lod: (ny, nx) float32 level of detection, metres; NaN where ``dz`` is.
        confidence: the LoD's confidence.
    """

    grid: BedGrid
    dz: np.ndarray
    lod: np.ndarray
    confidence: float

    @property
    def valid(self) -> np.ndarray:
        """(ny, nx) bool: cells where both frames have a height."""
        return np.isfinite(self.dz)

    @property
    def deepened(self) -> np.ndarray:
        """(ny, nx) bool: detectably deeper (dz > LoD)."""
        return self.valid & (self.dz > self.lod)

    @property
    def raised(self) -> np.ndarray:
        """(ny, nx) bool: detectably higher (−dz > LoD)."""
        return self.valid & (-self.dz > self.lod)

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {"dz": self.dz, "lod": self.lod}


def compute_change(
    a: Heightfield, b: Heightfield, config: ChangeConfig | None = None, relative_window_cells: float = 3.0
) -> BedChange:
    """``dz = z_B − z_A`` and its LoD (module docstring) from two heightfields on one grid.

    Args:
        a, b: the earlier (A) and later (B) heightfield.
        relative_window_cells: the local-RMS window (σ, cells) used when
            ``config.relative_window_mm`` is None.

    Raises:
        ValueError: the heightfields are on different grids.
    """
    config = config or ChangeConfig()
    if a.grid != b.grid:
        raise ValueError(f"heightfields on different grids: {a.grid} and {b.grid}")
    dz = b.z.astype(np.float64) - a.z.astype(np.float64)
    valid = np.isfinite(dz)
    window = (
        config.relative_window_mm * 1e-3 / a.grid.cell
        if config.relative_window_mm is not None
        else max(3.0, relative_window_cells)
    )
    mean_sq, _ = masked_gaussian(dz * dz, valid, window)
    var = a.sigma.astype(np.float64) ** 2 + b.sigma.astype(np.float64) ** 2
    var = var + (config.relative_sigma**2) * np.nan_to_num(mean_sq)
    lod = np.where(valid, config.quantile * np.sqrt(var), np.nan)
    return BedChange(a.grid, dz, lod.astype(np.float32), config.confidence)


#: The keys of :func:`change_volumes`, in order.
VOLUME_KEYS = (
    "deepened_m3",
    "raised_m3",
    "net_m3",
    "deepened_detected_m3",
    "raised_detected_m3",
    "area_compared_m2",
    "area_deepened_m2",
    "area_raised_m2",
    "area_changed_m2",
    "median_abs_dz_mm",
)


def change_volumes(change: BedChange, mask: np.ndarray | None = None) -> dict[str, float]:
    """Volumes (m³), areas (m²) and the median |dz| (mm) of ``change`` over ``mask`` (all if None)
    (see the module docstring)."""
    sel = change.valid if mask is None else change.valid & mask
    dz = change.dz[sel].astype(np.float64)
    above = np.abs(dz) > change.lod[sel]
    area = change.grid.cell_area
    return {
        "deepened_m3": float(dz[dz > 0].sum() * area),
        "raised_m3": float(-dz[dz < 0].sum() * area),
        "net_m3": float(dz.sum() * area),
        "deepened_detected_m3": float(dz[above & (dz > 0)].sum() * area),
        "raised_detected_m3": float(-dz[above & (dz < 0)].sum() * area),
        "area_compared_m2": float(dz.size * area),
        "area_deepened_m2": float(np.count_nonzero(above & (dz > 0)) * area),
        "area_raised_m2": float(np.count_nonzero(above & (dz < 0)) * area),
        "area_changed_m2": float(np.count_nonzero(above) * area),
        "median_abs_dz_mm": float(np.median(np.abs(dz)) * 1e3) if dz.size else math.nan,
    }


def change_rows(change: BedChange, regions: tuple[Region, ...] = ()) -> list[dict[str, Any]]:
    """One row of :func:`change_volumes` for the whole grid (``region = "all"``) and one per region."""
    rows = [{"region": "all", **change_volumes(change)}]
    rows += [{"region": r.name, **change_volumes(change, r.mask(change.grid))} for r in regions]
    return rows
