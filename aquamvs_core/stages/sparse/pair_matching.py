"""Sparse pipeline steps: match and triangulate one camera pair; pool a frame's sparse cloud; derive
each camera's depth search range from it."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.stages.sparse.matching import SparseMatchConfig, match_images
from aquamvs_core.stages.sparse.triangulation import TriangulationConfig, triangulate_matches


@dataclass(frozen=True)
class SparsePair:
    """Matches of a directed pair and their triangulation (numpy, for storage).

    Attributes:
        pixels_ref, pixels_src: (M, 2) float32 matched undistorted pixels (u, v).
        scores: (M,) float32 match scores.
        points: (M, 3) float64 triangulated world points (NaN where triangulation failed).
        reprojection_px: (M,) float32 worst reprojection error over both views.
        angle_deg: (M,) float32 intersection angle.
        keep: (M,) bool: passed the angle, reprojection and under-water filters.
    """

    pixels_ref: np.ndarray
    pixels_src: np.ndarray
    scores: np.ndarray
    points: np.ndarray
    reprojection_px: np.ndarray
    angle_deg: np.ndarray
    keep: np.ndarray

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SparsePair:
        return cls(**{k: arrays[k] for k in cls.__dataclass_fields__})


def relative_roll_deg(cam_ref: RefractiveCamera, cam_src: RefractiveCamera) -> float:
    """Roll (degrees) of ``cam_src``'s image relative to ``cam_ref``'s about the vertical: the signed
    angle from the reference's image +u axis to the source's, both projected onto the horizontal
    world plane (world X towards Y). Rotating the source image by its opposite (OpenCV's
    counter-clockwise-positive convention) makes the two views upright to each other."""
    u_ref = cam_ref.R[0, :2].double()  # world direction of the image +u axis (row 0 of R), in XY
    u_src = cam_src.R[0, :2].double()
    cross = float(u_ref[0] * u_src[1] - u_ref[1] * u_src[0])
    return float(np.degrees(np.arctan2(cross, float(u_ref @ u_src))))


def _rotate_image(image: np.ndarray, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` rotated by ``angle_deg`` about its centre on a canvas that keeps every pixel, and
    the (2, 3) affine map from rotated pixels back to original pixels (pixel centres at integers)."""
    h, w = image.shape[:2]
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)
    forward = cv2.getRotationMatrix2D(centre, angle_deg, 1.0)
    c, s = abs(forward[0, 0]), abs(forward[0, 1])
    new_w, new_h = int(np.ceil(w * c + h * s)), int(np.ceil(w * s + h * c))
    forward[0, 2] += (new_w - 1) / 2.0 - centre[0]
    forward[1, 2] += (new_h - 1) / 2.0 - centre[1]
    rotated = cv2.warpAffine(image, forward, (new_w, new_h), flags=cv2.INTER_LINEAR)
    return rotated, cv2.invertAffineTransform(forward)


def match_and_triangulate(
    image_ref: np.ndarray,
    image_src: np.ndarray,
    cam_ref: RefractiveCamera,
    cam_src: RefractiveCamera,
    match_config: SparseMatchConfig,
    triangulation_config: TriangulationConfig,
    model_cache: dict | None = None,
    feature_cache: dict | None = None,
    keys: tuple | None = None,
) -> SparsePair:
    """Match two undistorted RGB images and triangulate the matches through the water.
    ``feature_cache`` + ``keys`` (e.g. ``((frame, ref), (frame, src))``) reuse per-image features.

    Learned features (ALIKED, DISK) are not rotation invariant, while ring cameras are rolled up to
    180° relative to each other: for them the source image is first rotated by
    :func:`relative_roll_deg` (to the nearest degree, so cached features stay reusable per angle),
    and its keypoints are mapped back exactly. SIFT is rotation invariant and matches as is.
    """
    angle = 0.0 if match_config.method == "sift" else round(relative_roll_deg(cam_ref, cam_src))
    back = None
    if abs(angle) >= 10:
        image_src, back = _rotate_image(image_src, -angle)
        if keys is not None:
            keys = (
                keys[0],
                (*keys[1], f"rot{angle:+.0f}") if isinstance(keys[1], tuple) else (keys[1], angle),
            )
    matches = match_images(image_ref, image_src, match_config, model_cache, feature_cache, keys)
    pix_ref, pix_src = matches.matched_pixels()
    if back is not None:
        affine = torch.from_numpy(back).to(pix_src.dtype)
        pix_src = pix_src @ affine[:, :2].T + affine[:, 2]
    tri = triangulate_matches(
        cam_ref, cam_src, pix_ref.to(torch.float64), pix_src.to(torch.float64), triangulation_config
    )
    return SparsePair(
        pixels_ref=pix_ref.cpu().numpy().astype(np.float32),
        pixels_src=pix_src.cpu().numpy().astype(np.float32),
        scores=matches.scores.cpu().numpy().astype(np.float32),
        points=tri.points.cpu().numpy().astype(np.float64),
        reprojection_px=tri.reprojection_error_px.cpu().numpy().astype(np.float32),
        angle_deg=tri.angle_deg.cpu().numpy().astype(np.float32),
        keep=tri.keep.cpu().numpy(),
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
        (0.05, 2.0), description="water depths (m below the surface) searched when the cloud is too sparse"
    )


def camera_depth_ranges(
    points: np.ndarray, cameras: dict[str, RefractiveCamera], config: DepthRangeConfig
) -> dict[str, dict]:
    """World-Z search range per camera from the frame's sparse cloud ``points`` (N, 3).

    A camera uses the points it sees (projected inside its image); if it sees fewer than
    ``min_points`` it uses the frame-wide range, and if the whole cloud is that small, the fallback
    water depths. Returns camera → ``{"z_min", "z_max", "source", "n_points"}`` (metres).
    """
    pts = points[np.all(np.isfinite(points), axis=1)]
    water_z = next(iter(cameras.values())).water_z

    def span(z: np.ndarray) -> tuple[float, float]:
        lo, hi = np.percentile(z, [config.low_percentile, config.high_percentile])
        return max(float(lo) - config.margin_m, water_z + 1e-3), float(hi) + config.margin_m

    if len(pts) >= config.min_points:
        frame_range, frame_source = span(pts[:, 2]), "frame"
    else:
        d0, d1 = config.fallback_depth_m
        frame_range, frame_source = (water_z + d0, water_z + d1), "fallback"
    ranges = {}
    tensor = torch.from_numpy(pts)
    for name, cam in cameras.items():
        if len(pts):
            uv, ok = cam.project(tensor)
            seen = (ok & cam.in_image(uv)).numpy()
        else:
            seen = np.zeros(0, dtype=bool)
        if seen.sum() >= config.min_points:
            (lo, hi), source = span(pts[seen, 2]), "camera"
        else:
            (lo, hi), source = frame_range, frame_source
        ranges[name] = {"z_min": lo, "z_max": hi, "source": source, "n_points": int(seen.sum())}
    return ranges
