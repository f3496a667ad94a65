"""Triangulation of refracted rays: least-squares ray intersection and the filters on its result.

Frames and units follow :mod:`aquamvs_core.camera.calibration` (world metres, Z down, water plane
``Z = water_z``). Rays are the *refracted* rays of :meth:`RefractiveCamera.cast_ray`: an origin on
the water plane and a unit direction into the water. Every function is batched over points and
runs on the device and dtype of its inputs; use float64 where metre-level coordinates must keep
micrometre precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field

from aquamvs_core.camera.refraction import RefractiveCamera


class TriangulationConfig(BaseModel):
    """Filters applied to triangulated two-view points (:func:`triangulate_matches`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_angle_deg: float = Field(
        2.0, ge=0.0, lt=180.0, description="smallest intersection angle of the refracted rays, degrees"
    )
    max_reprojection_px: float = Field(
        2.0, gt=0.0, description="largest reprojection error in either view, pixels"
    )


@dataclass(frozen=True)
class TriangulatedPoints:
    """Triangulated two-view correspondences, one row per input correspondence.

    Attributes:
        points: (N, 3) world points, metres; NaN where the rays give no point (an invalid ray, or
            parallel rays).
        reprojection_error_px: (N,) the larger over both views of ``|project(X) - pixel|``, pixels;
            ``inf`` where the point does not project (no point, or not below the water).
        angle_deg: (N,) intersection angle of the two refracted rays, degrees.
        ray_depth: (N, 2) ray depth of the point along each view's refracted ray (distance from the
            ray's origin on the water plane to the foot of the perpendicular), metres; NaN where no point.
        keep: (N,) bool, True for points that pass every filter: finite, below the water surface,
            in front of both refracted rays, angle >= ``min_angle_deg`` and reprojection error
            <= ``max_reprojection_px``.
    """

    points: torch.Tensor
    reprojection_error_px: torch.Tensor
    angle_deg: torch.Tensor
    keep: torch.Tensor
    ray_depth: torch.Tensor

    @property
    def kept_points(self) -> torch.Tensor:
        """(K, 3) the points that passed the filters."""
        return self.points[self.keep]


def _masked_unit_rays(
    origins: torch.Tensor, directions: torch.Tensor, valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit directions and origins with invalid rays zeroed (so placeholder NaNs cannot leak), and the
    (N, V) weights in the dtype of ``origins`` (1 for a valid ray when ``valid`` is a bool mask)."""
    if origins.ndim != 3 or origins.shape[-1] != 3 or directions.shape != origins.shape:
        raise ValueError(
            f"origins and directions must both have shape (N, V, 3), got {tuple(origins.shape)} "
            f"and {tuple(directions.shape)}"
        )
    if valid is None:
        weights = torch.ones(origins.shape[:2], dtype=origins.dtype, device=origins.device)
    else:
        if valid.shape != origins.shape[:2]:
            raise ValueError(f"valid must have shape {tuple(origins.shape[:2])}, got {tuple(valid.shape)}")
        weights = valid.to(origins.dtype)
    norm = directions.norm(dim=-1, keepdim=True)
    use = (weights > 0) & torch.isfinite(origins).all(-1) & torch.isfinite(directions).all(-1)
    use = use & (norm[..., 0] > 0)
    weights = torch.where(use, weights, torch.zeros_like(weights))
    unit = torch.where(use.unsqueeze(-1), directions / torch.where(norm > 0, norm, 1.0), 0.0)
    origins = torch.where(use.unsqueeze(-1), origins, 0.0)
    return origins, unit, weights


def triangulate_rays(
    origins: torch.Tensor, directions: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Least-squares intersection of rays: the point with the smallest sum of squared distances to them.

    Closed form: with the projectors ``P_i = I - d_i d_iᵀ`` onto the plane normal to each unit
    direction, the point solves ``(Σ w_i P_i) X = Σ w_i P_i o_i``. The system is solved about the
    mean origin of each point's rays, which keeps float32 accurate.

    Args:
        origins: (N, V, 3) ray origins, metres.
        directions: (N, V, 3) ray directions (normalised here).
        valid: optional (N, V) bool mask of the rays to use, or non-negative float weights.

    Returns:
        (N, 3) points, metres; NaN where fewer than two rays are usable or the rays are parallel.
    """
    origins, unit, weights = _masked_unit_rays(origins, directions, valid)
    eye = torch.eye(3, dtype=origins.dtype, device=origins.device)
    projectors = eye - unit.unsqueeze(-1) * unit.unsqueeze(-2)  # (N, V, 3, 3)
    w = weights[..., None, None]
    total = weights.sum(-1).clamp(min=torch.finfo(origins.dtype).tiny)
    centre = (weights.unsqueeze(-1) * origins).sum(-2) / total.unsqueeze(-1)  # (N, 3)
    rel = origins - centre.unsqueeze(-2)
    lhs = (w * projectors).sum(-3)  # (N, 3, 3)
    rhs = (w * (projectors @ rel.unsqueeze(-1))).sum(-3)  # (N, 3, 1)
    solution, info = torch.linalg.solve_ex(lhs, rhs)
    points = centre + solution.squeeze(-1)
    ok = (info == 0) & ((weights > 0).sum(-1) >= 2) & torch.isfinite(points).all(-1)
    return torch.where(ok.unsqueeze(-1), points, torch.full_like(points, math.nan))


def intersection_angle(directions: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Largest pairwise angle between the valid rays of each point.

    Computed as ``atan2(|d_i × d_j|, d_i · d_j)``, accurate for small angles too.

    Args:
        directions: (N, V, 3) ray directions (need not be unit).
        valid: optional (N, V) bool mask (or weights; rays with weight 0 are ignored).

    Returns:
        (N,) angle in degrees, in [0, 180]; 0 where fewer than two rays are valid.
    """
    _, unit, weights = _masked_unit_rays(torch.zeros_like(directions), directions, valid)
    a, b = unit.unsqueeze(-2), unit.unsqueeze(-3)  # (N, V, 1, 3), (N, 1, V, 3)
    a, b = torch.broadcast_tensors(a, b)
    sin = torch.linalg.cross(a, b).norm(dim=-1)
    cos = (a * b).sum(-1)
    angle = torch.rad2deg(torch.atan2(sin, cos))  # (N, V, V)
    use = weights > 0
    pair = use.unsqueeze(-1) & use.unsqueeze(-2)
    return torch.where(pair, angle, torch.zeros_like(angle)).amax(dim=(-2, -1))


@torch.no_grad()
def triangulate_matches(
    cam_a: RefractiveCamera,
    cam_b: RefractiveCamera,
    pix_a: torch.Tensor,
    pix_b: torch.Tensor,
    config: TriangulationConfig | None = None,
) -> TriangulatedPoints:
    """Triangulate two-view correspondences through the water surface and filter them.

    Each pixel is cast to its refracted ray (:meth:`RefractiveCamera.cast_ray`), the two rays are
    intersected in the least-squares sense (:func:`triangulate_rays`) and the point is projected back
    exactly (:meth:`RefractiveCamera.project`) into both views.

    Args:
        cam_a, cam_b: the two cameras (same water plane).
        pix_a, pix_b: (N, 2) undistorted pixels ``(u, v)`` of the correspondences; float64
            recommended. Computation runs on their device and dtype.
        config: the filters; defaults to :class:`TriangulationConfig` ().

    Returns:
        :class:`TriangulatedPoints` with one row per correspondence.
    """
    config = config or TriangulationConfig()
    if pix_a.ndim != 2 or pix_a.shape[-1] != 2 or pix_b.shape != pix_a.shape:
        raise ValueError(
            f"pix_a and pix_b must both have shape (N, 2), got {tuple(pix_a.shape)} and {tuple(pix_b.shape)}"
        )
    if abs(cam_a.water_z - cam_b.water_z) > 1e-9:
        raise ValueError(f"cameras disagree on the water plane: {cam_a.water_z} vs {cam_b.water_z}")
    water_z = cam_a.water_z

    o_a, d_a, ok_a = cam_a.cast_ray(pix_a)
    o_b, d_b, ok_b = cam_b.cast_ray(pix_b)
    origins = torch.stack([o_a, o_b], dim=1)  # (N, 2, 3)
    directions = torch.stack([d_a, d_b], dim=1)
    rays_ok = torch.stack([ok_a, ok_b], dim=1)  # (N, 2)
    points = triangulate_rays(origins, directions, rays_ok)
    angle = intersection_angle(directions, rays_ok)

    finite = torch.isfinite(points).all(-1) & rays_ok.all(-1)
    below = finite & (points[:, 2] > water_z)
    ray_depth = ((points.unsqueeze(1) - origins) * directions).sum(-1)  # (N, 2), metres
    in_front = below & (ray_depth > 0).all(-1)
    # Project only well-defined points below the water; a finite placeholder keeps the solver quick.
    placeholder = o_a + d_a
    safe = torch.where(below.unsqueeze(-1), points, placeholder)
    errors = []
    projected_ok = in_front
    for cam, pix in ((cam_a, pix_a), (cam_b, pix_b)):
        uv, ok = cam.project(safe)
        errors.append((uv - pix).norm(dim=-1))
        projected_ok = projected_ok & ok
    error = torch.stack(errors, dim=-1).amax(-1)
    error = torch.where(projected_ok, error, torch.full_like(error, math.inf))
    keep = projected_ok & (angle >= config.min_angle_deg) & (error <= config.max_reprojection_px)
    return TriangulatedPoints(
        points=points, reprojection_error_px=error, angle_deg=angle, keep=keep, ray_depth=ray_depth
    )
