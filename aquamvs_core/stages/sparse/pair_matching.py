"""One camera pair's sparse points: match the two images (the source turned upright first, for
matchers that are not rotation invariant) and triangulate the matches through the water."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.stages.sparse.lightglue import LightGlueModels, match_lightglue
from aquamvs_core.stages.sparse.matching import FeatureCache, Matches, SparseMatchConfig, match_sift
from aquamvs_core.stages.sparse.triangulation import TriangulationConfig, triangulate_matches


def match_images(
    img_a: np.ndarray,
    img_b: np.ndarray,
    config: SparseMatchConfig | None = None,
    model_cache: dict[tuple[Any, ...], LightGlueModels] | None = None,
    feature_cache: FeatureCache | None = None,
    keys: tuple[Hashable, Hashable] | None = None,
) -> Matches:
    """Match two images with ``config.method`` (:func:`~aquamvs_core.stages.sparse.matching.match_sift`
    or :func:`~aquamvs_core.stages.sparse.lightglue.match_lightglue`); ``feature_cache`` + ``keys``
    reuse each image's features across the pairs it is in."""
    config = config or SparseMatchConfig()
    if config.method == "sift":
        return match_sift(img_a, img_b, config, feature_cache, keys)
    return match_lightglue(img_a, img_b, config, model_cache, feature_cache, keys)


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
