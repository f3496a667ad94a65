"""Each camera's depth search range (world Z) from a frame's sparse cloud, with fallbacks."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.stages.depth_map import (
    FALLBACK_DEPTH_BELOW_WATER_M,
    fallback_z_range,
    z_range_from_samples,
)


class DepthRangeConfig(BaseModel):
    """How each camera's plane-sweep range (world Z) is derived from the sparse cloud."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    low_percentile: float = Field(1.0, ge=0.0, lt=50.0, description="lower percentile of visible sparse Z")
    high_percentile: float = Field(
        99.0, gt=50.0, le=100.0, description="upper percentile of visible sparse Z"
    )
    margin_m: float = Field(
        0.01, ge=0.0, le=1.0, description="added on both sides of the percentile range, m"
    )
    min_points: int = Field(30, ge=3, description="fewer visible sparse points → use the frame-wide range")
    fallback_depth_m: tuple[float, float] = Field(
        FALLBACK_DEPTH_BELOW_WATER_M,
        description="water depths (m below the surface) searched when the cloud is too sparse",
    )


def camera_depth_ranges(
    points: np.ndarray,
    cameras: dict[str, RefractiveCamera],
    config: DepthRangeConfig,
    masks: dict[str, np.ndarray] | None = None,
) -> dict[str, dict]:
    """World-Z search range per camera from the frame's sparse cloud ``points`` (N, 3).

    A camera uses the points it sees (projected inside its image by the exact, fold-guarded
    projection, and inside its validity mask ``masks[name]`` (H, W) bool when given); if it sees fewer than
    ``min_points`` it uses the frame-wide range, and if the whole cloud is that small, the fallback
    water depths. Returns camera → ``{"z_min", "z_max", "source", "n_points"}`` (metres).
    """
    pts = points[np.all(np.isfinite(points), axis=1)]
    water_z = next(iter(cameras.values())).water_z

    def span(z: np.ndarray) -> tuple[float, float]:
        return z_range_from_samples(
            z, water_z, (config.low_percentile, config.high_percentile), config.margin_m
        )

    if len(pts) >= config.min_points:
        frame_range, frame_source = span(pts[:, 2]), "frame"
    else:
        frame_range, frame_source = fallback_z_range(water_z, config.fallback_depth_m), "fallback"
    ranges = {}
    tensor = torch.from_numpy(pts)
    for name, cam in cameras.items():
        if len(pts):
            uv, ok = cam.project(tensor)
            seen = (ok & cam.in_image(uv)).numpy()
            if masks is not None and name in masks:
                mask = np.asarray(masks[name], dtype=bool)
                iu = np.clip(np.round(np.nan_to_num(uv[:, 0].numpy())), 0, mask.shape[1] - 1).astype(int)
                iv = np.clip(np.round(np.nan_to_num(uv[:, 1].numpy())), 0, mask.shape[0] - 1).astype(int)
                seen &= mask[iv, iu]
        else:
            seen = np.zeros(0, dtype=bool)
        if seen.sum() >= config.min_points:
            (lo, hi), source = span(pts[seen, 2]), "camera"
        else:
            (lo, hi), source = frame_range, frame_source
        ranges[name] = {"z_min": lo, "z_max": hi, "source": source, "n_points": int(seen.sum())}
    return ranges
