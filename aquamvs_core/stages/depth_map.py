"""Depth maps: the data contract between stereo (producers) and fusion/meshing (consumers).

A depth map lives on the pixel grid of a camera's *undistorted* image (intrinsics ``K_new``).
Its values are **ray depths** (see :mod:`aquamvs_core.camera.refraction`): metres along the refracted ray
from the water surface, so the 3-D point of pixel (u, v) is ``origin + depth * direction`` of
``RefractiveCamera.cast_ray((u, v))``. NaN marks pixels without a depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from aquamvs_core.camera.refraction import RefractiveCamera, point_at_ray_depth


def pixel_grid(
    width: int, height: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(H, W, 2) pixel centres (u, v) of a ``width`` × ``height`` image."""
    u = torch.arange(width, device=device, dtype=dtype)
    v = torch.arange(height, device=device, dtype=dtype)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], dim=-1)


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
