"""The survey grid of the heightfields (:class:`BedGrid`) and the rig's footprint through the water.

One grid per survey, so that every frame's heightfield lines up cell for cell: square cells whose
centres lie on multiples of the cell size (``x[i] = (i0 + i)·cell``), over the rig's footprint
(:func:`footprint_grid`): the bounding box of the bed area that enough cameras see, on horizontal
planes spanning the water depths where the bed may lie. It depends on the calibration only.

Also here: the cameras' ground sampling distance on the bed (:func:`ground_sampling_distance`) and
the blur a stereo window makes on it (:func:`window_psf_sigma`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from aquamvs_core.camera.refraction import RefractiveCamera


@dataclass(frozen=True)
class BedGrid:
    """A regular world (x, y) grid whose cell centres are ``x[i] = (i0 + i)·cell``, ``y[j] = (j0 + j)·cell``.

    Attributes:
        cell: cell side, metres. i0, j0: lattice index of the first column and row. nx, ny: size.
    """

    cell: float
    i0: int
    j0: int
    nx: int
    ny: int

    def __post_init__(self) -> None:
        if not (self.cell > 0 and self.nx >= 1 and self.ny >= 1):
            raise ValueError(f"invalid grid: cell {self.cell} m, {self.nx} x {self.ny} cells")

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx): the shape of every per-cell array."""
        return self.ny, self.nx

    @property
    def x(self) -> np.ndarray:
        """(nx,) float64 world X of the column centres, metres."""
        return (self.i0 + np.arange(self.nx)) * self.cell

    @property
    def y(self) -> np.ndarray:
        """(ny,) float64 world Y of the row centres, metres."""
        return (self.j0 + np.arange(self.ny)) * self.cell

    @property
    def cell_area(self) -> float:
        """Area of one cell, m²."""
        return self.cell * self.cell

    @classmethod
    def covering(cls, x_min: float, x_max: float, y_min: float, y_max: float, cell: float) -> BedGrid:
        """The smallest lattice grid of ``cell`` metres whose cells cover the box (metres)."""
        i0, i1 = math.floor(x_min / cell + 0.5), math.floor(x_max / cell + 0.5)
        j0, j1 = math.floor(y_min / cell + 0.5), math.floor(y_max / cell + 0.5)
        return cls(cell, i0, j0, i1 - i0 + 1, j1 - j0 + 1)

    def cell_of(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Column ``i`` (N,), row ``j`` (N,) and inside-the-grid (N,) of world points ``xy`` (N, 2)."""
        i = np.floor(xy[:, 0] / self.cell + 0.5).astype(np.int64) - self.i0
        j = np.floor(xy[:, 1] / self.cell + 0.5).astype(np.int64) - self.j0
        return i, j, (i >= 0) & (i < self.nx) & (j >= 0) & (j < self.ny)

    def attrs(self) -> dict[str, Any]:
        """JSON attrs of the grid (inverse: :meth:`from_attrs`)."""
        return {"cell_m": self.cell, "i0": self.i0, "j0": self.j0, "nx": self.nx, "ny": self.ny}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> BedGrid:
        return cls(float(attrs["cell_m"]), *(int(attrs[k]) for k in ("i0", "j0", "nx", "ny")))


def _views(
    cameras: dict[str, RefractiveCamera], masks: dict[str, np.ndarray] | None, points: torch.Tensor
) -> torch.Tensor:
    """(N,) int32: cameras whose image (and validity mask) contains the projection of ``points`` (N, 3)."""
    views = torch.zeros(points.shape[0], dtype=torch.int32)
    for name, cam in cameras.items():
        uv, ok = cam.project(points)
        ok &= cam.in_image(uv)
        if masks is not None and name in masks:
            mask = torch.as_tensor(np.asarray(masks[name], dtype=bool))
            iu = torch.round(uv[:, 0]).clamp(0, mask.shape[1] - 1).long()
            iv = torch.round(uv[:, 1]).clamp(0, mask.shape[0] - 1).long()
            ok &= mask[iv, iu]
        views += ok.to(torch.int32)
    return views


def footprint_grid(
    cameras: dict[str, RefractiveCamera],
    masks: dict[str, np.ndarray] | None,
    cell: float,
    min_views: int = 2,
    water_depths: tuple[float, float] = (0.1, 1.0),
    margin: float = 0.01,
    probe_spacing: float = 0.02,
    depth_planes: int = 4,
) -> BedGrid:
    """The survey grid (module docstring): the bounding box of the bed area seen by ``min_views``
    cameras on ``depth_planes`` planes spanning ``water_depths`` (metres below the surface),
    probed every ``probe_spacing`` metres, grown by one probe spacing and ``margin`` (metres), on
    cells of ``cell`` metres.

    Args:
        cameras: refractive cameras with undistorted intrinsics and ``image_size``.
        masks: per camera (H, W) bool validity of the undistorted image (None: the whole image).

    Raises:
        ValueError: no probed bed point is seen by enough cameras.
    """
    water_z = next(iter(cameras.values())).water_z
    depths = np.linspace(*water_depths, depth_planes)
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    with torch.no_grad():
        rim = []  # image corners and edge midpoints on the deepest plane bound the probes
        for cam in cameras.values():
            w, h = cam.image_size
            pix = torch.cartesian_prod(
                torch.tensor([0.0, w / 2, w - 1.0], dtype=torch.float64),
                torch.tensor([0.0, h / 2, h - 1.0], dtype=torch.float64),
            )
            origins, dirs, ok = cam.cast_ray(pix)
            s = (water_z + depths[-1] - origins[:, 2]) / dirs[:, 2]
            rim.append((origins + s[:, None] * dirs)[ok, :2].numpy())
        rim = np.concatenate(rim)
        xx, yy = np.meshgrid(
            np.arange(rim[:, 0].min(), rim[:, 0].max() + probe_spacing, probe_spacing),
            np.arange(rim[:, 1].min(), rim[:, 1].max() + probe_spacing, probe_spacing),
        )
        for depth in depths:
            pts = np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, water_z + depth)], axis=1)
            seen = (_views(cameras, masks, torch.from_numpy(pts)) >= min_views).numpy()
            if seen.any():
                lo, hi = np.minimum(lo, pts[seen, :2].min(0)), np.maximum(hi, pts[seen, :2].max(0))
    if not np.all(np.isfinite(lo)):
        raise ValueError(
            f"no bed point at water depths {water_depths} m is seen by {min_views} cameras: "
            "set heightfield.extent_m"
        )
    margin = margin + probe_spacing
    return BedGrid.covering(lo[0] - margin, hi[0] + margin, lo[1] - margin, hi[1] + margin, cell)


def ground_sampling_distance(cameras: dict[str, RefractiveCamera], bed_z: float) -> float:
    """Median over the cameras of the size on the bed plane ``Z = bed_z`` of the pixel at the image
    centre, metres (the mean of its width and height, through the water)."""
    sizes = []
    with torch.no_grad():
        for cam in cameras.values():
            w, h = cam.image_size
            u, v = (w - 1) / 2, (h - 1) / 2
            pix = torch.tensor([[u, v], [u + 1, v], [u, v + 1]], dtype=torch.float64)
            origins, dirs, ok = cam.cast_ray(pix)
            if not bool(ok.all()):
                continue
            p = origins + ((bed_z - origins[:, 2]) / dirs[:, 2])[:, None] * dirs
            sizes.append(0.5 * float((p[1] - p[0]).norm() + (p[2] - p[0]).norm()))
    if not sizes:
        raise ValueError("no camera's image centre looks down into the water")
    return float(np.median(sizes))


def window_psf_sigma(window_px: int, gsd: float) -> float:
    """Standard deviation (metres) of a ``window_px``-pixel box on the bed at ``gsd`` metres per pixel."""
    return window_px * gsd / math.sqrt(12.0)
