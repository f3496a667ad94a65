"""The bed and water conditions of the synthetic generator: turbidity (attenuation and a haze that
grows with the in-water path), camera photometry (gain, white balance, vignetting, noise), low-
contrast silt patches with their ground-truth mask, and steep bowers traced exactly.

References are independent of the renderer: the haze and attenuation formula evaluated in numpy on
the traced path lengths, contrast measured as local standard deviations of the texture, and first
crossings found by dense float64 sampling of each ray against the bilinear ground truth.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from aquamvs_core.synthetic import (
    GroundTruth,
    Heightfield,
    RenderSettings,
    SyntheticSurveyConfig,
    Terrain,
    condition_config,
    generate_survey,
    load_ground_truth,
    make_rig,
    make_terrain,
    render_view,
    rig_center,
    trace_pixels,
)
from aquamvs_core.synthetic.photometry import CameraPhotometry
from aquamvs_core.synthetic.rig import rig_radius
from aquamvs_core.synthetic.silt import _inside_margin, make_silt_patches
from aquamvs_core.synthetic.terrain import make_crater
from aquamvs_core.synthetic.texture import make_texture

SMALL = {"image_size": (160, 120), "n_ring_cameras": 4, "n_frames": 1, "supersample": 1}
BED = {"terrain_size": 1.0, "terrain_cell": 0.001, "texel_size": 0.001}


def _flat(config: SyntheticSurveyConfig, albedo: float) -> Terrain:
    c = rig_center(config)
    texture = np.full((2, 2, 3), albedo, dtype=np.float32)
    return Terrain.flat(
        config.bottom_z, (float(c[0]), float(c[1])), 3.0, 0.05, texture=texture, texel_size=3.0
    )


# --------------------------------------------------------------------------------------------
# Turbidity
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("albedo", [0.0, 0.5])
def test_turbid_haze_grows_with_the_in_water_path_as_modelled(albedo: float):
    config = condition_config("turbid-silt", overrides=SMALL)
    rig = make_rig(config)
    cam = rig["cam1"]
    terrain = _flat(config, albedo)
    settings = RenderSettings.from_config(config)
    image = render_view(cam, rig.interface, terrain, 0, settings).astype(np.float64)
    v, u = np.mgrid[0:120, 0:160].astype(np.float64)
    hits = trace_pixels(cam, rig.interface, terrain, 0, np.stack([u.ravel(), v.ravel()], 1))
    assert hits.hit.all()
    path = hits.ray_depth.reshape(120, 160, 1)  # in-water length of each pixel's ray
    down = (hits.points[:, 2] - config.water_z).reshape(120, 160, 1)
    c, b = np.array(config.water_attenuation), np.array(config.backscatter)
    haze = np.array(config.water_colour) * (1 - np.exp(-b * path))
    expected = settings.exposure * (albedo * np.exp(-c * (down + path)) + haze)  # flat: shade = 1
    assert np.abs(image - np.round(255 * np.clip(expected, 0, 1))).max() <= 1.0
    # Two pixels with known paths: the longer path has more haze, by the formula's amount.
    short, long_ = (
        np.unravel_index(path.argmin(), path.shape[:2]),
        np.unravel_index(path.argmax(), path.shape[:2]),
    )
    assert path[long_] - path[short] > 0.03
    if albedo == 0.0:  # pure haze: B (1 - exp(-b s)) exposure, channel by channel
        gain = image[long_] - image[short]
        predicted = 255 * settings.exposure * (haze[long_] - haze[short])
        np.testing.assert_allclose(gain, predicted, atol=1.0)
        assert np.all(gain > 0)


# --------------------------------------------------------------------------------------------
# Photometry
# --------------------------------------------------------------------------------------------


def test_photometry_changes_radiometry_but_not_geometry():
    plain = SyntheticSurveyConfig(**SMALL, terrain_cell=0.004, texel_size=0.002)
    lit = plain.model_copy(update={"gain_spread": 0.2, "white_balance_spread": 0.08, "vignetting": 0.4})
    rig, rig_lit = make_rig(plain), make_rig(lit)
    assert rig.content_hash == rig_lit.content_hash  # the same cameras
    terrain, terrain_lit = make_terrain(plain), make_terrain(lit)
    assert (
        terrain.z.tobytes() == terrain_lit.z.tobytes()
        and terrain.texture.tobytes() == terrain_lit.texture.tobytes()
    )
    settings = RenderSettings.from_config(plain)
    pixels = np.stack(np.meshgrid(np.arange(160.0), np.arange(120.0)), -1).reshape(-1, 2)
    for i, name in enumerate(rig.camera_names):
        a = trace_pixels(rig[name], rig.interface, terrain, 0, pixels)
        b = trace_pixels(rig_lit[name], rig_lit.interface, terrain_lit, 0, pixels)
        assert np.array_equal(a.points, b.points, equal_nan=True) and np.array_equal(a.hit, b.hit)
        photometry = CameraPhotometry.from_config(lit, i)
        assert not photometry.is_identity and CameraPhotometry.from_config(plain, i).is_identity
        base = render_view(rig[name], rig.interface, terrain, 0, settings).astype(np.float64)
        shot = render_view(rig[name], rig.interface, terrain, 0, settings, photometry).astype(np.float64)
        # Radiometry as modelled: value = gain_c * V(u, v) * radiance, up to the two roundings.
        factor = np.asarray(photometry.gain) * photometry.falloff(rig[name])[..., None]
        ok = (base < 250) & (shot < 254)
        bound = 0.5 + 0.5 * factor + 1e-6
        assert np.all(np.abs(shot - factor * base)[ok] <= np.broadcast_to(bound, base.shape)[ok]), name
        assert np.abs(shot - base)[a.hit.reshape(120, 160)].mean() > 3  # it does change the image
        corner = photometry.falloff(rig[name])[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert corner.min() == pytest.approx(0.6, abs=0.02)  # the farthest corner loses 40 %


def test_shot_and_read_noise_have_the_modelled_variance():
    config = SyntheticSurveyConfig(**SMALL, full_well=800.0, read_noise=0.01)
    rig = make_rig(config)
    cam = rig["cam0"]
    terrain = _flat(config, 0.5)
    settings = RenderSettings(supersample=1)
    clean = render_view(cam, rig.interface, terrain, 0, settings).astype(np.float64) / 255
    photometry = CameraPhotometry.from_config(config, 0)
    frame0 = render_view(cam, rig.interface, terrain, 0, settings, photometry).astype(np.float64) / 255
    again = render_view(cam, rig.interface, terrain, 0, settings, photometry).astype(np.float64) / 255
    assert np.array_equal(frame0, again)  # deterministic per seed, camera and frame
    residual = frame0 - clean
    predicted = clean / config.full_well + config.read_noise**2 + 2 * (1 / 255) ** 2 / 12
    ratio = residual.var() / predicted.mean()
    assert 0.85 < ratio < 1.15, ratio
    assert abs(residual.mean()) < 0.002  # unbiased


# --------------------------------------------------------------------------------------------
# Silt
# --------------------------------------------------------------------------------------------


def _local_std(img: np.ndarray, k: int) -> np.ndarray:
    lum = img.mean(axis=2).astype(np.float64)
    mean = cv2.blur(lum, (k, k))
    return np.sqrt(np.maximum(cv2.blur(lum * lum, (k, k)) - mean * mean, 0))


def test_silt_patches_have_the_configured_contrast_and_a_ground_truth_mask(tmp_path: Path):
    config = condition_config("turbid-silt", overrides={**SMALL, **BED, "terrain_cell": 0.002})
    sand = config.model_copy(update={"silt_patches": 0})
    crater = make_crater(config)
    silty, origin, texel = make_texture(config, crater)
    plain, _, _ = make_texture(sand, crater)
    n = silty.shape[0]
    X, Y = np.meshgrid(origin[0] + texel * np.arange(n), origin[1] + texel * np.arange(n))
    patches = make_silt_patches(config, rig_center(config)[:2], rig_radius(config) + 0.1)
    assert len(patches) == 6
    margins = [_inside_margin(p, X, Y) for p in patches]  # > 0 inside a patch's boundary, metres
    outside = np.all(np.stack(margins) < -0.02, axis=0)
    assert np.array_equal(silty[outside], plain[outside])  # sand away from the silt is untouched
    s_silt, s_sand = _local_std(silty, 5), _local_std(plain, 5)  # 5 mm windows
    measured = 0
    for i, p in enumerate(patches):
        core = margins[i] > 0.05
        for j in range(len(patches)):
            if j != i:
                core &= margins[j] < -0.05
        if core.sum() < 500:
            continue
        ratio = np.median(s_sand[core]) / np.median(s_silt[core])
        assert 0.85 * p.contrast < ratio < 1.05 * p.contrast, (p.contrast, ratio)
        assert 5.0 * 0.85 < ratio < 10.0 * 1.05
        measured += 1
    assert measured >= 3

    # The ground truth carries the mask; files without one still load.
    tiny = config.model_copy(
        update={"n_ring_cameras": 2, "image_size": (32, 24), "terrain_cell": 0.004, "texel_size": 0.004}
    )
    survey = generate_survey(tmp_path / "silt", tiny)
    twin = generate_survey(tmp_path / "twin", tiny)  # deterministic: the same bytes, noise included
    for name in ("ground_truth.npz", "calibration.json", "videos/cam0.mp4", "videos/aux.mp4"):
        assert (survey.parent / name).read_bytes() == (twin.parent / name).read_bytes(), name
    gt = load_ground_truth(survey.parent / "ground_truth.npz")
    assert gt.silt_mask is not None and gt.silt_mask.shape == gt.z.shape[1:]
    Xg, Yg = np.meshgrid(gt.x, gt.y)
    inside = np.zeros(Xg.shape, dtype=bool)
    for p in patches:
        inside |= _inside_margin(p, Xg, Yg) >= 0
    assert np.array_equal(gt.silt_mask, inside) and 0.05 < inside.mean() < 0.4
    old = tmp_path / "old.npz"
    np.savez(old, x=gt.x, y=gt.y, z=gt.z, frame_indices=gt.frame_indices)
    assert load_ground_truth(old).silt_mask is None


def test_silt_is_smooth_in_the_rendered_images():
    config = condition_config("turbid-silt", overrides={**SMALL, **BED, "image_size": (320, 240)})
    clear = config.model_copy(
        update={
            "gain_spread": 0.0,
            "white_balance_spread": 0.0,
            "vignetting": 0.0,
            "full_well": 0.0,
            "read_noise": 0.0,
            "water_attenuation": SyntheticSurveyConfig().water_attenuation,
            "backscatter": None,
        }
    )
    rig, terrain = make_rig(clear), make_terrain(clear)
    gt = GroundTruth(terrain.x, terrain.y, terrain.z, terrain.frame_indices, terrain.silt_mask)
    cam = rig["cam0"]
    image = render_view(cam, rig.interface, terrain, 0, RenderSettings.from_config(clear))
    v, u = np.mgrid[0:240, 0:320].astype(np.float64)
    hits = trace_pixels(cam, rig.interface, terrain, 0, np.stack([u.ravel(), v.ravel()], 1))
    xy = np.nan_to_num(hits.points[:, :2])
    ix = np.clip(np.round((xy[:, 0] - gt.x[0]) / 0.001), 0, gt.x.size - 1).astype(int)
    iy = np.clip(np.round((xy[:, 1] - gt.y[0]) / 0.001), 0, gt.y.size - 1).astype(int)
    silt = (gt.silt_mask[iy, ix] & hits.hit).reshape(240, 320)
    silt_core = cv2.erode(silt.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    sand_core = cv2.erode(
        (~silt & hits.hit.reshape(240, 320)).astype(np.uint8), np.ones((9, 9), np.uint8)
    ).astype(bool)
    assert silt_core.sum() > 500 and sand_core.sum() > 5000
    contrast = _local_std(image.astype(np.float32), 5)
    assert np.median(contrast[sand_core]) > 3.0 * np.median(contrast[silt_core])


# --------------------------------------------------------------------------------------------
# Steep bowers
# --------------------------------------------------------------------------------------------


def _wall_rays(
    terrain: Terrain, water_z: float, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Refracted rays (origins on the water plane, unit directions) aimed at points of the bowers'
    rims and walls from 20–65° off vertical; half of them head inwards, over the rim into the pit."""
    gt = GroundTruth(terrain.x, terrain.y, terrain.z, terrain.frame_indices)
    targets, dirs = [], []
    for k in range(n):
        b = terrain.bowers[k % len(terrain.bowers)]
        a, r = rng.uniform(0, 2 * math.pi), rng.uniform(b.pit_radius, b.radius + 2 * b.sigma)
        x, y = b.x + r * math.cos(a), b.y + r * math.sin(a)
        polar = math.radians(rng.uniform(20, 65))
        azimuth = a + math.pi + rng.uniform(-1, 1) if k % 2 else rng.uniform(0, 2 * math.pi)
        dirs.append(
            [math.sin(polar) * math.cos(azimuth), math.sin(polar) * math.sin(azimuth), math.cos(polar)]
        )
        targets.append([x, y, float(gt.height_at(0, np.array([[x, y]]))[0])])
    d, t = np.array(dirs), np.array(targets)
    keep = np.isfinite(t[:, 2])  # targets over the terrain's square
    origins = t - d * ((t[:, 2] - water_z) / d[:, 2])[:, None]
    return origins[keep], d[keep]


def test_bowers_are_steep_and_their_hits_are_exact_first_crossings():
    config = condition_config("turbid-silt", overrides={**SMALL, **BED})
    terrain = make_terrain(config)
    gt = GroundTruth(terrain.x, terrain.y, terrain.z, terrain.frame_indices)
    assert len(terrain.bowers) == 3
    # Wall slopes up to bower_max_slope (plus the bed's own roughness) on each bower.
    z = terrain.z[0]
    gy, gx = np.gradient(z, 0.001)
    slope = np.hypot(gx, gy)
    X, Y = np.meshgrid(terrain.x, terrain.y)
    for b in terrain.bowers:
        near = np.hypot(X - b.x, Y - b.y) < b.footprint
        assert 1.0 < slope[near].max() < 1.3, slope[near].max()
        assert b.height / (b.sigma * math.sqrt(2 * math.pi)) == pytest.approx(1.1)

    hf = Heightfield.from_terrain(terrain, 0)
    rng = np.random.default_rng(5)
    o, d = _wall_rays(terrain, config.water_z, 600, rng)
    s_hit, hit = hf.intersect(torch.from_numpy(o), torch.from_numpy(d))
    s_hit, hit = s_hit.numpy(), hit.numpy()
    non_monotone = hf.lipschitz * np.hypot(d[:, 0], d[:, 1]) >= d[:, 2]
    assert non_monotone.sum() > 100 and (~non_monotone).sum() > 100  # both marching schemes are used
    ds = 2e-5
    multi = 0
    for i in range(len(o)):
        s_top = (hf.zmin - 1e-6 - o[i, 2]) / d[i, 2]
        s_bot = (hf.zmax + 1e-6 - o[i, 2]) / d[i, 2]
        s = np.arange(s_top, s_bot + ds, ds)
        p = o[i] + s[:, None] * d[i]
        h = gt.height_at(0, p[:, :2])
        below = p[:, 2] >= h  # False outside the square (NaN)
        # A ray that enters the square through its side below the surface is a miss by design.
        entry = int(np.argmax(np.isfinite(h)))
        assert hit[i] == (below.any() and not below[entry]), i
        if not hit[i]:
            continue
        starts = np.nonzero(below & ~np.r_[False, below[:-1]])[0]
        multi += len(starts) > 1
        q = o[i] + s_hit[i] * d[i]
        assert abs(q[2] - gt.height_at(0, q[None, :2])[0]) < 1e-9  # on the surface
        assert not below[s < s_hit[i] - 1e-9].any()  # nothing earlier is below the surface
        assert s_hit[i] <= s[starts[0]] + 1e-9  # not after the reference's first crossing
    assert multi > 20  # rays that cross a wall more than once really are tested
