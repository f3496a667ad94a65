"""Which cameras see each ground-truth cell, in their *original* images: the lens model with its
fold guard and the whole field of view, independent of the pixel grid the reconstruction works on
(so the denominator of completeness cannot shrink with the undistortion canvas)."""

from __future__ import annotations

import numpy as np
import torch

from aquamvs_core.camera.calibration import Rig
from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.evaluation.metrics import visibility_count
from aquamvs_core.stages.depth_map import DepthMap
from aquamvs_core.synthetic.ground_truth import HeightGrid
from aquamvs_core.synthetic.render import trace_pixels


def original_gt_depth_maps(rig: Rig, gt: HeightGrid, frame_index: int) -> dict[str, DepthMap]:
    """Exact ground-truth depth maps of every camera on its *original* pixel grid: each pixel centre
    traced through the lens, the water and onto the heightfield
    (:func:`~aquamvs_core.synthetic.render.trace_pixels`, the renderer's own computation)."""
    out = {}
    for name, cam in rig.cameras.items():
        w, h = cam.image_size
        v, u = np.mgrid[0:h, 0:w].astype(np.float64)
        hits = trace_pixels(cam, rig.interface, gt, frame_index, np.stack([u.ravel(), v.ravel()], -1))
        depth = np.where(hits.hit, hits.ray_depth, np.nan).reshape(h, w).astype(np.float32)
        out[name] = DepthMap(
            name, torch.from_numpy(depth), torch.from_numpy(np.isfinite(depth).astype(np.float32))
        )
    return out


def rig_visibility(
    gt: HeightGrid, frame_index: int, rig: Rig, cell_step: int | None = None, names: list[str] | None = None
) -> np.ndarray:
    """(Ny', Nx') int32 :func:`visibility_count` of the rig's cameras on their original images (lens
    model, fold guard, occlusion test against :func:`original_gt_depth_maps`)."""
    names = rig.camera_names if names is None else names
    cams = {n: RefractiveCamera.from_calibration(rig[n], rig.interface, with_lens=True) for n in names}
    maps = original_gt_depth_maps(rig, gt, frame_index)
    return visibility_count(gt, frame_index, cams, None, {n: maps[n] for n in names}, cell_step)
