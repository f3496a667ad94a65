"""Ground truth of a synthetic survey: the bottom heightfield per frame (``ground_truth.npz``).

File layout (numpy ``.npz``):

* ``x`` (Nx,) and ``y`` (Ny,): world X and Y of the grid nodes, metres, uniformly increasing;
* ``z`` (F, Ny, Nx) float64: world Z of the bottom (Z down), metres, per frame;
* ``frame_indices`` (F,): the video frame index of each ``z`` slice;
* ``silt_mask`` (Ny, Nx) bool, optional (surveys with silt patches only): the grid nodes that lie in
  a low-contrast silt patch (:mod:`aquamvs_core.synthetic.silt`). Files without it load with
  ``silt_mask = None``.

The bottom surface is *defined* as the bilinear interpolation of ``z`` (:meth:`GroundTruth.height_at`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

GT_KEYS = ("x", "y", "z", "frame_indices")


class HeightGrid(Protocol):
    """A bilinear heightfield per frame (world Z down, metres): what the metrics need of a ground
    truth (:class:`GroundTruth` and :class:`~aquamvs_core.synthetic.Terrain` both have it)."""

    x: np.ndarray
    y: np.ndarray

    def heights(self, frame_index: int) -> np.ndarray: ...


def bilinear_height(x: np.ndarray, y: np.ndarray, z: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """World Z (N,) at points ``xy`` (N, 2) of the heightfield ``z`` (Ny, Nx) with node coordinates
    ``x`` (Nx,), ``y`` (Ny,) (uniform), by bilinear interpolation; NaN outside the grid."""
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    nx, ny = x.size, y.size
    fx = (pts[:, 0] - x[0]) / ((x[-1] - x[0]) / (nx - 1))
    fy = (pts[:, 1] - y[0]) / ((y[-1] - y[0]) / (ny - 1))
    inside = (fx >= 0) & (fx <= nx - 1) & (fy >= 0) & (fy <= ny - 1)
    ix = np.clip(np.floor(np.nan_to_num(fx)), 0, nx - 2).astype(np.int64)
    iy = np.clip(np.floor(np.nan_to_num(fy)), 0, ny - 2).astype(np.int64)
    tx, ty = fx - ix, fy - iy
    h00, h10 = z[iy, ix], z[iy, ix + 1]
    h01, h11 = z[iy + 1, ix], z[iy + 1, ix + 1]
    h = h00 + tx * (h10 - h00) + ty * ((h01 - h00) + tx * (h11 - h10 - h01 + h00))
    return np.where(inside, h, np.nan)


@dataclass(frozen=True)
class GroundTruth:
    """The ground-truth bottom (see the module docstring)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    frame_indices: np.ndarray
    silt_mask: np.ndarray | None = None

    def frame_slot(self, frame_index: int) -> int:
        """Position of ``frame_index`` in :attr:`frame_indices` (KeyError if absent)."""
        hits = np.nonzero(self.frame_indices == frame_index)[0]
        if hits.size == 0:
            raise KeyError(f"frame {frame_index} has no ground truth (frames: {self.frame_indices.tolist()})")
        return int(hits[0])

    def heights(self, frame_index: int) -> np.ndarray:
        """(Ny, Nx) world Z grid of frame ``frame_index``."""
        return self.z[self.frame_slot(frame_index)]

    def height_at(self, frame_index: int, xy: np.ndarray) -> np.ndarray:
        """World Z (N,) of the bottom at world points ``xy`` (N, 2), bilinear; NaN outside the grid."""
        return bilinear_height(self.x, self.y, self.heights(frame_index), xy)


def save_ground_truth(
    path: str | Path,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    frame_indices: np.ndarray,
    silt_mask: np.ndarray | None = None,
) -> Path:
    """Write ``ground_truth.npz`` (uncompressed); ``silt_mask`` only when given."""
    path = Path(path)
    arrays = {
        "x": np.asarray(x, dtype=np.float64),
        "y": np.asarray(y, dtype=np.float64),
        "z": np.asarray(z, dtype=np.float64),
        "frame_indices": np.asarray(frame_indices, dtype=np.int64),
    }
    if silt_mask is not None:
        arrays["silt_mask"] = np.asarray(silt_mask, dtype=bool)
    with path.open("wb") as f:
        np.savez(f, **arrays)
    return path


def load_ground_truth(path: str | Path) -> GroundTruth:
    """Load and check a ground-truth file (ValueError naming the file on a bad layout)."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in GT_KEYS if k not in data]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing} (expected {list(GT_KEYS)})")
        x, y = data["x"].astype(np.float64), data["y"].astype(np.float64)
        z, frames = data["z"].astype(np.float64), data["frame_indices"].astype(np.int64)
        silt = data["silt_mask"].astype(bool) if "silt_mask" in data else None
    if x.ndim != 1 or y.ndim != 1 or x.size < 2 or y.size < 2:
        raise ValueError(f"{path}: x and y must be 1-D with at least 2 nodes, got {x.shape}, {y.shape}")
    if np.any(np.diff(x) <= 0) or np.any(np.diff(y) <= 0):
        raise ValueError(f"{path}: x and y must be strictly increasing")
    if z.ndim != 3 or z.shape[1:] != (y.size, x.size) or frames.shape != (z.shape[0],):
        raise ValueError(
            f"{path}: z must be (F, Ny, Nx) = (F, {y.size}, {x.size}) with F frame_indices, "
            f"got z {z.shape}, frame_indices {frames.shape}"
        )
    if silt is not None and silt.shape != (y.size, x.size):
        raise ValueError(f"{path}: silt_mask must be (Ny, Nx) = ({y.size}, {x.size}), got {silt.shape}")
    return GroundTruth(x=x, y=y, z=z, frame_indices=frames, silt_mask=silt)
