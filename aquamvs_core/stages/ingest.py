"""Ingestion: the pixel grid each camera's frames are stored on, and the resampling of raw frames
onto it (:class:`Undistorter`). The store-level step that decodes, undistorts and writes frames is
:func:`aquamvs_core.steps.ingestion.ingest_frames`.

**Canvas policies** (``canvas``):

* ``"original"`` (the default): frames are stored as recorded, on the original pixel grid, and the
  camera carries its lens model (:class:`~aquamvs_core.camera.lens.Lens`): every pixel is cast
  through the exact inverse of the lens and every projection goes through the lens with its fold
  guard. No pixel of the field of view is lost and nothing is resampled; a fisheye keeps its whole
  field of view too (no pinhole canvas can hold 90° or more off axis).
* ``"full"``: an undistorted pinhole canvas that holds every original pixel, with the calibrated
  focal lengths (the resolution at the centre is kept; the periphery of a strongly distorted lens
  is stretched, up to 1 / 0.27 ≈ 3.7 times radially at the corners of the real rig's k1 ≈ −0.5
  lenses). The canvas is the largest such box over the rig's cameras (one size for all). A fisheye
  keeps :data:`~aquamvs_core.camera.distortion.MAX_FISHEYE_HALF_ANGLE_DEG` at most.
* ``"calibrated"``: the undistorted image with the calibrated K and size
  (:func:`~aquamvs_core.camera.distortion.undistorted_intrinsics`). With k1 ≈ −0.5 this keeps only
  78–79 % of each original image: kept for comparison only.

Which one is more accurate was measured (README, "Undistortion canvas").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from aquamvs_core.camera.calibration import CameraCalibration, Interface, Rig
from aquamvs_core.camera.distortion import undistort_pixels, undistorted_intrinsics
from aquamvs_core.camera.lens import Lens, PixelInverse
from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.camera.undistortion import UndistortionMap, build_undistortion_map, undistort_image

Canvas = Literal["original", "full", "calibrated"]
DEFAULT_CANVAS: Canvas = "original"


@dataclass(frozen=True, eq=False)
class CameraGrid:
    """The pixel grid a camera's frames are stored on.

    Attributes:
        K: (3, 3) float64 intrinsics of the stored images (the calibrated K when ``lens``).
        size: (width, height) of the stored images.
        lens: frames are stored as recorded; the camera model includes the lens.
        valid: (H, W) bool; pixels that see through the lens (inside the original image and within
            the lens model's invertible range).
        umap: the undistortion map (None when ``lens``: no resampling).
    """

    K: np.ndarray
    size: tuple[int, int]
    lens: bool
    valid: np.ndarray
    umap: UndistortionMap | None = None

    def camera(self, calibration: CameraCalibration, interface: Interface) -> RefractiveCamera:
        """The refractive camera of the stored images."""
        if self.lens:
            return RefractiveCamera.from_calibration(calibration, interface, with_lens=True)
        return RefractiveCamera.from_calibration(calibration, interface, self.K, self.size)


def original_valid_mask(camera: CameraCalibration) -> np.ndarray:
    """(H, W) bool: original pixels whose ray the lens model can invert (within its fold).

    Pixels well inside the image of the fold circle (distorted radius below 99.9 % of its smallest
    value over the azimuths, :attr:`~aquamvs_core.camera.lens.Lens.fold_ring`) are valid without
    solving, and so is every pixel of a model that never folds; only the others are inverted
    exactly."""
    lens = Lens.of(camera)
    w, h = camera.image_size
    r_safe = 0.999 * lens.fold_ring[0]
    if not math.isfinite(r_safe):  # the model never folds: every pixel has its ray
        return np.ones((h, w), dtype=bool)
    v, u = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    pix = torch.stack([u, v], dim=-1)
    K = torch.as_tensor(np.asarray(camera.K, dtype=np.float64))
    y = (pix[..., 1] - K[1, 2]) / K[1, 1]
    x = (pix[..., 0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
    valid = torch.hypot(x, y) < r_safe
    rest = ~valid
    if bool(rest.any()):
        inverse = PixelInverse(camera.K, lens, camera.image_size)
        _, ok = inverse.ideal(pix[rest])
        valid[rest] = ok
    return valid.numpy()


def _ideal_bounds(camera: CameraCalibration) -> tuple[np.ndarray, np.ndarray]:
    """(2,) lower and upper bounds of the undistorted pixel coordinates (calibrated K) of the
    original image's border (pixel centres' outer edge, every half pixel)."""
    w, h = camera.image_size
    us = torch.arange(-0.5, w - 0.5 + 1e-9, 0.5, dtype=torch.float64)
    vs = torch.arange(-0.5, h - 0.5 + 1e-9, 0.5, dtype=torch.float64)
    edges = torch.cat(
        [
            torch.stack([us, torch.full_like(us, -0.5)], -1),
            torch.stack([us, torch.full_like(us, h - 0.5)], -1),
            torch.stack([torch.full_like(vs, -0.5), vs], -1),
            torch.stack([torch.full_like(vs, w - 0.5), vs], -1),
        ]
    )
    pix, ok = undistort_pixels(edges, camera, camera.K)
    pix = pix[ok].numpy()
    if pix.shape[0] == 0:
        raise ValueError(f"camera {camera.name!r}: no border pixel of the image can be undistorted")
    return pix.min(axis=0), pix.max(axis=0)


def full_canvas(rig: Rig) -> dict[str, tuple[np.ndarray, tuple[int, int]]]:
    """Camera → (K_new, (width, height)) of the ``"full"`` canvas (see the module docstring)."""
    bounds = {}
    for name, cam in rig.cameras.items():
        if cam.is_fisheye:
            K = undistorted_intrinsics(cam)
            w, h = cam.image_size
            bounds[name] = (K, np.array([-0.5, -0.5]), np.array([w - 0.5, h - 0.5]))
        else:
            lo, hi = _ideal_bounds(cam)
            bounds[name] = (np.asarray(cam.K, dtype=np.float64), lo, hi)
    span = np.max([hi - lo for _, lo, hi in bounds.values()], axis=0)
    w, h = (2 * math.ceil(float(s) / 2 + 0.5) for s in span)  # even sizes (video codecs)
    out = {}
    for name, (K, lo, hi) in bounds.items():
        K_new = K.copy()
        # Centre the camera's box: its middle lands on the canvas middle.
        K_new[0, 2] += (w - 1) / 2 - (lo[0] + hi[0]) / 2
        K_new[1, 2] += (h - 1) / 2 - (lo[1] + hi[1]) / 2
        out[name] = (K_new, (int(w), int(h)))
    return out


def camera_grids(rig: Rig, canvas: Canvas = DEFAULT_CANVAS, device: str = "cpu") -> dict[str, CameraGrid]:
    """The :class:`CameraGrid` of every camera of ``rig`` under ``canvas``."""
    if canvas == "original":
        return {
            name: CameraGrid(np.array(cam.K, dtype=float), cam.image_size, True, original_valid_mask(cam))
            for name, cam in rig.cameras.items()
        }
    if canvas == "full":
        targets = full_canvas(rig)
    elif canvas == "calibrated":
        targets = {n: (undistorted_intrinsics(c), c.image_size) for n, c in rig.cameras.items()}
    else:
        raise ValueError(f"unknown canvas {canvas!r} (choose original, full or calibrated)")
    grids = {}
    for name, cam in rig.cameras.items():
        K_new, size = targets[name]
        umap = build_undistortion_map(cam, K_new, device=device, size=size)
        grids[name] = CameraGrid(umap.K_new, umap.size, False, umap.valid.cpu().numpy().astype(bool), umap)
    return grids


@dataclass(frozen=True)
class Undistorter:
    """Per-camera grids of the stored frames (see :func:`camera_grids`) and the resampling onto them."""

    grids: dict[str, CameraGrid]
    canvas: Canvas = DEFAULT_CANVAS

    @classmethod
    def for_rig(cls, rig: Rig, device: str = "cpu", canvas: Canvas = DEFAULT_CANVAS) -> Undistorter:
        return cls(camera_grids(rig, canvas, device), canvas)

    @property
    def K_new(self) -> dict[str, np.ndarray]:
        """(3, 3) intrinsics of the stored images per camera."""
        return {name: g.K for name, g in self.grids.items()}

    @property
    def valid_masks(self) -> dict[str, np.ndarray]:
        """(H, W) bool per camera: stored pixels that see through the lens."""
        return {name: g.valid for name, g in self.grids.items()}

    @property
    def lens_cameras(self) -> list[str]:
        """Cameras whose frames are stored as recorded (the lens is in the camera model)."""
        return [name for name, g in self.grids.items() if g.lens]

    def apply(self, images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw (H, W, 3) uint8 RGB images, keyed by camera, on the stored grids."""
        out = {}
        for name, img in images.items():
            grid = self.grids[name]
            out[name] = np.ascontiguousarray(img) if grid.umap is None else undistort_image(img, grid.umap)
        return out
