"""Lens models of the synthetic cameras, and how much of each image a lens model can explain.

* ``mild`` (the default survey): radial-tangential with ``k1 ≈ -0.03``; fisheye coefficients of a
  few per cent for the auxiliary camera.
* ``lab``: the strong barrel distortion fitted to a real 12-camera lab rig (see
  ``/work/shared/notes/facts.md``): ``k1 ∈ [-0.53, -0.48]``, ``k2 ∈ [0.25, 0.33]``,
  ``|p1|, |p2| ≤ 1e-3``. A share ``fold_fraction`` of the lenses *fold over* between 45° and 48°
  off axis: their fold angle ``φ`` is drawn first and ``k3 ∈ [-0.17, -0.08]`` solved from
  ``d(r c(r²))/dr = 1 + 3 k1 r² + 5 k2 r⁴ + 7 k3 r⁶ = 0`` at ``r = tan φ``. The others have
  ``k3 ∈ [0, 0.14]`` (no fold at any angle, since ``9 k1² < 20 k2``). The focal length is the one for
  which the row through the principal point spans the configured horizontal field of view.

A folded model maps points beyond the fold back *into* the image. The renderer therefore traces a
pixel only through the pre-fold inverse of the model
(:func:`~aquamvs_core.camera.distortion.undistort_normalized` rejects roots beyond
:func:`~aquamvs_core.camera.distortion.fold_limit`); :func:`lens_report` says how much of an image
that leaves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from aquamvs_core.camera.calibration import CameraCalibration
from aquamvs_core.camera.distortion import fold_limit, undistort_normalized, undistorted_intrinsics
from aquamvs_core.camera.sampling import pixel_grid
from aquamvs_core.synthetic.config import SyntheticSurveyConfig

LENS_STREAM = 5  # random stream of the lab lenses (independent of the rig's layout stream)

LAB_K1 = (-0.53, -0.48)
LAB_K2 = (0.25, 0.33)
LAB_K3_FOLDING = (-0.17, -0.08)
LAB_K3_UNFOLDING = (0.0, 0.14)
LAB_FOLD_DEG = (45.0, 48.0)
LAB_TANGENTIAL = 1e-3


def mild_pinhole_coefficients(rng: np.random.Generator) -> np.ndarray:
    """(5,) mild radial-tangential coefficients (the default survey's draw order)."""
    k1 = float(np.clip(-0.03 + 0.008 * rng.normal(), -0.05, -0.01))
    k2 = float(np.clip(0.01 + 0.004 * rng.normal(), 0.0, 0.02))
    p1, p2 = (float(v) for v in np.clip(rng.normal(0.0, 3e-4, 2), -1e-3, 1e-3))
    k3 = float(np.clip(-0.002 + 0.001 * rng.normal(), -0.005, 0.0))
    return np.array([k1, k2, p1, p2, k3])


def _k3_folding_at(k1: float, k2: float, fold_deg: float) -> float:
    """``k3`` that makes the radial model's derivative vanish at ``fold_deg`` off axis."""
    x = math.tan(math.radians(fold_deg)) ** 2
    return -(1.0 + 3.0 * k1 * x + 5.0 * k2 * x * x) / (7.0 * x**3)


def lab_coefficients(config: SyntheticSurveyConfig, n: int) -> list[np.ndarray]:
    """(5,) strong coefficients for ``n`` pinhole cameras (deterministic for ``config.seed``)."""
    rng = np.random.default_rng([config.seed, LENS_STREAM])
    folding = np.zeros(n, dtype=bool)
    folding[rng.permutation(n)[: round(config.fold_fraction * n)]] = True
    out = []
    for i in range(n):
        for _ in range(1000):  # rejection: k3 of a folding lens must stay in its band
            k1 = rng.uniform(*LAB_K1)
            k2 = rng.uniform(*LAB_K2)
            p1, p2 = np.clip(rng.normal(0.0, 0.4 * LAB_TANGENTIAL, 2), -LAB_TANGENTIAL, LAB_TANGENTIAL)
            if folding[i]:
                k3 = _k3_folding_at(k1, k2, rng.uniform(*LAB_FOLD_DEG))
                if not LAB_K3_FOLDING[0] <= k3 <= LAB_K3_FOLDING[1]:
                    continue
            else:
                k3 = rng.uniform(*LAB_K3_UNFOLDING)
            break
        else:  # pragma: no cover - the bands always admit a solution
            raise RuntimeError("no lab lens coefficients found")
        out.append(np.array([k1, k2, p1, p2, k3], dtype=np.float64))
    return out


def radial_scale(dist_coeffs: np.ndarray, r: float) -> float:
    """``r_d / r`` of the radial part of a 5-coefficient pinhole model at ideal radius ``r``."""
    k1, k2, _, _, k3 = (float(c) for c in dist_coeffs[:5])
    r2 = r * r
    return 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))


def focal_for_fov(dist_coeffs: np.ndarray, width: int, horizontal_fov_deg: float) -> float:
    """Focal length (px) for which the distorted row through the principal point, ``width`` pixels
    wide, spans ``horizontal_fov_deg`` of ideal (undistorted) field of view."""
    r = math.tan(math.radians(horizontal_fov_deg) / 2)
    return (width / 2) / (r * radial_scale(dist_coeffs, r))


# --------------------------------------------------------------------------------------------
# What a lens model explains of its image
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LensReport:
    """How a camera's lens model covers its image.

    Attributes:
        camera: camera name.
        fold_deg: off-axis angle where the radial model folds (inf: never; fisheye: its angle).
        corner_deg: the largest off-axis angle of the image's pixel centres (within the fold).
        valid_fraction: pixel centres whose pre-fold inverse exists: what the renderer traces.
        kept_by_undistortion: pixel centres that land inside the undistorted image of the same size
            with :func:`~aquamvs_core.camera.distortion.undistorted_intrinsics` (for a pinhole camera
            the calibrated K): how much of the original image the undistorted image keeps.
    """

    camera: str
    fold_deg: float
    corner_deg: float
    valid_fraction: float
    kept_by_undistortion: float


def lens_report(camera: CameraCalibration, step: int = 4) -> LensReport:
    """:class:`LensReport` of ``camera`` from its pixel centres (every ``step``-th row and column, and
    the four corners)."""
    w, h = camera.image_size
    K = torch.as_tensor(np.asarray(camera.K, dtype=np.float64))
    grid = pixel_grid(w, h, dtype=torch.float64)[::step, ::step].reshape(-1, 2)
    corners = torch.tensor(
        [[0.0, 0.0], [w - 1.0, 0.0], [0.0, h - 1.0], [w - 1.0, h - 1.0]], dtype=torch.float64
    )
    px = torch.cat([grid, corners])
    y = (px[:, 1] - K[1, 2]) / K[1, 1]
    x = (px[:, 0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
    xy, ok = undistort_normalized(torch.stack([x, y], 1), camera.dist_coeffs, camera.is_fisheye)
    ok &= torch.isfinite(xy).all(dim=1)
    angle = torch.rad2deg(torch.atan(xy.norm(dim=1)))
    K_new = torch.as_tensor(undistorted_intrinsics(camera))
    u = K_new[0, 0] * xy[:, 0] + K_new[0, 1] * xy[:, 1] + K_new[0, 2]
    v = K_new[1, 1] * xy[:, 1] + K_new[1, 2]
    inside = (ok & (u >= -0.5) & (u <= w - 0.5) & (v >= -0.5) & (v <= h - 0.5))[: len(grid)]
    limit = fold_limit(camera.dist_coeffs, camera.is_fisheye)
    fold = (
        math.degrees(limit if camera.is_fisheye else math.atan(limit)) if math.isfinite(limit) else math.inf
    )
    return LensReport(
        camera=camera.name,
        fold_deg=fold,
        corner_deg=float(angle[ok].max()) if bool(ok.any()) else math.nan,
        valid_fraction=float(ok[: len(grid)].double().mean()),
        kept_by_undistortion=float(inside.double().mean()),
    )
