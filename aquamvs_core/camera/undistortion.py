"""Image undistortion: the map from every pixel of an undistorted pinhole image (intrinsics
``K_new``) to the original image, and resampling through it (:func:`build_undistortion_map`,
:func:`undistort_image`). The lens models are :mod:`aquamvs_core.camera.distortion`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aquamvs_core.camera.calibration import CameraCalibration
from aquamvs_core.camera.distortion import (
    K_tensor,
    coefficient_tensor,
    distort_with,
    fold_limit,
    normalized_to_pixels,
    pinhole_with_jacobian,
    pixels_to_normalized,
    undistorted_intrinsics,
    working_tensor,
)
from aquamvs_core.camera.sampling import ArrayLike


@dataclass(frozen=True, eq=False)
class UndistortionMap:
    """Resampling map from the original image to the undistorted image.

    Attributes:
        K_new: (3, 3) float64 intrinsics of the undistorted image.
        source_size: (width, height) of the original image.
        map_xy: (H, W, 2) float32; for every undistorted pixel centre ``(u, v)``, the source pixel
            ``(u, v)`` in the original image (set to -1 where not finite).
        valid: (H, W) bool; the source pixel lies inside the original image (pixel centres span
            ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``) and the ray is within the model's invertible
            range (not beyond the fold, see :func:`fold_limit`).
    """

    K_new: np.ndarray
    map_xy: torch.Tensor
    valid: torch.Tensor
    source_size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the undistorted image."""
        return int(self.map_xy.shape[1]), int(self.map_xy.shape[0])


def build_undistortion_map(
    camera: CameraCalibration,
    K_new: ArrayLike | None = None,
    device: str | torch.device = "cpu",
    size: tuple[int, int] | None = None,
) -> UndistortionMap:
    """Map every pixel centre of the undistorted image (intrinsics ``K_new``, default
    :func:`undistorted_intrinsics`; ``size`` (width, height), default the original size) to its
    source pixel in the original image.

    Uses the forward model only (no iteration), computed in float64 (float32 on devices without
    float64) and stored as float32, like ``cv2.initUndistortRectifyMap`` with ``R = I``.
    """
    if K_new is None:
        K_new = undistorted_intrinsics(camera)
    K_new = np.asarray(K_new.detach().cpu() if isinstance(K_new, torch.Tensor) else K_new, dtype=np.float64)
    K_new = K_new.reshape(3, 3).copy()
    device = torch.device(device)
    dtype = working_tensor(torch.empty(0, device=device)).dtype
    width, height = camera.image_size
    out_w, out_h = (width, height) if size is None else (int(size[0]), int(size[1]))
    v, u = torch.meshgrid(
        torch.arange(out_h, device=device, dtype=dtype),
        torch.arange(out_w, device=device, dtype=dtype),
        indexing="ij",
    )
    pix = torch.stack([u, v], dim=-1)
    xy = pixels_to_normalized(pix, K_tensor(K_new, pix))
    k = coefficient_tensor(camera.dist_coeffs, camera.is_fisheye, xy)
    limit = fold_limit(camera.dist_coeffs, camera.is_fisheye)
    r = xy.norm(dim=-1)
    if camera.is_fisheye:
        xy_d = distort_with(xy, k, fisheye=True)
        unfolded = torch.atan(r) < limit
    else:
        xy_d, jac, den = pinhole_with_jacobian(xy, k)
        det = jac[..., 0, 0] * jac[..., 1, 1] - jac[..., 0, 1] * jac[..., 1, 0]
        unfolded = (r < limit) & (den > 0) & (det > 0)
    src = normalized_to_pixels(xy_d, K_tensor(camera.K, pix))
    finite = torch.isfinite(src).all(dim=-1)
    inside = (
        (src[..., 0] >= -0.5)
        & (src[..., 0] <= width - 0.5)
        & (src[..., 1] >= -0.5)
        & (src[..., 1] <= height - 0.5)
    )
    valid = finite & inside & unfolded
    map_xy = torch.where(finite.unsqueeze(-1), src, torch.full_like(src, -1.0)).to(torch.float32)
    return UndistortionMap(K_new=K_new, map_xy=map_xy, valid=valid, source_size=(width, height))


def undistort_image(image: ArrayLike, umap: UndistortionMap) -> np.ndarray:
    """Resample ``image`` (H, W, 3) or (H, W) uint8 (numpy or torch) into the undistorted image.

    Bilinear interpolation (``torch.nn.functional.grid_sample``) on the device of ``umap``. Inside
    the original image (``umap.valid``) the source is sampled with edge replication, so the
    half-pixel band along the image border is not darkened; every invalid pixel is 0.
    Returns a numpy uint8 array of the same shape, rounded to nearest.
    """
    arr = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image))
    if arr.dtype != torch.uint8 or arr.ndim not in (2, 3):
        raise TypeError(f"image must be (H, W) or (H, W, C) uint8, got {tuple(arr.shape)} {arr.dtype}")
    height, width = int(arr.shape[0]), int(arr.shape[1])
    expected = umap.source_size or umap.size
    if (width, height) != expected:
        raise ValueError(f"image size {(width, height)} differs from the map's source size {expected}")
    device = umap.map_xy.device
    src = arr.to(device=device, dtype=torch.float32)
    src = src.unsqueeze(-1) if arr.ndim == 2 else src
    src = src.permute(2, 0, 1).unsqueeze(0)  # (1, C, H, W)
    grid = torch.empty_like(umap.map_xy)
    grid[..., 0] = (2 * umap.map_xy[..., 0] + 1) / width - 1
    grid[..., 1] = (2 * umap.map_xy[..., 1] + 1) / height - 1
    out = torch.nn.functional.grid_sample(
        src, grid.unsqueeze(0), mode="bilinear", padding_mode="border", align_corners=False
    )[0].permute(1, 2, 0)
    out = torch.where(umap.valid.unsqueeze(-1), out, torch.zeros_like(out))
    out = torch.clamp(torch.floor(out + 0.5), 0, 255).to(torch.uint8)
    if arr.ndim == 2:
        out = out[..., 0]
    return out.cpu().numpy()
