"""Visibility in the original images: equal to the undistorted-grid visibility where the lens has
no distortion, and, with the lab rig's strong folding lenses, exactly the cells that the
renderer's ray through the cell's pixel reaches (an independent back-trace), with the fold guarded."""

from __future__ import annotations

import math

import numpy as np
import torch

from aquamvs_core.camera.calibration import Rig
from aquamvs_core.camera.distortion import distort_normalized, fold_limit
from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.evaluation.lens_visibility import original_pixels, original_visibility_count
from aquamvs_core.evaluation.metrics import cell_points, visibility_count
from aquamvs_core.synthetic import condition_config, make_rig, make_terrain, trace_pixels
from aquamvs_core.synthetic.ground_truth_views import gt_depth_maps

COARSE = {"image_size": (160, 120), "n_frames": 1, "terrain_cell": 0.01, "texel_size": 0.01, "supersample": 1}


def test_without_distortion_it_is_the_undistorted_grid_visibility():
    config = condition_config("ring", overrides={**COARSE, "lens_distortion": False})
    rig = make_rig(config)
    names = rig.primary_names[:4]
    terrain = make_terrain(config)
    ours = original_visibility_count(terrain, 0, rig, names)
    cams = {n: RefractiveCamera.from_calibration(rig[n], rig.interface) for n in names}
    theirs = visibility_count(terrain, 0, cams, None, gt_depth_maps(rig, terrain, 0, names))
    assert ours.max() == 4 and (ours >= 2).mean() > 0.2
    assert np.mean(ours != theirs) < 1e-4  # the same cells (up to a rounding at a tolerance edge)


def test_strong_lenses_see_what_the_renderer_traces_and_nothing_beyond_the_fold():
    config = condition_config("lab-rig", overrides=COARSE)
    rig = make_rig(config)
    terrain = make_terrain(config)
    cells = torch.from_numpy(cell_points(terrain, 0).reshape(-1, 3).copy())
    folding = [n for n in rig.camera_names if math.isfinite(fold_limit(rig[n].dist_coeffs, False))]
    name = folding[0]
    camera = rig[name]
    sub = Rig({name: camera}, rig.interface)
    seen = original_visibility_count(terrain, 0, sub).ravel().astype(bool)
    pix, ok, _ = original_pixels(camera, rig.interface, cells)
    assert np.array_equal(seen & ~ok.numpy(), np.zeros_like(seen))
    # Independent back-trace: the renderer's ray through each candidate pixel lands on the cell.
    idx = np.nonzero(ok.numpy())[0]
    hits = trace_pixels(camera, rig.interface, terrain, 0, pix[idx].numpy())
    reaches = hits.hit & (np.linalg.norm(hits.points - cells[idx].numpy(), axis=1) < 3e-3)
    agree = np.mean(reaches == seen[idx])
    assert agree > 0.995, agree
    assert seen.sum() > 0.2 * seen.size  # one camera sees ~2 of the 6.8 m² of bed
    # Cells beyond the fold that the unguarded polynomial maps into the image: never seen.
    rc = RefractiveCamera.from_calibration(camera, rig.interface)
    uv, valid = rc.project(cells)
    K = torch.as_tensor(camera.K)
    xy = (uv - K[:2, 2]) / torch.diagonal(K)[:2]
    beyond = valid & (xy.norm(dim=1) >= fold_limit(camera.dist_coeffs, False))
    xy_d = distort_normalized(xy, camera.dist_coeffs, False)
    fake = xy_d * torch.diagonal(K)[:2] + K[:2, 2]
    w, h = camera.image_size
    fake_in = (
        beyond & (fake[:, 0] > -0.5) & (fake[:, 0] < w - 0.5) & (fake[:, 1] > -0.5) & (fake[:, 1] < h - 0.5)
    )
    assert int(fake_in.sum()) > 100  # the hazard is real on this bed
    assert not seen[fake_in.numpy()].any()
