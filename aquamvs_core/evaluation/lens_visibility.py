"""Which cameras see each ground-truth cell in their *original* images: through the lens model, with
its fold guard, over the whole field of view, whatever pixel grid the reconstruction works on. So
the denominator of completeness does not shrink when a reconstruction discards part of the images
(e.g. an undistorted image that keeps ~78 % of a strongly distorted original).

A camera sees a cell's ground-truth point ``X`` when

1. the exact refractive projection of ``X`` gives an ideal (pinhole) direction ``x`` within the
   lens model's valid range (``|x| <`` :func:`~aquamvs_core.camera.distortion.fold_limit`, or its
   angle for a fisheye): beyond a fold the polynomial maps far-off points back into the image at
   wrong pixels, and those are not seen;
2. the lens model puts ``x`` inside the original image;
3. nothing hides it: the exact ground-truth ray depth of that original pixel (the renderer's own
   trace, bilinearly sampled) is within ``occlusion_tol_mm`` of ``X``'s ray depth.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from aquamvs_core.camera.calibration import CameraCalibration, Interface, Rig
from aquamvs_core.camera.distortion import distort_normalized, fold_limit
from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.camera.sampling import sample_map
from aquamvs_core.evaluation.metrics import cell_points
from aquamvs_core.runtime import torch_threads
from aquamvs_core.synthetic.ground_truth import HeightGrid
from aquamvs_core.synthetic.render import trace_pixels


def original_depth_map(
    camera: CameraCalibration, interface: Interface, gt: HeightGrid, frame_index: int
) -> torch.Tensor:
    """(H, W, 1) float32 exact ground-truth ray depth of every *original* pixel centre (NaN where the
    ray misses the bed or the pixel is beyond the lens model's valid range)."""
    w, h = camera.image_size
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    hits = trace_pixels(camera, interface, gt, frame_index, np.stack([u.ravel(), v.ravel()], 1))
    depth = np.where(hits.hit, hits.ray_depth, np.nan).reshape(h, w, 1)
    return torch.from_numpy(depth.astype(np.float32))


def original_pixels(
    camera: CameraCalibration, interface: Interface, points: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Original-image pixels (N, 2) of world points (N, 3) float64, whether each is valid (projects,
    within the fold, inside the image), and each point's ray depth (N,) along its refracted ray."""
    rc = RefractiveCamera.from_calibration(camera, interface)  # ideal pinhole with the calibrated K
    uv, ok = rc.project(points)
    origins, _, ok_ray = rc.cast_ray(uv)
    K = torch.as_tensor(np.asarray(camera.K, dtype=np.float64))
    y = (uv[:, 1] - K[1, 2]) / K[1, 1]
    x = (uv[:, 0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
    xy = torch.stack([x, y], 1)
    r = xy.norm(dim=1)
    limit = fold_limit(camera.dist_coeffs, camera.is_fisheye)
    within = (torch.atan(r) < limit) if camera.is_fisheye else (r < limit)
    xy_d = distort_normalized(torch.nan_to_num(xy), camera.dist_coeffs, camera.is_fisheye)
    pix = torch.stack(
        [K[0, 0] * xy_d[:, 0] + K[0, 1] * xy_d[:, 1] + K[0, 2], K[1, 1] * xy_d[:, 1] + K[1, 2]], 1
    )
    w, h = camera.image_size
    inside = (pix[:, 0] >= -0.5) & (pix[:, 0] <= w - 0.5) & (pix[:, 1] >= -0.5) & (pix[:, 1] <= h - 0.5)
    depth = (points - origins).norm(dim=1)
    return pix, ok & ok_ray & within & inside & torch.isfinite(pix).all(dim=1), depth


def original_visibility_count(
    gt: HeightGrid,
    frame_index: int,
    rig: Rig,
    names: list[str] | None = None,
    cell_step: int | None = None,
    occlusion_tol_mm: float = 3.0,
    chunk_size: int = 1 << 16,
    threads: int | None = 1,
) -> np.ndarray:
    """(Ny', Nx') int32: how many of the rig's cameras (or of ``names``) see each evaluation cell
    (:func:`~aquamvs_core.evaluation.metrics.cell_points`) in their original images (see the module
    docstring)."""
    cells = cell_points(gt, frame_index, cell_step)
    pts = torch.from_numpy(np.ascontiguousarray(cells.reshape(-1, 3)))
    count = torch.zeros(pts.shape[0], dtype=torch.int32)
    tol = occlusion_tol_mm * 1e-3
    with torch.no_grad(), torch_threads(threads):
        for name in rig.camera_names if names is None else names:
            camera = rig[name]
            depth_map = original_depth_map(camera, rig.interface, gt, frame_index)
            for start in range(0, pts.shape[0], chunk_size):
                x = pts[start : start + chunk_size]
                pix, ok, depth = original_pixels(camera, rig.interface, x)
                d, ok_d = sample_map(
                    depth_map, torch.where(ok.unsqueeze(1), pix, torch.zeros_like(pix)), "bilinear"
                )
                seen = ok & ok_d & ((torch.nan_to_num(d[:, 0].double(), nan=math.inf) - depth).abs() <= tol)
                count[start : start + chunk_size] += seen.to(torch.int32)
    return count.reshape(cells.shape[:2]).numpy()
