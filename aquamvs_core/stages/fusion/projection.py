"""The exact refractive projection of many world points into one camera, specialised for the hot
loops of fusion and mesh colouring.

It computes what :meth:`~aquamvs_core.camera.refraction.RefractiveCamera.project` computes (same
Snell equation, same validity rules; for a camera with a lens model, the same lens with its fold
guard: pixels of the original image, points past the fold invalid) and also returns where each ray
crosses the water, which the consistency test needs (the ray depth of a point seen from the camera
is its distance to that crossing). It is several times faster on large batches because it is
element-wise throughout (no 3×3 matrix products on (N, 3) tensors) and runs a fixed number of
Newton steps from the paraxial guess, with no convergence test between steps; points whose last
step is still larger than the camera's own tolerance (steep rays, rare) are solved again by
:meth:`~aquamvs_core.camera.refraction.RefractiveCamera.refraction_points`, so every returned
pixel is converged. Runs on the device and dtype of the points (float32 is enough for pixels: about
1e-4 px).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aquamvs_core.camera.refraction import RefractiveCamera

#: Newton steps from the paraxial guess before the convergence check (4 converge everywhere in a
#: 65°-FOV ring camera's view to float64 precision; the check catches the rest).
NEWTON_STEPS = 4


@dataclass(frozen=True)
class Projection:
    """Projections of N points into one camera.

    Attributes:
        u, v: (N,) pixel coordinates of the camera's images: undistorted, or original for a camera
            with a lens (meaningless where not ``valid``).
        cross_x, cross_y: (N,) world X, Y of the refraction point on the water plane (Z = water_z).
        valid: (N,) bool: the point is under water, the solve converged, the crossing is in front
            of the camera and (with a lens) its direction is within the lens model's fold (pixels
            outside the image are still valid).
    """

    u: torch.Tensor
    v: torch.Tensor
    cross_x: torch.Tensor
    cross_y: torch.Tensor
    valid: torch.Tensor


def _crossing_radius(
    rho: torch.Tensor, h_c: float, h_p: torch.Tensor, n_a: float, n_w: float, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal distance ``r`` (N,) from the camera's nadir to the refraction point, by ``steps``
    Newton steps on ``g(r) = n_a r / a − n_w (rho − r) / b`` kept inside ``[0, rho]``, and the size
    of the last step (N,)."""
    r = n_w * rho * h_c / (n_a * h_p + n_w * h_c)  # paraxial guess
    hc2 = h_c * h_c
    hp2 = h_p * h_p
    step = torch.full_like(r, math.inf)  # no step taken: not converged
    for _ in range(steps):
        q = rho - r
        ia = torch.rsqrt(r * r + hc2)
        ib = torch.rsqrt(q * q + hp2)
        g = n_a * r * ia - n_w * q * ib
        dg = n_a * hc2 * ia * ia * ia + n_w * hp2 * ib * ib * ib
        step = g / dg
        r = torch.minimum((r - step).clamp_min(0.0), rho)
    return r, step.abs()


def project_points(camera: RefractiveCamera, points: torch.Tensor, steps: int = NEWTON_STEPS) -> Projection:
    """Project world points (N, 3) into ``camera`` (see the module docstring)."""
    if points.ndim != 2 or points.shape[1] != 3 or not points.is_floating_point():
        raise ValueError(f"points must be a floating-point (N, 3) tensor, got {tuple(points.shape)}")
    return project_xyz(camera, *points.unbind(1), steps=steps)


def project_xyz(
    camera: RefractiveCamera, px: torch.Tensor, py: torch.Tensor, pz: torch.Tensor, steps: int = NEWTON_STEPS
) -> Projection:
    """:func:`project_points` of points given as their world X, Y, Z (N,) each."""
    dtype = px.dtype
    cx, cy, cz = (float(c) for c in camera.center)
    h_c = camera.water_z - cz
    dx, dy = px - cx, py - cy
    h_p = pz - camera.water_z
    below = h_p > 0
    h_p = torch.where(below, h_p, 1.0)
    rho = torch.sqrt(dx * dx + dy * dy)
    r, last = _crossing_radius(rho, h_c, h_p, camera.n_air, camera.n_water, steps)
    eps4 = 4 * torch.finfo(dtype).eps
    slow = below & ~(last <= eps4 * torch.clamp(rho + h_c + h_p, min=1.0))  # also NaN steps
    converged = below
    if bool(slow.any()):
        which = torch.nonzero(slow).squeeze(1)
        points = torch.stack([px, py, pz], dim=1).index_select(0, which)
        exact, ok = camera.refraction_points(points)
        r_exact = torch.sqrt((exact[:, 0] - cx) ** 2 + (exact[:, 1] - cy) ** 2)
        r = r.index_put((which,), r_exact)
        converged = converged.index_put((which,), ok)
    scale = r / torch.clamp(rho, min=torch.finfo(dtype).tiny)
    ox, oy = dx * scale, dy * scale  # crossing relative to the camera centre, in world axes
    (r00, r01, r02), (r10, r11, r12), (r20, r21, r22) = camera.R.tolist()
    xc = r00 * ox + r01 * oy + r02 * h_c
    yc = r10 * ox + r11 * oy + r12 * h_c
    zc = r20 * ox + r21 * oy + r22 * h_c
    valid = converged & (zc > 0)
    inv_z = 1.0 / torch.where(valid, zc, 1.0)
    (k00, k01, k02), (k10, k11, k12), _ = camera.K.tolist()
    xn, yn = xc * inv_z, yc * inv_z
    if camera.lens is not None:  # original pixel grid: through the lens model, never past its fold
        xy_d, unfolded = camera.lens.distort(torch.stack([xn, yn], dim=-1))
        xn, yn = xy_d.unbind(-1)
        valid = valid & unfolded
    return Projection(
        u=k00 * xn + k01 * yn + k02,
        v=k10 * xn + k11 * yn + k12,
        cross_x=ox + cx,
        cross_y=oy + cy,
        valid=valid,
    )
