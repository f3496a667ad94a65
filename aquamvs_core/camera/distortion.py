"""Lens distortion: forward model, its inverse, and image undistortion.

Conventions are those of :mod:`aquamvs_core.camera.calibration`: pixels ``(u, v)`` = (column, row) with
integer values at pixel centres; ``dist_coeffs`` are OpenCV's radial-tangential
``[k1, k2, p1, p2, k3(, k4, k5, k6)]`` for pinhole cameras (8 values: the rational model, ``k4..k6``
in the denominator) or OpenCV's equidistant fisheye ``[k1, k2, k3, k4]``.

*Normalized* coordinates are ``(x / z, y / z)`` in the camera frame. The forward models are exactly
OpenCV's (``cv2.projectPoints`` and ``cv2.fisheye.distortPoints``):

* pinhole: ``r² = x² + y²``, ``c = (1 + k1 r² + k2 r⁴ + k3 r⁶) / (1 + k4 r² + k5 r⁴ + k6 r⁶)``,
  ``x_d = x c + 2 p1 x y + p2 (r² + 2 x²)``, ``y_d = y c + p1 (r² + 2 y²) + 2 p2 x y``;
* fisheye: ``r = sqrt(x² + y²)``, ``θ = atan r``, ``θ_d = θ (1 + k1 θ² + k2 θ⁴ + k3 θ⁶ + k4 θ⁸)``,
  ``(x_d, y_d) = (θ_d / r) (x, y)`` (scale 1 at ``r = 0``).

**Fold.** Beyond some radius a distortion polynomial usually stops being monotonic (the model folds
over) and the forward map is no longer invertible. :func:`fold_limit` finds the first radius where
that happens; points beyond it are reported invalid by the inverse and by the undistortion map.

The pixel functions map between the *original* (distorted) image with the calibrated ``K`` and an
*undistorted* pinhole image with intrinsics ``K_new`` (:func:`undistorted_intrinsics`).
All point functions are batched over leading dimensions and run on the device and dtype of their
input (float32 or float64).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from aquamvs_core.camera.calibration import CameraCalibration
from aquamvs_core.camera.sampling import ArrayLike

MAX_FISHEYE_HALF_ANGLE_DEG = 60.0
"""Largest half-angle kept by the undistorted pinhole image of a fisheye camera."""

_FOLD_SAMPLES = 20001


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def coefficient_tensor(
    dist_coeffs: ArrayLike | list[float], fisheye: bool, like: torch.Tensor
) -> torch.Tensor:
    """Coefficients as a tensor on ``like``'s device/dtype: (4,) fisheye or (8,) pinhole (zero padded)."""
    if isinstance(dist_coeffs, torch.Tensor):
        c = dist_coeffs.detach().reshape(-1).to(device=like.device, dtype=like.dtype)
    else:
        c = torch.as_tensor(np.asarray(dist_coeffs, dtype=np.float64).reshape(-1)).to(
            device=like.device, dtype=like.dtype
        )
    n = c.numel()
    if fisheye:
        if n != 4:
            raise ValueError(f"the fisheye model needs 4 coefficients [k1, k2, k3, k4], got {n}")
        return c
    if n not in (4, 5, 8):
        raise ValueError(f"the pinhole model needs 4, 5 or 8 coefficients, got {n}")
    return torch.cat([c, c.new_zeros(8 - n)]) if n < 8 else c


def _coeffs_np(dist_coeffs: ArrayLike | list[float], fisheye: bool) -> np.ndarray:
    """Same as :func:`coefficient_tensor` as a float64 numpy array."""
    return coefficient_tensor(dist_coeffs, fisheye, torch.empty(0, dtype=torch.float64)).numpy()


def check_points(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point torch tensor")
    if x.ndim == 0 or x.shape[-1] != 2:
        raise ValueError(f"{what} must have shape (..., 2), got {tuple(x.shape)}")


def K_tensor(K: ArrayLike, like: torch.Tensor) -> torch.Tensor:
    if isinstance(K, torch.Tensor):
        return K.detach().reshape(3, 3).to(device=like.device, dtype=like.dtype)
    return torch.as_tensor(np.asarray(K, dtype=np.float64).reshape(3, 3)).to(
        device=like.device, dtype=like.dtype
    )


def pixels_to_normalized(pixels: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Invert ``u = fx x + s y + cx``, ``v = fy y + cy`` (upper-triangular K, skew ``s`` usually 0)."""
    y = (pixels[..., 1] - K[1, 2]) / K[1, 1]
    x = (pixels[..., 0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
    return torch.stack([x, y], dim=-1)


def normalized_to_pixels(xy: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    u = K[0, 0] * xy[..., 0] + K[0, 1] * xy[..., 1] + K[0, 2]
    v = K[1, 1] * xy[..., 1] + K[1, 2]
    return torch.stack([u, v], dim=-1)


def _fisheye_theta_d(theta: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``θ_d(θ)`` and ``dθ_d/dθ`` of the equidistant model."""
    t2 = theta * theta
    poly = 1 + t2 * (k[0] + t2 * (k[1] + t2 * (k[2] + t2 * k[3])))
    dpoly = 1 + t2 * (3 * k[0] + t2 * (5 * k[1] + t2 * (7 * k[2] + t2 * 9 * k[3])))
    return theta * poly, dpoly


def pinhole_with_jacobian(
    xy: torch.Tensor, k: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pinhole forward model with its analytic Jacobian.

    Returns the distorted coords (..., 2), the Jacobian (..., 2, 2) ``∂(x_d, y_d)/∂(x, y)`` and the
    rational denominator (...) (must stay positive for a meaningful model).
    """
    xd, yd, jxx, cross, jyy, den = pinhole_parts(xy[..., 0], xy[..., 1], k)
    jac = torch.stack([torch.stack([jxx, cross], -1), torch.stack([cross, jyy], -1)], -2)
    return torch.stack([xd, yd], dim=-1), jac, den


def pinhole_parts(x: torch.Tensor, y: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """:func:`pinhole_with_jacobian` on separate coordinate maps ``x``, ``y`` (...): returns
    ``x_d, y_d, ∂x_d/∂x, ∂x_d/∂y (= ∂y_d/∂x), ∂y_d/∂y, den`` (each (...)), without stacking (for
    loops over whole images, where building the (..., 2, 2) Jacobian costs as much as the model)."""
    k1, k2, p1, p2, k3, k4, k5, k6 = k.unbind(0)
    r2 = x * x + y * y
    num = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    den = 1 + r2 * (k4 + r2 * (k5 + r2 * k6))
    dnum = k1 + r2 * (2 * k2 + r2 * 3 * k3)
    dden = k4 + r2 * (2 * k5 + r2 * 3 * k6)
    c = num / den
    dc = (dnum * den - num * dden) / (den * den)  # dc / d(r²)
    xy2 = 2 * x * y
    xd = x * c + p1 * xy2 + p2 * (r2 + 2 * x * x)
    yd = y * c + p1 * (r2 + 2 * y * y) + p2 * xy2
    cross = xy2 * dc + 2 * p1 * x + 2 * p2 * y
    jxx = c + 2 * x * x * dc + 2 * p1 * y + 6 * p2 * x
    jyy = c + 2 * y * y * dc + 6 * p1 * y + 2 * p2 * x
    return xd, yd, jxx, cross, jyy, den


def fold_limit(dist_coeffs: ArrayLike | list[float], fisheye: bool) -> float:
    """Radius up to which the radial part of the model is strictly increasing (invertible).

    For the pinhole model this is the undistorted normalized radius ``r`` where ``d(r·c(r²))/dr``
    first reaches 0 or the rational denominator first reaches 0; for the fisheye model it is the
    incidence angle ``θ`` (radians) where ``dθ_d/dθ`` first reaches 0, at most ``π/2``.
    Returns ``inf`` (pinhole) or ``π/2`` (fisheye) when there is no fold. Found by dense sampling
    of the incidence angle on ``[0, π/2)`` and bisection (float64, deterministic, cached).
    """
    return _fold_limit(tuple(float(c) for c in _coeffs_np(dist_coeffs, fisheye)), bool(fisheye))


@functools.lru_cache(maxsize=256)
def _fold_limit(coeffs: tuple[float, ...], fisheye: bool) -> float:
    k = np.array(coeffs, dtype=np.float64)

    def bad(phi: np.ndarray) -> np.ndarray:
        if fisheye:
            t2 = phi * phi
            d = 1 + t2 * (3 * k[0] + t2 * (5 * k[1] + t2 * (7 * k[2] + t2 * 9 * k[3])))
            return d <= 0
        r2 = np.tan(phi) ** 2
        num = 1 + r2 * (k[0] + r2 * (k[1] + r2 * k[4]))
        den = 1 + r2 * (k[5] + r2 * (k[6] + r2 * k[7]))
        dnum = k[0] + r2 * (2 * k[1] + r2 * 3 * k[4])
        dden = k[5] + r2 * (2 * k[6] + r2 * 3 * k[7])
        # d(r c)/dr = c + 2 r² dc/dr²; multiply by den² > 0 to avoid dividing.
        g = num * den + 2 * r2 * (dnum * den - num * dden)
        return (den <= 0) | (g <= 0)

    phis = np.linspace(0.0, math.pi / 2, _FOLD_SAMPLES)[:-1]
    flags = bad(phis)
    if not flags.any():
        return math.pi / 2 if fisheye else math.inf
    i = int(np.argmax(flags))
    if i == 0:
        return 0.0
    lo, hi = float(phis[i - 1]), float(phis[i])
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if bad(np.array([mid]))[0]:
            hi = mid
        else:
            lo = mid
    return lo if fisheye else math.tan(lo)


# --------------------------------------------------------------------------------------------
# Normalized coordinates
# --------------------------------------------------------------------------------------------


def working_tensor(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the working precision: float64, except on devices without it (MPS: float32).

    The models are a few dozen flops per point, so float64 costs next to nothing even on GPUs with
    slow float64, and it makes float32 results correctly rounded (a round trip in float32 is then
    within about one float32 ulp of the pixel coordinates).
    """
    return x.to(torch.float32 if x.device.type == "mps" else torch.float64)


def distort_with(xy: torch.Tensor, k: torch.Tensor, fisheye: bool) -> torch.Tensor:
    if not fisheye:
        return pinhole_with_jacobian(xy, k)[0]
    r = xy.norm(dim=-1)
    pos = r > 0
    r_safe = torch.where(pos, r, torch.ones_like(r))
    theta_d, _ = _fisheye_theta_d(torch.atan(r_safe), k)
    scale = torch.where(pos, theta_d / r_safe, torch.ones_like(r))
    return xy * scale.unsqueeze(-1)


def distort_normalized(xy: torch.Tensor, dist_coeffs: ArrayLike | list[float], fisheye: bool) -> torch.Tensor:
    """Apply the lens model: ideal normalized coords (..., 2) → distorted normalized coords (..., 2).

    Exactly OpenCV's models (see the module docstring). Returns ``xy``'s device and dtype (computed
    in float64, see :func:`working_tensor`).
    """
    check_points(xy, "xy")
    xw = working_tensor(xy)
    return distort_with(xw, coefficient_tensor(dist_coeffs, fisheye, xw), fisheye).to(xy.dtype)


def _tolerance(xy_d: torch.Tensor) -> torch.Tensor:
    """Convergence tolerance on the residual, a few ulps of the coordinates' magnitude."""
    eps = torch.finfo(xy_d.dtype).eps
    return 8 * eps * (1 + xy_d.abs().amax(dim=-1))


def _undistort_fisheye(
    xy_d: torch.Tensor, k: torch.Tensor, theta_max: float, max_iter: int, initial: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``θ_d(θ) = |xy_d|`` on the monotonic bracket ``[0, θ_max]`` (safeguarded Newton), starting
    at ``θ = |xy_d|`` or at the incidence angle of the ideal coords ``initial`` (..., 2)."""
    rd = xy_d.norm(dim=-1)
    tol = _tolerance(xy_d)
    # Stay strictly below π/2 so that tan θ stays finite.
    hi_lim = min(theta_max, math.pi / 2 * (1 - 4 * torch.finfo(xy_d.dtype).eps))
    lo = torch.zeros_like(rd)
    hi = torch.full_like(rd, hi_lim)
    start = rd if initial is None else torch.atan(initial.norm(dim=-1))
    theta = torch.nan_to_num(start, nan=0.0).clamp(0.0, hi_lim)
    best = theta
    best_err = torch.full_like(rd, math.inf)
    converged = torch.zeros_like(rd, dtype=torch.bool)
    done = torch.zeros_like(rd, dtype=torch.bool)
    for _ in range(max_iter + 1):
        theta_d, dtheta_d = _fisheye_theta_d(theta, k)
        f = theta_d - rd
        err = f.abs()
        better = ~done & (err < best_err)
        best = torch.where(better, theta, best)
        best_err = torch.where(better, err, best_err)
        # A point is done one Newton step after it first met the tolerance (that step polishes it
        # to the dtype's floor; ``best`` keeps whichever iterate had the smaller residual).
        done = done | converged
        converged = converged | (best_err < tol)
        if bool(done.all()):
            break
        lo = torch.where(f < 0, theta, lo)
        hi = torch.where(f > 0, theta, hi)
        newton = theta - f / dtheta_d
        ok = torch.isfinite(newton) & (newton >= lo) & (newton <= hi)
        theta = torch.where(ok, newton, 0.5 * (lo + hi))
    theta = best
    theta_d, _ = _fisheye_theta_d(theta, k)
    converged = converged & ((theta_d - rd).abs() < tol) & (theta < hi_lim)
    pos = rd > 0
    rd_safe = torch.where(pos, rd, torch.ones_like(rd))
    # r / r_d = tan θ / θ_d; at r_d → 0 the ratio tends to 1.
    scale = torch.where(pos, torch.tan(theta) / rd_safe, torch.ones_like(rd))
    return xy_d * scale.unsqueeze(-1), converged


def _undistort_pinhole(
    xy_d: torch.Tensor, k: torch.Tensor, r_max: float, max_iter: int, initial: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D Newton with the analytic Jacobian and a backtracking line search, starting at ``xy_d`` or at
    ``initial`` (..., 2) where it is finite."""
    tol = _tolerance(xy_d)
    if initial is None:
        xy = xy_d.clone()
    else:
        xy = torch.where(torch.isfinite(initial), initial.to(xy_d.dtype), xy_d)
    fx, jac, _ = pinhole_with_jacobian(xy, k)
    res = fx - xy_d
    err = res.norm(dim=-1)
    converged = err < tol
    done = torch.zeros_like(converged)
    for _ in range(max_iter + 1):
        if bool(done.all()):
            break
        a, b = jac[..., 0, 0], jac[..., 0, 1]
        c, d = jac[..., 1, 0], jac[..., 1, 1]
        det = a * d - b * c
        good = torch.isfinite(det) & (det.abs() > torch.finfo(xy.dtype).tiny)
        det_safe = torch.where(good, det, torch.ones_like(det))
        step = torch.stack([d * res[..., 0] - b * res[..., 1], a * res[..., 1] - c * res[..., 0]], -1)
        step = torch.where(good.unsqueeze(-1), step / det_safe.unsqueeze(-1), res)
        # Backtracking: halve the step (up to 8 times) where it does not reduce the residual.
        # Points that already meet the tolerance get one full step only (a polish to the dtype's floor).
        alpha = torch.ones_like(err)
        todo = ~done
        new_xy, new_fx, new_jac, new_err = xy, fx, jac, err
        for _ in range(8):
            cand = xy - alpha.unsqueeze(-1) * step
            c_fx, c_jac, _ = pinhole_with_jacobian(cand, k)
            c_err = (c_fx - xy_d).norm(dim=-1)
            accept = todo & torch.isfinite(c_err) & (c_err < err)
            new_xy = torch.where(accept.unsqueeze(-1), cand, new_xy)
            new_fx = torch.where(accept.unsqueeze(-1), c_fx, new_fx)
            new_jac = torch.where(accept[..., None, None], c_jac, new_jac)
            new_err = torch.where(accept, c_err, new_err)
            todo = todo & ~accept & ~converged
            if not bool(todo.any()):
                break
            alpha = alpha * 0.5
        stalled = todo  # no step reduced the residual: nothing more to gain for these points
        xy, fx, jac, err = new_xy, new_fx, new_jac, new_err
        res = fx - xy_d
        done = done | converged | stalled
        converged = converged | (err < tol)
    det = jac[..., 0, 0] * jac[..., 1, 1] - jac[..., 0, 1] * jac[..., 1, 0]
    _, _, den = pinhole_with_jacobian(xy, k)
    r = xy.norm(dim=-1)
    converged = converged & (err < tol) & (det > 0) & (den > 0) & (r < r_max)
    return xy, converged


def undistort_normalized(
    xy_distorted: torch.Tensor,
    dist_coeffs: ArrayLike | list[float],
    fisheye: bool,
    max_iter: int = 50,
    initial: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert :func:`distort_normalized`: distorted normalized coords (..., 2) → ideal ones (..., 2).

    Fisheye: safeguarded Newton on the 1-D equation ``θ_d(θ) = |x_d|`` within the monotonic range
    ``[0, fold_limit]`` (bisection whenever a Newton step leaves the bracket). Pinhole: 2-D Newton
    with the analytic Jacobian and a backtracking line search, starting at ``x_d``. Both iterate,
    at most ``max_iter`` times, until every residual ``|distort(xy) - x_d|`` is below a few ulps of
    ``1 + |x_d|`` for the dtype. ``initial`` (..., 2), an approximate solution (e.g. interpolated
    from a table), only changes where the iteration starts: near the answer it converges in one or
    two steps.

    Returns:
        xy_ideal: (..., 2) ideal normalized coordinates (finite but meaningless where not converged).
        converged: (...) bool; False where the iteration did not reach the tolerance, or where the
            solution lies beyond the model's fold (non-invertible region, see :func:`fold_limit`),
            e.g. for a distorted point outside the range the lens model can produce.
    """
    check_points(xy_distorted, "xy_distorted")
    xw = working_tensor(xy_distorted)
    k = coefficient_tensor(dist_coeffs, fisheye, xw)
    limit = fold_limit(dist_coeffs, fisheye)
    solve = _undistort_fisheye if fisheye else _undistort_pinhole
    init = None if initial is None else working_tensor(initial)
    xy, converged = solve(xw, k, limit, max_iter, init)
    return xy.to(xy_distorted.dtype), converged


# --------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------


def undistorted_intrinsics(camera: CameraCalibration) -> np.ndarray:
    """(3, 3) float64 intrinsics ``K_new`` of the undistorted image (same size as the original).

    Policy:

    * pinhole: the calibrated ``K`` unchanged (distortion is assumed mild);
    * fisheye: same principal point; the focal length is the largest one for which the horizontal
      field of view of the fisheye, along the row through the principal point, still fits inside
      the undistorted image of the same width, after limiting each side's half-angle to
      :data:`MAX_FISHEYE_HALF_ANGLE_DEG` (60°). With ``d`` the distance from ``cx`` to the image
      edge (pixel centres span ``[-0.5, W - 0.5]``) and ``θ`` the incidence angle of that edge in
      the fisheye (the fold angle if the edge lies beyond the model's fold), ``f = min over
      left/right of d / tan(min(θ, 60°))``. ``fy / fx`` keeps the calibrated aspect ratio; skew
      is zero. Deterministic (float64).
    """
    K = np.asarray(camera.K, dtype=np.float64).reshape(3, 3)
    if not camera.is_fisheye:
        return K.copy()
    width = camera.image_size[0]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    d = np.array([cx + 0.5, width - 0.5 - cx], dtype=np.float64)
    if np.any(d <= 0):
        raise ValueError(f"camera {camera.name!r}: principal point cx={cx} lies outside the image")
    edge = torch.tensor([[-0.5, cy], [width - 0.5, cy]], dtype=torch.float64)
    xy_d = pixels_to_normalized(edge, torch.as_tensor(K))
    xy, ok = undistort_normalized(xy_d, camera.dist_coeffs, fisheye=True)
    theta = torch.atan(xy.norm(dim=-1)).numpy()
    # An edge beyond the model's fold (no valid inverse) counts as being at the fold angle.
    theta = np.where(ok.numpy(), theta, fold_limit(camera.dist_coeffs, fisheye=True))
    theta = np.minimum(theta, math.radians(MAX_FISHEYE_HALF_ANGLE_DEG))
    f = float(np.min(d / np.tan(theta)))
    return np.array([[f, 0.0, cx], [0.0, f * fy / fx, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def distort_pixels(
    pixels_undistorted: torch.Tensor, camera: CameraCalibration, K_new: ArrayLike | None = None
) -> torch.Tensor:
    """Pixels (..., 2) of the undistorted image with intrinsics ``K_new`` → pixels (..., 2) of the
    original (distorted) image of ``camera``. ``K_new`` defaults to :func:`undistorted_intrinsics`."""
    check_points(pixels_undistorted, "pixels_undistorted")
    if K_new is None:
        K_new = undistorted_intrinsics(camera)
    pix = working_tensor(pixels_undistorted)
    xy = pixels_to_normalized(pix, K_tensor(K_new, pix))
    xy_d = distort_with(xy, coefficient_tensor(camera.dist_coeffs, camera.is_fisheye, xy), camera.is_fisheye)
    return normalized_to_pixels(xy_d, K_tensor(camera.K, pix)).to(pixels_undistorted.dtype)


def undistort_pixels(
    pixels_distorted: torch.Tensor,
    camera: CameraCalibration,
    K_new: ArrayLike | None = None,
    max_iter: int = 50,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels (..., 2) of the original image → pixels (..., 2) of the undistorted image with ``K_new``
    (the inverse of :func:`distort_pixels`: e.g. for keypoints detected on an original image).

    Returns the pixels and the ``converged`` mask (...) of :func:`undistort_normalized`.
    ``K_new`` defaults to :func:`undistorted_intrinsics`.
    """
    check_points(pixels_distorted, "pixels_distorted")
    if K_new is None:
        K_new = undistorted_intrinsics(camera)
    pix = working_tensor(pixels_distorted)
    xy_d = pixels_to_normalized(pix, K_tensor(camera.K, pix))
    xy, converged = undistort_normalized(xy_d, camera.dist_coeffs, camera.is_fisheye, max_iter=max_iter)
    return normalized_to_pixels(xy, K_tensor(K_new, pix)).to(pixels_distorted.dtype), converged
