"""Exact ground-truth depth maps of a synthetic survey's cameras, on their undistorted pixel grids:
the reference depth maps of the fusion tests, and the occlusion test of
:func:`aquamvs_core.evaluation.metrics.visibility_count`."""

from __future__ import annotations

import numpy as np
import torch

from aquamvs_core.camera.calibration import CameraCalibration, Interface, Rig
from aquamvs_core.camera.distortion import distort_pixels, undistorted_intrinsics
from aquamvs_core.camera.sampling import pixel_grid
from aquamvs_core.camera.undistortion import build_undistortion_map
from aquamvs_core.stages.depth_map import DepthMap
from aquamvs_core.synthetic.ground_truth import HeightGrid
from aquamvs_core.synthetic.render import trace_pixels


def gt_depth_map(
    camera_calib: CameraCalibration,
    interface: Interface,
    terrain: HeightGrid,
    frame_index: int,
    K_new: np.ndarray | None = None,
) -> DepthMap:
    """The exact ground-truth :class:`DepthMap` of a camera on its undistorted pixel grid.

    Every undistorted pixel centre (intrinsics ``K_new``, default
    :func:`~aquamvs_core.camera.distortion.undistorted_intrinsics`) is mapped to the original image
    (:func:`~aquamvs_core.camera.distortion.distort_pixels`) and traced through the water onto the
    heightfield (:func:`~aquamvs_core.synthetic.trace_pixels`); its ray depth is the depth. Pixels
    whose source lies outside the original image (``UndistortionMap.valid``) or whose ray misses the
    terrain are NaN. Confidence is 1 where there is a depth, 0 elsewhere.

    ``terrain`` is a :class:`~aquamvs_core.synthetic.Terrain` or a
    :class:`~aquamvs_core.synthetic.GroundTruth` (anything with ``x``, ``y`` and ``heights(frame)``).
    """
    if K_new is None:
        K_new = undistorted_intrinsics(camera_calib)
    w, h = camera_calib.image_size
    grid = pixel_grid(w, h, dtype=torch.float64).reshape(-1, 2)
    distorted = distort_pixels(grid, camera_calib, K_new)
    hits = trace_pixels(camera_calib, interface, terrain, frame_index, distorted.numpy())  # type: ignore[arg-type]
    valid = build_undistortion_map(camera_calib, K_new).valid.reshape(-1).numpy() & hits.hit
    depth = np.where(valid, hits.ray_depth, np.nan).reshape(h, w).astype(np.float32)
    confidence = np.isfinite(depth).astype(np.float32)
    return DepthMap(
        camera=camera_calib.name, depth=torch.from_numpy(depth), confidence=torch.from_numpy(confidence)
    )


def gt_depth_maps(
    rig: Rig, terrain: HeightGrid, frame_index: int, names: list[str] | None = None
) -> dict[str, DepthMap]:
    """:func:`gt_depth_map` of every camera of ``rig`` (or of ``names``), each on the undistorted grid
    of :func:`~aquamvs_core.camera.distortion.undistorted_intrinsics`."""
    return {
        name: gt_depth_map(rig[name], rig.interface, terrain, frame_index, undistorted_intrinsics(rig[name]))
        for name in (rig.camera_names if names is None else names)
    }
