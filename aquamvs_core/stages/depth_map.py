"""Depth maps: the data contract between stereo (producers) and fusion/meshing (consumers).

A depth map lives on the pixel grid of a camera's *undistorted* image (intrinsics ``K_new``).
Its values are **ray depths** (see :mod:`aquamvs_core.camera.refraction`): metres along the refracted ray
from the water surface, so the 3-D point of pixel (u, v) is ``origin + depth * direction`` of
``RefractiveCamera.cast_ray((u, v))``. NaN marks pixels without a depth.

Depths are searched over a **world-Z range** per camera: :func:`z_range_from_samples` derives it
from sample heights (the sparse points a camera sees), :func:`fallback_z_range` is what is searched
when nothing narrows it down.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from aquamvs_core.camera.refraction import RefractiveCamera, point_at_ray_depth
from aquamvs_core.camera.sampling import pixel_grid


@dataclass
class DepthMap:
    """A camera's depth map in its undistorted image.

    Attributes:
        camera: camera name.
        depth: (H, W) float32 ray depth, metres; NaN where unknown.
        confidence: (H, W) float32 in [0, 1]; 0 where ``depth`` is NaN.
    """

    camera: str
    depth: torch.Tensor
    confidence: torch.Tensor

    def __post_init__(self) -> None:
        if self.depth.ndim != 2 or self.depth.shape != self.confidence.shape:
            raise ValueError(
                f"depth {tuple(self.depth.shape)} and confidence {tuple(self.confidence.shape)} "
                "must be matching (H, W) maps"
            )

    @property
    def valid(self) -> torch.Tensor:
        """(H, W) bool: pixels with a depth."""
        return torch.isfinite(self.depth)

    def points(self, camera: RefractiveCamera) -> tuple[torch.Tensor, torch.Tensor]:
        """World points (H, W, 3) of every pixel and their validity (H, W)."""
        h, w = self.depth.shape
        pixels = pixel_grid(w, h, self.depth.device, self.depth.dtype)
        origins, directions, ok = camera.cast_ray(pixels)
        points = point_at_ray_depth(origins, directions, torch.nan_to_num(self.depth))
        return points, ok & self.valid


@dataclass
class CameraDepth(DepthMap):
    """A camera's combined :class:`~aquamvs_core.stages.depth_map.DepthMap` plus the agreement statistics.

    Attributes:
        support: (H, W) int32 number of pairs in the consensus (0 where ``depth`` is NaN).
        candidates: (H, W) int32 number of pairs with a confident depth.
        timings: seconds per stage, where known.
    """

    support: torch.Tensor | None = None
    candidates: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)


#: Water depths (metres below the surface) searched when nothing narrows the range down.
FALLBACK_DEPTH_BELOW_WATER_M: tuple[float, float] = (0.05, 2.0)


def fallback_z_range(
    water_z: float, depth_below_water: tuple[float, float] = FALLBACK_DEPTH_BELOW_WATER_M
) -> tuple[float, float]:
    """World-Z range ``water_z + depth_below_water`` (metres, Z down)."""
    return water_z + depth_below_water[0], water_z + depth_below_water[1]


def z_range_from_samples(
    z: np.ndarray,
    water_z: float,
    percentiles: tuple[float, float] = (1.0, 99.0),
    margin_m: float = 0.01,
) -> tuple[float, float]:
    """World-Z search range from sample heights ``z`` (N,) (metres, Z down; e.g. sparse points):
    their ``percentiles`` widened by ``margin_m`` on both sides, kept 1 mm below the water surface.

    Raises:
        ValueError: fewer than two finite samples below the water.
    """
    z = np.asarray(z, dtype=np.float64).reshape(-1)
    z = z[np.isfinite(z) & (z > water_z)]
    if z.size < 2:
        raise ValueError("need at least two finite underwater points")
    lo, hi = np.percentile(z, percentiles)
    return max(float(lo) - margin_m, water_z + 1e-3), float(hi) + margin_m
