"""The synthetic survey generator: rig, terrain, exact refractive ray tracing, files on disk.

Geometry is checked against independent computations: the hit of every traced pixel must lie on
the ground-truth surface (bilinear interpolation of ``ground_truth.npz``) and project back to the
pixel through the refractive projection and the forward lens model; on a flat bottom the hits must
equal the analytic ray–plane intersection of the independent reference camera
(``geometry_reference``); with occluding ridges the hit must be the first crossing found by a
brute-force fine march.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from aquamvs_core.camera.calibration import load_calibration, save_calibration
from aquamvs_core.camera.distortion import distort_normalized
from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.survey import Survey, load_survey_spec
from aquamvs_core.synthetic import (
    GENERATOR_NAME,
    GroundTruth,
    RenderSettings,
    SyntheticSurveyConfig,
    SyntheticSurveyMismatch,
    Terrain,
    generate_survey,
    load_ground_truth,
    make_rig,
    make_terrain,
    pixel_rays,
    read_config,
    render_frames,
    render_view,
    ring_center,
    trace_pixels,
)
from aquamvs_core.synthetic.config import CONDITION_FIELDS
from aquamvs_core.synthetic.texture import make_texture

try:  # run from the repository root with tests/ as a package or as a plain folder
    from tests import geometry_reference as ref
except ImportError:
    import geometry_reference as ref

SMALL = SyntheticSurveyConfig(
    image_size=(160, 120), n_ring_cameras=4, n_frames=2, terrain_cell=0.002, texel_size=0.002
)
TINY = SyntheticSurveyConfig(
    image_size=(64, 48), n_ring_cameras=2, n_frames=2, terrain_cell=0.004, texel_size=0.004, supersample=1
)


def _with(config: SyntheticSurveyConfig, **changes: object) -> SyntheticSurveyConfig:
    return SyntheticSurveyConfig(**{**config.model_dump(), **changes})


@pytest.fixture(scope="module")
def small_survey(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_survey(tmp_path_factory.mktemp("synthetic") / "small", SMALL)


@pytest.fixture(scope="module")
def small_terrain() -> Terrain:
    return make_terrain(SMALL)


def _reproject(cam, interface, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distorted pixels of world points: exact refractive projection, then the forward lens model."""
    rc = RefractiveCamera.from_calibration(cam, interface)
    uv, ok = rc.project(torch.from_numpy(points))
    K = torch.from_numpy(cam.K)
    y = (uv[:, 1] - K[1, 2]) / K[1, 1]
    x = (uv[:, 0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
    xy_d = distort_normalized(torch.stack([x, y], 1), cam.dist_coeffs, cam.is_fisheye)
    u = K[0, 0] * xy_d[:, 0] + K[0, 1] * xy_d[:, 1] + K[0, 2]
    v = K[1, 1] * xy_d[:, 1] + K[1, 2]
    return torch.stack([u, v], 1).numpy(), ok.numpy()


def _random_pixels(rng: np.random.Generator, size: tuple[int, int], n: int) -> np.ndarray:
    w, h = size
    return np.stack([rng.uniform(-0.5, w - 0.5, n), rng.uniform(-0.5, h - 0.5, n)], axis=1)


# --------------------------------------------------------------------------------------------
# Configuration and rig
# --------------------------------------------------------------------------------------------


def test_config_defaults_and_validation():
    c = SyntheticSurveyConfig()
    assert (c.seed, c.n_ring_cameras, c.image_size, c.n_frames) == (0, 8, (640, 480), 3)
    assert (c.water_z, c.bottom_z, c.n_air, c.n_water) == (0.70, 1.20, 1.0, 1.333)
    assert c.lossless_video and c.supersample == 2
    for bad in (
        {"image_size": (641, 480)},
        {"bottom_z": 0.75},
        {"n_water": 0.9},
        {"supersample": 0},
        {"terrain_cell": 1e-5},
        {"no_such_field": 1},
    ):
        with pytest.raises(ValidationError):
            SyntheticSurveyConfig(**bad)


def test_default_rig_geometry(tmp_path):
    config = SyntheticSurveyConfig()
    rig = make_rig(config)
    assert rig.camera_names == [f"cam{i}" for i in range(8)] + ["aux"]
    assert rig.auxiliary_names == ["aux"]
    aux = rig["aux"]
    assert aux.is_fisheye and aux.dist_coeffs.shape == (4,)
    assert np.abs(aux.dist_coeffs).max() < 0.05
    np.testing.assert_allclose(rig["cam0"].center, 0.0, atol=1e-12)  # origin at the reference camera
    center = ring_center(config)
    for name in rig.primary_names:
        cam = rig[name]
        assert not cam.is_fisheye and cam.dist_coeffs.shape == (5,)
        k1, _, p1, p2, _ = cam.dist_coeffs
        assert 0 < abs(k1) <= 0.05 and max(abs(p1), abs(p2)) <= 1e-3
        c = cam.center
        assert abs(c[2]) < 0.02 < config.water_z
        assert abs(np.hypot(*(c - center)[:2]) - config.ring_radius) < 0.01
        axis = cam.R[2]  # optical axis in world coordinates
        tilt = math.degrees(math.acos(axis[2]))
        assert abs(tilt - config.ring_tilt_deg) < 1.5
        assert np.dot(axis[:2], (center - c)[:2]) > 0  # tilted towards the ring centre
        hfov = 2 * math.degrees(math.atan(cam.image_size[0] / 2 / cam.K[0, 0]))
        assert 60 <= hfov <= 70
    # Round trip through AquaCal JSON keeps the geometry (hash) and the generator metadata.
    loaded = load_calibration(save_calibration(rig, tmp_path / "calibration.json"))
    assert loaded.content_hash == rig.content_hash
    assert loaded.extra["metadata"]["generator"] == GENERATOR_NAME
    stored = loaded.extra["metadata"]["config"]
    assert SyntheticSurveyConfig.model_validate(stored) == config
    # The default survey stores no condition field, so its files are those of earlier versions.
    assert not set(stored) & CONDITION_FIELDS
    assert set(stored) | CONDITION_FIELDS == set(SyntheticSurveyConfig.model_fields)


# --------------------------------------------------------------------------------------------
# The generated survey
# --------------------------------------------------------------------------------------------


def test_generated_survey_structure(small_survey: Path):
    root = small_survey.parent
    assert sorted(p.name for p in root.iterdir()) == [
        "calibration.json",
        "ground_truth.npz",
        "survey.yaml",
        "videos",
    ]
    assert [p.name for p in root.parent.iterdir()] == [root.name]  # no temporary leftovers
    spec = load_survey_spec(small_survey)
    assert spec.name == "synthetic-demo"
    assert spec.calibration == root / "calibration.json" and spec.inputs == root / "videos"
    assert spec.store == str(root / "store.zarr") and spec.ground_truth == root / "ground_truth.npz"

    rig = load_calibration(spec.calibration)
    assert rig.camera_names == ["cam0", "cam1", "cam2", "cam3", "aux"]
    assert rig.auxiliary_names == ["aux"] and rig["aux"].is_fisheye
    assert rig.interface.water_z == SMALL.water_z
    assert all(rig[n].center[2] < rig.interface.water_z for n in rig.camera_names)
    meta = json.loads(spec.calibration.read_text())["metadata"]
    assert meta["generator"] == GENERATOR_NAME and meta["seed"] == SMALL.seed
    assert read_config(root) == SMALL

    gt = load_ground_truth(spec.ground_truth)
    assert gt.z.dtype == np.float64 and gt.z.shape == (2, gt.y.size, gt.x.size)
    assert gt.frame_indices.tolist() == [0, 1]
    assert abs(gt.z[0].mean() - SMALL.bottom_z) < 1e-9
    assert np.all(gt.z > SMALL.water_z + 0.4)

    with Survey.open(spec) as survey:
        assert survey.num_frames == 2 and survey.frame_indices == [0, 1]


def test_videos_decode_to_the_rendered_frames(small_survey: Path, small_terrain: Terrain):
    spec = load_survey_spec(small_survey)
    gt = load_ground_truth(spec.ground_truth)
    assert np.array_equal(gt.z, small_terrain.z)  # same config → same ground truth
    settings = RenderSettings.from_config(SMALL)
    with Survey.open(spec) as survey:
        decoded = [survey.read_frame(i) for i in range(survey.num_frames)]
        for name, cam in survey.rig.cameras.items():
            rendered = list(render_frames(cam, survey.rig.interface, small_terrain, [0, 1], settings))
            for i, image in enumerate(rendered):
                assert image.shape == (120, 160, 3) and image.dtype == np.uint8
                assert np.array_equal(decoded[i][name], image), f"{name} frame {i}"


def test_determinism(small_terrain: Terrain):
    again = make_terrain(SMALL)
    assert again.z.tobytes() == small_terrain.z.tobytes()
    assert again.texture.tobytes() == small_terrain.texture.tobytes()
    rig = make_rig(SMALL)
    cam = rig["cam1"]
    a = render_view(cam, rig.interface, small_terrain, 1)
    b = render_view(cam, rig.interface, again, 1)
    assert a.tobytes() == b.tobytes()

    other_cfg = _with(SMALL, seed=1)
    other = make_terrain(other_cfg)
    other_rig = make_rig(other_cfg)
    assert np.abs(other.z - small_terrain.z).max() > 1e-3
    assert not np.array_equal(other.texture, small_terrain.texture)
    assert other_rig.content_hash != rig.content_hash
    c = render_view(other_rig["cam1"], other_rig.interface, other, 1)
    assert np.mean(np.abs(c.astype(int) - a.astype(int))) > 5


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def test_hits_lie_on_the_ground_truth_and_reproject_to_their_pixel(
    small_survey: Path, small_terrain: Terrain
):
    spec = load_survey_spec(small_survey)
    rig = load_calibration(spec.calibration)  # the calibration as written (JSON round trip)
    gt = load_ground_truth(spec.ground_truth)
    rng = np.random.default_rng(7)
    for name, cam in rig.cameras.items():
        pixels = _random_pixels(rng, cam.image_size, 400)
        for frame in (0, 1):
            hits = trace_pixels(cam, rig.interface, small_terrain, frame, pixels)
            assert hits.hit.mean() > (0.5 if cam.is_auxiliary else 0.9), name
            p = hits.points[hits.hit]
            assert np.all(np.isnan(hits.points[~hits.hit]))
            on_surface = np.abs(p[:, 2] - gt.height_at(frame, p[:, :2]))
            assert on_surface.max() < 1e-6, f"{name}: |Z - h| = {on_surface.max():.2e} m"
            # Ray depth is the distance from the water surface along the refracted ray.
            assert np.all(hits.ray_depth[hits.hit] > p[:, 2] - rig.interface.water_z - 1e-12)
            uv, ok = _reproject(cam, rig.interface, p)
            assert ok.all()
            err = np.linalg.norm(uv - pixels[hits.hit], axis=1)
            assert err.max() < 1e-3, f"{name}: reprojection error {err.max():.2e} px"


def test_flat_bottom_hits_equal_the_analytic_ray_plane_intersection():
    config = _with(SMALL, lens_distortion=False)
    rig = make_rig(config)
    z0 = 1.15
    terrain = Terrain.flat(z0, center=tuple(ring_center(config)[:2]), size=2.4, cell=0.01)
    rng = np.random.default_rng(3)
    iface = rig.interface
    for name, cam in rig.cameras.items():
        pixels = _random_pixels(rng, cam.image_size, 300)
        hits = trace_pixels(cam, iface, terrain, 0, pixels)
        assert hits.hit.all(), name
        K = cam.K
        if cam.is_fisheye:  # equidistant model without distortion: r_ideal = tan(r_distorted)
            xy_d = np.stack([(pixels[:, 0] - K[0, 2]) / K[0, 0], (pixels[:, 1] - K[1, 2]) / K[1, 1]], 1)
            r_d = np.linalg.norm(xy_d, axis=1, keepdims=True)
            xy = xy_d * np.tan(r_d) / r_d
            ideal = np.stack([K[0, 0] * xy[:, 0] + K[0, 2], K[1, 1] * xy[:, 1] + K[1, 2]], 1)
        else:
            ideal = pixels
        reference = ref.RefCamera(
            K=K, R=cam.R, C=cam.center, water_z=iface.water_z, n_air=iface.n_air, n_water=iface.n_water
        )
        o, d = reference.cast_ray(ideal)
        expected = o + d * ((z0 - iface.water_z) / d[:, 2])[:, None]
        np.testing.assert_allclose(hits.points, expected, rtol=0, atol=1e-9, err_msg=name)


def _ridged_terrain(center: np.ndarray) -> Terrain:
    """Flat bottom with steep, 3 cm high ridges (slope 10) that hide what lies behind them."""
    cell = 0.002
    n = 800
    x = center[0] - 0.8 + cell * np.arange(n + 1)
    y = center[1] - 0.8 + cell * np.arange(n + 1)
    X, Y = np.meshgrid(x, y)
    ridge_x = np.clip((0.012 - np.abs(((X - x[0]) % 0.06) - 0.03)) / 0.003, 0, 1)
    ridge_y = np.clip((0.008 - np.abs(((Y - y[0]) % 0.09) - 0.045)) / 0.003, 0, 1)
    z = 1.2 - 0.03 * np.maximum(ridge_x, ridge_y)
    texture = np.full((2, 2, 3), 0.5, dtype=np.float32)
    return Terrain(
        x=x,
        y=y,
        z=z[None],
        frame_indices=np.array([0]),
        texture=texture,
        texture_origin=(float(x[0]), float(y[0])),
        texel_size=0.6,
    )


def test_hit_is_the_first_crossing_with_occlusions():
    config = _with(SMALL, ring_tilt_deg=25.0)
    rig = make_rig(config)
    terrain = _ridged_terrain(ring_center(config))
    gt = GroundTruth(terrain.x, terrain.y, terrain.z, terrain.frame_indices)
    cam = rig["cam0"]
    rng = np.random.default_rng(11)
    # Pixels looking at the ridged square.
    pixels = _random_pixels(rng, cam.image_size, 400)
    hits = trace_pixels(cam, rig.interface, terrain, 0, pixels)
    rays = pixel_rays(cam, rig.interface, pixels)
    o, d = rays.origins.numpy(), rays.directions.numpy()
    s_top = (terrain.z.min() - 1e-6 - o[:, 2]) / d[:, 2]
    s_bot = (terrain.z.max() + 1e-6 - o[:, 2]) / d[:, 2]
    ds = 2e-5
    compared = multi = occluded = 0
    for i in np.nonzero(hits.hit)[0]:
        s = np.arange(s_top[i], s_bot[i] + ds, ds)
        p = o[i] + s[:, None] * d[i]
        h = gt.height_at(0, p[:, :2])
        if np.isnan(h).any():
            continue  # leaves the square within the band
        below = p[:, 2] >= h
        starts = np.nonzero(below & ~np.r_[False, below[:-1]])[0]
        compared += 1
        multi += len(starts) > 1
        k = starts[0]
        # The hit is on the surface, nothing before it is below the surface, and it is not after the
        # first crossing of the dense float64 sampling (it may be a graze shorter than its step).
        hit_point = hits.points[i]
        assert abs(hit_point[2] - gt.height_at(0, hit_point[None, :2])[0]) < 1e-9
        assert not below[s < hits.ray_depth[i] - 1e-9].any(), f"pixel {pixels[i]}"
        assert hits.ray_depth[i] <= s[k] + 1e-9, f"pixel {pixels[i]}"
        # Was something hidden? The last crossing is farther along the ray than the first.
        occluded += len(starts) > 1 and s[starts[-1]] - s[k] > 0.005
    assert compared > 300
    assert multi > 30 and occluded > 30  # the scene really has rays with several crossings


# --------------------------------------------------------------------------------------------
# Appearance and dynamics
# --------------------------------------------------------------------------------------------


def test_texture_has_fine_detail_and_views_overlap(small_survey: Path, small_terrain: Terrain):
    spec = load_survey_spec(small_survey)
    miss = np.round(np.array(RenderSettings().miss_colour) * 255)
    with Survey.open(spec) as survey:
        rig = survey.rig
        images = survey.read_frame(0)
    for name, img in images.items():
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float64)
        mean = cv2.blur(gray, (5, 5))
        std = np.sqrt(np.maximum(cv2.blur(gray * gray, (5, 5)) - mean * mean, 0))
        bottom = np.abs(img.astype(float) - miss).max(axis=2) > 3
        assert bottom.mean() > (0.5 if rig[name].is_auxiliary else 0.9), name
        inner = cv2.erode(bottom.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        assert np.mean(std[inner] > 3.0) > 0.9, f"{name}: texture too flat"

    # The bottom below the rig centre is seen, well inside the image, by every ring camera.
    gt = GroundTruth(small_terrain.x, small_terrain.y, small_terrain.z, small_terrain.frame_indices)
    c = ring_center(SMALL)
    point = np.array([[c[0], c[1], gt.height_at(0, c[None, :2])[0]]])
    for name in rig.primary_names:
        cam = rig[name]
        uv, ok = _reproject(cam, rig.interface, point)
        w, h = cam.image_size
        assert ok.all() and 0.2 * w < uv[0, 0] < 0.8 * w and 0.2 * h < uv[0, 1] < 0.8 * h, name
        back = trace_pixels(cam, rig.interface, small_terrain, 0, uv)
        assert back.hit.all() and np.abs(back.points - point).max() < 1e-6, name


def test_demo_texture_resolves_millimetres():
    config = _with(SyntheticSurveyConfig(), terrain_size=0.2)
    texture, _, texel = make_texture(config)
    assert texel == 0.0005 and texture.shape == (401, 401, 3)
    assert texture.min() > 0.0 and texture.max() < 1.0
    lum = texture.mean(axis=2).astype(np.float64)
    # Contrast at the scale of a few millimetres (what a 640x480 pixel, ~2 mm, and NCC windows see).
    k = round(0.004 / texel)
    mean = cv2.blur(lum, (k, k))
    std = np.sqrt(np.maximum(cv2.blur(lum * lum, (k, k)) - mean * mean, 0))
    assert np.median(std) > 0.02
    assert np.median(np.abs(np.diff(cv2.blur(lum, (3, 3))[:, ::4], axis=1))) > 0.005


def test_bottom_changes_a_little_between_frames(small_terrain: Terrain):
    z = small_terrain.z
    step = np.abs(np.diff(z, axis=0)).max(axis=(1, 2))
    assert np.all(step > 2e-4) and np.all(step < 5e-3), step
    assert abs(z[1].mean() - z[0].mean()) < 1e-4
    c = small_terrain.crater
    assert c is not None
    gt = GroundTruth(small_terrain.x, small_terrain.y, z, small_terrain.frame_indices)
    centre = np.array([[c.x, c.y]])
    assert gt.height_at(1, centre)[0] > gt.height_at(0, centre)[0] + 5e-4  # the nest deepens


def test_ground_truth_height_at():
    x = np.array([0.0, 0.1, 0.2])
    y = np.array([1.0, 1.2])
    z = np.array([[[1.0, 2.0, 4.0], [3.0, 5.0, 7.0]]])
    gt = GroundTruth(x, y, z, np.array([5]))
    nodes = np.array([[0.0, 1.0], [0.2, 1.2], [0.1, 1.2]])
    np.testing.assert_allclose(gt.height_at(5, nodes), [1.0, 7.0, 5.0], atol=1e-12)
    np.testing.assert_allclose(gt.height_at(5, np.array([[0.05, 1.1]])), [2.75], atol=1e-12)
    assert np.isnan(gt.height_at(5, np.array([[0.3, 1.1], [0.1, 0.9]]))).all()
    with pytest.raises(KeyError):
        gt.height_at(0, nodes)


# --------------------------------------------------------------------------------------------
# Writing: reuse, mismatch, overwrite, atomicity
# --------------------------------------------------------------------------------------------


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_reuses_checks_and_overwrites(tmp_path: Path):
    out = tmp_path / "survey"
    path = generate_survey(out, TINY)
    assert path == out / "survey.yaml"
    before = _tree_bytes(out)
    mtime = (out / "videos" / "cam0.mp4").stat().st_mtime_ns

    assert generate_survey(out, TINY) == path  # reused, not regenerated
    assert (out / "videos" / "cam0.mp4").stat().st_mtime_ns == mtime
    with pytest.raises(SyntheticSurveyMismatch, match=r"seed.*overwrite"):
        generate_survey(out, _with(TINY, seed=3))

    generate_survey(out, TINY, overwrite=True)  # same seed: byte-identical files
    assert _tree_bytes(out) == before
    generate_survey(out, _with(TINY, seed=3), overwrite=True)
    assert read_config(out).seed == 3
    assert [p.name for p in tmp_path.iterdir()] == ["survey"]

    (out / "videos" / "aux.mp4").unlink()
    with pytest.raises(SyntheticSurveyMismatch, match="incomplete"):
        generate_survey(out, _with(TINY, seed=3))

    other = tmp_path / "not-a-survey"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_survey(other, TINY)
    with pytest.raises(FileExistsError):
        generate_survey(other, TINY, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"


def test_interrupted_generation_leaves_no_survey(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import aquamvs_core.synthetic.generate as gen

    real = gen.write_video
    calls = []

    def failing_write_video(path, frames, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(path, frames, **kwargs)

    monkeypatch.setattr(gen, "write_video", failing_write_video)
    out = tmp_path / "survey"
    with pytest.raises(RuntimeError, match="disk full"):
        generate_survey(out, TINY, workers=1)
    assert list(tmp_path.iterdir()) == []

    # A previous complete survey survives a failed overwrite untouched.
    monkeypatch.setattr(gen, "write_video", real)
    generate_survey(out, TINY)
    before = _tree_bytes(out)
    calls.clear()
    monkeypatch.setattr(gen, "write_video", failing_write_video)
    with pytest.raises(RuntimeError):
        generate_survey(out, TINY, overwrite=True, workers=1)
    assert _tree_bytes(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["survey"]
    shutil.rmtree(out)
