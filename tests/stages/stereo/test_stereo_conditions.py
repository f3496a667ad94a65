"""The plane sweep under lab conditions, against ray-traced ground truth: strong lens distortion on the
original pixel grid (the periphery kept), and weak texture with shot noise (the multi-scale fallback
keeps depths that the finest window cannot match, without wrong points)."""

from __future__ import annotations

import numpy as np
import torch

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.camera.sampling import pixel_grid
from aquamvs_core.stages.stereo import PlaneSweepConfig, combine_pair_depths, sweep_pair
from aquamvs_core.synthetic import (
    SyntheticSurveyConfig,
    Terrain,
    make_rig,
    make_terrain,
    render_view,
    trace_pixels,
)

W, H = 200, 150
Z_RANGE = (1.15, 1.25)


def test_strong_distortion_on_the_original_grid_keeps_the_periphery():
    """Lab lenses (k1 ≈ −0.5, half of them folding 45–48° off axis) on a 6-camera ring: cam0 against
    two sources on its original images, rays through the exact inverse of the lens. The periphery
    (outside the 80 % of the image an undistortion with the calibrated K would keep) is reconstructed
    nearly as well as the centre. Measured (8 mm pixels): 99 % valid where both sources see the bed,
    median 0.88 mm, p90 3.4 mm, 0.5 % over 20 mm; the periphery (22 % of the image) 83 % valid,
    median 1.06 mm."""
    cfg = SyntheticSurveyConfig(
        image_size=(W, H),
        auxiliary_camera=False,
        n_ring_cameras=6,
        lens_profile="lab",
        horizontal_fov_deg=61.0,
        terrain_cell=0.002,
        texel_size=0.001,
        texture_blur=0.001,
        n_frames=1,
    )
    rig = make_rig(cfg)
    terrain = make_terrain(cfg)
    names = ("cam0", "cam1", "cam5")
    cams = {n: RefractiveCamera.from_calibration(rig[n], rig.interface, with_lens=True) for n in names}
    images = {n: render_view(rig[n], rig.interface, terrain, 0) for n in names}
    pairs = [
        sweep_pair(
            images["cam0"], images[s], cams["cam0"], cams[s], config=PlaneSweepConfig(), z_range=Z_RANGE
        )
        for s in ("cam1", "cam5")
    ]
    combined = combine_pair_depths(pairs, PlaneSweepConfig(), "cam0")
    pix = pixel_grid(W, H, dtype=torch.float64).reshape(-1, 2)
    gt = trace_pixels(rig["cam0"], rig.interface, terrain, 0, pix)  # the renderer's own rays
    gt_z = gt.points[:, 2].reshape(H, W)
    _, d, _ = cams["cam0"].cast_ray(pixel_grid(W, H, dtype=torch.float64))
    z = rig.interface.water_z + combined.depth.double().numpy() * d[..., 2].numpy()
    err = np.abs(z - gt_z) * 1e3
    # Where both sources see the true point (exact, fold-guarded projection).
    pts = torch.from_numpy(np.nan_to_num(gt.points))
    seen = np.isfinite(gt_z).reshape(-1)
    for s in ("cam1", "cam5"):
        uv, ok = cams[s].project(pts)
        seen &= (ok & cams[s].in_image(uv, margin=4.0)).numpy()
    seen = seen.reshape(H, W)
    valid = np.isfinite(err)
    assert valid[seen].mean() > 0.9
    assert np.median(err[valid]) < 1.5, np.median(err[valid])
    assert np.percentile(err[valid], 90) < 4.0
    assert np.mean(err[valid] > 20) < 0.01
    # The periphery: pixels whose ideal position lies outside the calibrated-K image.
    # Ideal pixel of each original pixel (air-ray direction in the camera frame, calibrated K).
    R = torch.from_numpy(rig["cam0"].R)
    air = cams["cam0"].air_rays(pix)[0] @ R.T
    ideal = (air[:, :2] / air[:, 2:]).numpy() * np.diag(rig["cam0"].K)[:2] + rig["cam0"].K[:2, 2]
    outer = ((ideal < -0.5) | (ideal > [W - 0.5, H - 0.5])).any(axis=1).reshape(H, W)
    assert outer.mean() > 0.1  # a real share of the image lies outside the calibrated-K canvas
    periphery = outer & seen
    assert periphery.sum() > 200
    assert valid[periphery].mean() > 0.75
    assert np.median(err[periphery & valid]) < 1.6


def silt_scene(seed: int = 3):
    """A flat bed at Z = 1.2 m whose texture has a disc (20 cm radius) with 10× less contrast at the
    centre of cam0's view, and renders with noise (σ = 2 grey levels)."""
    cfg = SyntheticSurveyConfig(
        image_size=(W, H),
        lens_distortion=False,
        auxiliary_camera=False,
        n_ring_cameras=6,
        terrain_size=2.0,
        terrain_cell=0.002,
        texel_size=0.001,
        texture_blur=0.001,
        n_frames=1,
    )
    rig = make_rig(cfg)
    names = ("cam0", "cam1", "cam5", "cam2")
    cams = {c: RefractiveCamera.from_calibration(rig[c], rig.interface) for c in names}
    o, d, _ = cams["cam0"].cast_ray(torch.tensor([[W / 2, H / 2]], dtype=torch.float64))
    centre = (o + (1.2 - 0.7) / d[:, 2:] * d)[0, :2].numpy()  # where cam0's view centre meets the bed
    tex = make_terrain(cfg).texture.copy()
    n = tex.shape[0]
    origin = (-0.3 - 1.0, -1.0)
    jj, ii = np.meshgrid(np.arange(n), np.arange(n))
    x, y = origin[0] + jj * 0.001, origin[1] + ii * 0.001
    disc = np.hypot(x - centre[0], y - centre[1]) < 0.2
    mean = tex[disc].mean(axis=0)
    tex[disc] = mean + (tex[disc] - mean) / 10.0
    terrain = Terrain.flat(1.2, center=(-0.3, 0.0), size=2.0, cell=0.002, texture=tex, texel_size=0.001)
    rng = np.random.default_rng(seed)
    images = {}
    for c in names:
        img = render_view(rig[c], rig.interface, terrain, 0).astype(np.float64)
        images[c] = np.clip(np.round(img + rng.normal(0.0, 2.0, img.shape)), 0, 255).astype(np.uint8)
    pix = pixel_grid(W, H, dtype=torch.float64).reshape(-1, 2)
    hits = trace_pixels(rig["cam0"], rig.interface, terrain, 0, pix)
    in_disc = (np.hypot(hits.points[:, 0] - centre[0], hits.points[:, 1] - centre[1]) < 0.19).reshape(H, W)
    return cams, images, hits.points[:, 2].reshape(H, W), in_disc


def test_multiscale_fallback_keeps_more_of_a_weak_texture_and_nothing_else_changes():
    """The optional fallback (off by default: on the turbid-silt survey it costs accuracy for little
    completeness) keeps the coarser level's depth where the finest window cannot match."""
    cams, images, gt_z, in_disc = silt_scene()
    assert in_disc.sum() > 1500
    results, single = {}, {}
    for fallback in (False, True):
        config = PlaneSweepConfig(multiscale_fallback=fallback)
        pairs = [
            sweep_pair(images["cam0"], images[s], cams["cam0"], cams[s], config=config, z_range=Z_RANGE)
            for s in ("cam1", "cam5", "cam2")
        ]
        single[fallback] = pairs[0].world_z.double().numpy()
        combined = combine_pair_depths(pairs, config, "cam0")
        _, d, _ = cams["cam0"].cast_ray(pixel_grid(W, H, dtype=torch.float64))
        z = 0.7 + combined.depth.double().numpy() * d[..., 2].numpy()
        results[fallback] = np.abs(z - gt_z) * 1e3
    assert not PlaneSweepConfig().multiscale_fallback
    before, after = results[False], results[True]
    # Measured: 79 % of the disc without the fallback, 92 % with it.
    assert np.isfinite(after)[in_disc].mean() > np.isfinite(before)[in_disc].mean() + 0.08
    # A pair's depth where its finest level matched is the same with or without the fallback.
    kept = np.isfinite(single[False])
    assert np.isfinite(single[True])[kept].all()
    np.testing.assert_array_equal(single[True][kept], single[False][kept])
    assert np.isfinite(single[True]).sum() > kept.sum()
