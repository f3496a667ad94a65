"""Dense warps turned into depth: one directed pair at a time (:func:`warp_to_pair_depth`), then
per camera (:func:`combine_warp_depths`).

**Grid.** A warp lives on a regular ``h × w`` grid over the reference image (see
:class:`WarpMatch`). Cell ``(i, j)`` is centred on the reference pixel
``u = (j + 0.5)·W/w − 0.5``, ``v = (i + 0.5)·H/h − 0.5`` in this project's convention (pixel centres
at integers, :mod:`aquamvs_core.camera.calibration`). romatch's pixel coordinates put centres at
``i + 0.5``: :data:`ROMATCH_PIXEL_OFFSET` converts them.

**Pair depth.** The cells above the certainty threshold (all, or romatch's balanced sample of them)
are triangulated through the water exactly
(:func:`~aquamvs_core.stages.sparse.triangulation.triangulate_matches`, float64); a cell keeps the
ray depth of its reference pixel (metres along the refracted ray, as in
:mod:`aquamvs_core.stages.depth_map`) when the point passes the angle and reprojection filters and
lies in the camera's depth range. Everything runs under ``torch.no_grad``; nothing of the warp is kept.

**Camera depth.** Per cell over the camera's pairs: robust median of world Z, the pairs agreeing with
it within ``agreement_tol_mm`` (agreement count), their certainty-weighted mean world Z and a
confidence; then normalised convolution of world Z up to the full image (bilinear, i.e. a tent kernel,
after an optional Gaussian of ``upsample_sigma_cells`` on the grid), conversion back to ray depth
along each pixel's own ray, and masks (coverage, confidence, the camera's valid pixels). World Z is
interpolated, not ray depth: it is the smooth quantity (the bed's height); ray depth also varies with
the ray's angle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.camera.sampling import pixel_grid
from aquamvs_core.stages.depth_map import CameraDepth
from aquamvs_core.stages.sparse.triangulation import TriangulationConfig, triangulate_matches

#: romatch pixel coordinate − this = pixel coordinate here (centres at i + 0.5 there, i here).
ROMATCH_PIXEL_OFFSET = 0.5
#: Warp cells below this certainty give no correspondence (default of the matcher settings).
DEFAULT_CERTAINTY_THRESHOLD = 0.3


@dataclass(frozen=True)
class WarpMatch:
    """A dense matcher's output for an ordered image pair (A, B).

    Attributes:
        warp: (h, w, 4) ``(x_A, y_A, x_B, y_B)`` in normalised coordinates, −1/+1 at the outer edges
            of each image (``align_corners=False``); ``(x_A, y_A)`` are the grid cell centres.
        certainty: (h, w) in [0, 1].
    """

    warp: torch.Tensor
    certainty: torch.Tensor

    @property
    def grid_shape(self) -> tuple[int, int]:
        return int(self.warp.shape[0]), int(self.warp.shape[1])


class CorrespondenceSampler(Protocol):
    """romatch's sampling and pixel conversion (:class:`~aquamvs_core.stages.dense.roma.RomaSession`)."""

    def sample(
        self, warp: torch.Tensor, certainty: torch.Tensor, num: int
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def to_pixel_coordinates(
        self, matches: torch.Tensor, size_a: tuple[int, int], size_b: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class DenseMatcher(CorrespondenceSampler, Protocol):
    """Anything that warps RGB image A into image B (RoMa, or an exact warp in tests)."""

    def match(
        self, image_a: np.ndarray, image_b: np.ndarray, names: tuple[str, str] | None = None
    ) -> WarpMatch:
        """Warp of (H, W, 3) uint8 RGB ``image_a`` into ``image_b``; ``names`` (ref, src) serve
        matchers that know the scene, such as the exact warp of the synthetic survey."""
        ...


class WarpDepthConfig(BaseModel):
    """Thresholds of the dense learned pathway's depth (section ``roma`` of the configuration)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_angle_deg: float = Field(1.5, ge=0.0, lt=180.0, description="smallest ray intersection angle")
    max_reprojection_px: float = Field(1.5, gt=0.0, description="largest reprojection error, full-res px")
    z_margin_mm: float | None = Field(
        15.0, ge=0.0, description="keep depths within the sparse depth range ± this (None: no range test)"
    )
    agreement_tol_mm: float = Field(2.0, gt=0.0, description="world-Z distance to the median that agrees")
    single_pair_min_certainty: float = Field(
        0.6, ge=0.0, le=1.0, description="a cell seen by one pair only is kept above this certainty"
    )
    upsample_sigma_cells: float = Field(
        0.0, ge=0.0, description="Gaussian on the grid before the bilinear normalised convolution (0: none)"
    )
    min_coverage: float = Field(0.5, gt=0.0, le=1.0, description="share of the kernel with data, per pixel")
    min_confidence: float = Field(0.05, ge=0.0, le=1.0)


@dataclass
class WarpPairDepth:
    """The depth of a pair's reference camera on the warp grid.

    Attributes:
        depth: (h, w) float32 ray depth, metres; NaN where no kept correspondence.
        certainty: (h, w) float32 matcher certainty of the kept cells, 0 elsewhere.
        world_z: (h, w) float32 world Z of the triangulated points (Z down), NaN elsewhere.
        image_size: (W, H) of the reference image.
    """

    depth: torch.Tensor
    certainty: torch.Tensor
    world_z: torch.Tensor
    image_size: tuple[int, int]

    def as_arrays(self) -> dict:
        return {k: getattr(self, k).cpu().numpy() for k in ("depth", "certainty", "world_z")}


def grid_pixels(
    grid_shape: tuple[int, int], image_size: tuple[int, int], dtype=torch.float64
) -> torch.Tensor:
    """(h, w, 2) reference pixels ``(u, v)`` of the warp grid's cell centres (convention above)."""
    (h, w), (width, height) = grid_shape, image_size
    u = (torch.arange(w, dtype=dtype) + 0.5) * (width / w) - 0.5
    v = (torch.arange(h, dtype=dtype) + 0.5) * (height / h) - 0.5
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], dim=-1)


def select_correspondences(
    match: WarpMatch,
    sampler: CorrespondenceSampler,
    certainty_threshold: float,
    sample_budget: int | None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 4) normalised matches and (N,) certainty: every cell at or above the threshold, or, with a
    budget, romatch's certainty-balanced sample of them (it draws from ``4·budget`` candidates; with
    no more confident cells than that, all of them are used)."""
    certainty = torch.where(match.certainty >= certainty_threshold, match.certainty, 0.0)
    flat_warp, flat_cert = match.warp.reshape(-1, 4), certainty.reshape(-1)
    confident = flat_cert > 0
    if sample_budget is None or int(confident.sum()) <= 4 * sample_budget:
        return flat_warp[confident], flat_cert[confident]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        matches, cert = sampler.sample(match.warp, certainty, sample_budget)
    return matches, cert


@torch.no_grad()
def warp_to_pair_depth(
    match: WarpMatch,
    sampler: CorrespondenceSampler,
    cam_ref: RefractiveCamera,
    cam_src: RefractiveCamera,
    size_ref: tuple[int, int],
    size_src: tuple[int, int],
    config: WarpDepthConfig,
    certainty_threshold: float = DEFAULT_CERTAINTY_THRESHOLD,
    sample_budget: int | None = None,
    z_range: tuple[float, float] | None = None,
    seed: int = 0,
) -> WarpPairDepth:
    """The reference camera's depth from a warp of reference into source (module docstring).

    Args:
        match: the warp of the reference image into the source image.
        sampler: romatch's sampling and pixel conversion.
        cam_ref, cam_src: refractive cameras of the undistorted images.
        size_ref, size_src: (W, H) of the images the warp was computed on.
        z_range: (z_min, z_max) world Z of the camera's depth range, or None.
    """
    h, w = match.grid_shape
    matches, certainty = select_correspondences(match, sampler, certainty_threshold, sample_budget, seed)
    pix_ref, pix_src = sampler.to_pixel_coordinates(matches, size_ref, size_src)
    pix_ref = pix_ref.double() - ROMATCH_PIXEL_OFFSET
    pix_src = pix_src.double() - ROMATCH_PIXEL_OFFSET
    filters = TriangulationConfig(
        min_angle_deg=config.min_angle_deg, max_reprojection_px=config.max_reprojection_px
    )
    tri = triangulate_matches(cam_ref, cam_src, pix_ref, pix_src, filters)
    keep = tri.keep
    if z_range is not None and config.z_margin_mm is not None:
        margin = config.z_margin_mm * 1e-3
        z = tri.points[:, 2]
        keep = keep & (z >= z_range[0] - margin) & (z <= z_range[1] + margin)
    ray_depth = tri.ray_depth[:, 0]  # along the reference ray
    # Cell of each correspondence, from its grid coordinate (x_A, y_A).
    col = torch.round((matches[:, 0].double() + 1) * w / 2 - 0.5).long().clamp(0, w - 1)
    row = torch.round((matches[:, 1].double() + 1) * h / 2 - 0.5).long().clamp(0, h - 1)
    cell = (row * w + col)[keep]
    out = {name: torch.full((h * w,), math.nan, dtype=torch.float32) for name in ("depth", "world_z")}
    out["depth"][cell] = ray_depth[keep].float().cpu()
    out["world_z"][cell] = tri.points[keep, 2].float().cpu()
    cert = torch.zeros(h * w, dtype=torch.float32)
    cert[cell] = certainty[keep].float().cpu()
    return WarpPairDepth(
        depth=out["depth"].reshape(h, w),
        certainty=cert.reshape(h, w),
        world_z=out["world_z"].reshape(h, w),
        image_size=size_ref,
    )


@torch.no_grad()
def combine_warp_depths(
    pairs: Sequence[WarpPairDepth],
    camera: RefractiveCamera,
    valid_mask: torch.Tensor | None,
    config: WarpDepthConfig,
) -> CameraDepth:
    """One camera's full-resolution depth from its pairs' grid depths (module docstring).

    Args:
        pairs: the camera's :class:`WarpPairDepth` (same grid and image size).
        camera: the camera (its rays turn the interpolated world Z back into ray depth).
        valid_mask: (H, W) bool pixels of the undistorted image that have data, or None.

    Returns:
        :class:`~aquamvs_core.stages.depth_map.CameraDepth` at (H, W): ray depth (NaN: none), confidence in
        [0, 1], support (agreeing pairs, interpolated like the depth) and candidates (nearest cell).
    """
    if not pairs:
        raise ValueError("no pair depths to combine")
    shapes = {(tuple(p.depth.shape), p.image_size) for p in pairs}
    if len(shapes) != 1:
        raise ValueError(f"pair depths differ in grid or image size: {sorted(shapes)}")
    width, height = pairs[0].image_size
    depth = torch.stack([p.depth for p in pairs])  # (P, h, w)
    z = torch.stack([p.world_z for p in pairs])
    cert = torch.stack([p.certainty for p in pairs])
    candidate = torch.isfinite(depth) & torch.isfinite(z) & (cert > 0)
    z_median = torch.nanmedian(torch.where(candidate, z, math.nan), dim=0).values
    agree = candidate & ((z - z_median).abs() <= config.agreement_tol_mm * 1e-3)
    support = agree.sum(0)
    candidates = candidate.sum(0)
    weight = torch.where(agree, cert, 0.0)
    weight_sum = weight.sum(0)
    cell_z = (weight * torch.nan_to_num(z)).sum(0) / weight_sum.clamp(min=1e-12)
    cell_conf = weight_sum / candidates.clamp(min=1)
    keep = (support >= 2) | (
        (support == 1) & (candidates == 1) & (cell_conf >= config.single_pair_min_certainty)
    )
    cell_conf = torch.where(keep, cell_conf, 0.0)

    # Normalised convolution: bilinear upsampling (a tent kernel) of confidence-weighted Z, of the
    # confidence and of the data indicator, after an optional Gaussian on the grid to fill holes.
    kept = keep.float()
    layers = torch.stack([cell_conf * torch.where(keep, cell_z, 0.0), cell_conf, kept, support * kept])[None]
    sigma = config.upsample_sigma_cells
    if sigma > 0:
        k = 2 * math.ceil(3 * sigma) + 1
        layers = kornia.filters.gaussian_blur2d(layers, (k, k), (sigma, sigma), border_type="constant")
    full = F.interpolate(layers, size=(height, width), mode="bilinear", align_corners=False)[0]
    numerator, conf_mass, coverage, support_mass = full[0], full[1], full[2], full[3]
    world_z = numerator / conf_mass.clamp(min=1e-12)
    # Back to ray depth along each pixel's own refracted ray (origin on the water plane).
    origins, directions, ray_ok = camera.cast_ray(pixel_grid(width, height, dtype=torch.float64))
    unit_z = directions[..., 2] / directions.norm(dim=-1)
    out_depth = ((world_z.double() - origins[..., 2]) / unit_z).float()
    confidence = (conf_mass / coverage.clamp(min=1e-12)).clamp(0.0, 1.0)
    ok = ray_ok & (coverage >= config.min_coverage) & (conf_mass > 0) & (confidence >= config.min_confidence)
    if valid_mask is not None:
        ok = ok & torch.as_tensor(valid_mask, dtype=torch.bool)
    pixel_support = torch.round(support_mass / coverage.clamp(min=1e-12)).clamp(min=1)
    pixel_candidates = F.interpolate(
        candidates.float()[None, None], size=(height, width), mode="nearest-exact"
    )
    return CameraDepth(
        camera="",
        depth=torch.where(ok, out_depth, math.nan),
        confidence=torch.where(ok, confidence, 0.0),
        support=torch.where(ok, pixel_support, 0.0).to(torch.int32),
        candidates=pixel_candidates[0, 0].to(torch.int32),
    )
