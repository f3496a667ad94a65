"""The exact dense warp between two cameras of the synthetic survey, in romatch's format.

It lets the RoMa pathway's conversion code (sampling, pixel conversion, triangulation, aggregation)
be tested and benchmarked against ground truth without trained weights: every warp cell's reference
pixel is traced through the water onto the heightfield and the hit point is projected exactly into
the source camera.
"""

from __future__ import annotations

import numpy as np
import torch

from aquamvs_core.camera.calibration import CameraCalibration, Rig
from aquamvs_core.camera.distortion import distort_pixels
from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.stages.dense.correspondence_depth import CorrespondenceSampler, WarpMatch, grid_pixels
from aquamvs_core.synthetic.ground_truth import GroundTruth
from aquamvs_core.synthetic.render import trace_pixels


def _inside(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    w, h = size
    u, v = pixels[..., 0], pixels[..., 1]
    return torch.isfinite(u) & torch.isfinite(v) & (u >= -0.5) & (u <= w - 0.5) & (v >= -0.5) & (v <= h - 0.5)


def _original(pixels: torch.Tensor, camera: RefractiveCamera, calibration: CameraCalibration) -> torch.Tensor:
    """Original-image pixels (..., 2) of ``camera``'s pixels (..., 2): distorted from an undistorted
    grid, unchanged for a camera with a lens (its pixels are the original image's)."""
    if camera.lens is not None:
        return pixels
    return distort_pixels(pixels, calibration, camera.K.cpu().numpy())


def ground_truth_warp(
    rig: Rig,
    gt: GroundTruth,
    frame_index: int,
    cameras: dict[str, RefractiveCamera],
    ref: str,
    src: str,
    grid_shape: tuple[int, int],
    occlusion_tol_mm: float = 1.0,
) -> WarpMatch:
    """The exact warp of ``ref``'s image into ``src``'s on an ``h × w`` grid, on the cameras' pixel
    grids (undistorted, or original for a camera with a lens).

    Certainty is 1 where the reference pixel's ray hits the bottom, the point projects into the
    source image (inside the original, distorted image too) and the source's own ray reaches it
    unoccluded (within ``occlusion_tol_mm``); 0 elsewhere (those cells' targets are set to 0).
    ``cameras`` are the refractive cameras of the stored images (``StoreCameras.cameras``).
    """
    cam_ref, cam_src = cameras[ref], cameras[src]
    size_ref, size_src = rig[ref].image_size, rig[src].image_size
    pix = grid_pixels(grid_shape, size_ref).reshape(-1, 2)
    distorted = _original(pix, cam_ref, rig[ref])
    hits = trace_pixels(rig[ref], rig.interface, gt, frame_index, distorted.numpy())
    points = torch.from_numpy(hits.points)
    ok = _inside(distorted, size_ref) & torch.from_numpy(hits.hit)
    safe = torch.where(ok.unsqueeze(-1), points, torch.zeros_like(points) + points[ok][:1].mean(0))
    uv_src, projected = cam_src.project(safe.to(cam_src.K.dtype))
    uv_src = uv_src.double()
    src_distorted = _original(uv_src, cam_src, rig[src])
    ok = ok & projected & _inside(uv_src, size_src) & _inside(src_distorted, size_src)
    back = trace_pixels(rig[src], rig.interface, gt, frame_index, src_distorted.numpy())
    origins, _, ray_ok = cam_src.cast_ray(uv_src.to(cam_src.K.dtype))
    reach = (safe - origins.double()).norm(dim=-1)
    unoccluded = torch.from_numpy(np.abs(np.nan_to_num(back.ray_depth, nan=-1.0) - reach.numpy()) * 1e3)
    ok = ok & ray_ok & (unoccluded <= occlusion_tol_mm)

    (h, w), (w_ref, h_ref), (w_src, h_src) = grid_shape, size_ref, size_src
    warp = np.zeros((h * w, 4), dtype=np.float32)
    warp[:, 0] = 2 * (pix[:, 0].numpy() + 0.5) / w_ref - 1
    warp[:, 1] = 2 * (pix[:, 1].numpy() + 0.5) / h_ref - 1
    target = np.stack(
        [2 * (uv_src[:, 0].numpy() + 0.5) / w_src - 1, 2 * (uv_src[:, 1].numpy() + 0.5) / h_src - 1], -1
    )
    warp[:, 2:] = np.where(ok.numpy()[:, None], target, 0.0)
    certainty = ok.numpy().astype(np.float32)
    return WarpMatch(torch.from_numpy(warp.reshape(h, w, 4)), torch.from_numpy(certainty.reshape(h, w)))


class GroundTruthMatcher:
    """A :class:`~aquamvs_core.stages.dense.correspondence_depth.DenseMatcher` that returns the exact
    warp of the synthetic survey (it ignores the pixels; ``names`` say which cameras), and delegates
    sampling and pixel conversion to ``sampler`` (romatch's, through a RoMa session)."""

    def __init__(
        self,
        rig: Rig,
        gt: GroundTruth,
        frame_index: int,
        cameras: dict[str, RefractiveCamera],
        grid_shape: tuple[int, int],
        sampler: CorrespondenceSampler,
    ):
        self.rig, self.gt, self.frame_index, self.cameras = rig, gt, frame_index, cameras
        self.grid_shape, self.sampler = grid_shape, sampler

    def match(
        self, image_a: np.ndarray, image_b: np.ndarray, names: tuple[str, str] | None = None
    ) -> WarpMatch:
        if names is None:
            raise ValueError("the ground-truth matcher needs the camera names (ref, src)")
        return ground_truth_warp(self.rig, self.gt, self.frame_index, self.cameras, *names, self.grid_shape)

    def sample(
        self, warp: torch.Tensor, certainty: torch.Tensor, num: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sampler.sample(warp, certainty, num)

    def to_pixel_coordinates(
        self, matches: torch.Tensor, size_a: tuple[int, int], size_b: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sampler.to_pixel_coordinates(matches, size_a, size_b)
