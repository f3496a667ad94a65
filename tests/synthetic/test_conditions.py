"""The real-lab conditions of the synthetic generator: the lab rig's layout and strong lenses (with
folds), the inward-tilted ring with its fisheye, and the named presets and CLI.

References are independent of the renderer: lens inverses by dense float64 sampling of the radial
polynomial, angles and distances from the calibration, points projected by the refractive camera.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from aquamvs_assets.cli import main as cli_main
from aquamvs_core.camera.calibration import CameraCalibration, load_calibration
from aquamvs_core.camera.distortion import distort_normalized, fold_limit
from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.synthetic import (
    CONDITIONS,
    GENERATOR_VERSION,
    RenderSettings,
    SyntheticSurveyConfig,
    Terrain,
    condition_config,
    lens_report,
    make_rig,
    make_terrain,
    read_config,
    render_view,
    rig_center,
    trace_pixels,
)

SMALL_TERRAIN = {"terrain_size": 0.8, "terrain_cell": 0.004, "texel_size": 0.004}


def _tilt_deg(cam: CameraCalibration) -> float:
    return math.degrees(math.acos(float(cam.R[2, 2])))


def _radial_derivative(coeffs: np.ndarray, r: np.ndarray) -> np.ndarray:
    k1, k2, _, _, k3 = coeffs[:5]
    x = r * r
    return 1 + 3 * k1 * x + 5 * k2 * x * x + 7 * k3 * x**3


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


def test_conditions_are_presets_that_combine_and_validate():
    assert condition_config("default") == SyntheticSurveyConfig()
    assert set(CONDITIONS) >= {"default", "ring", "lab-rig", "turbid-silt"}
    both = condition_config("lab-rig", "turbid-silt", seed=5, overrides={"n_frames": 1})
    assert both.rig_layout == "grid" and both.silt_patches == 6 and both.n_frames == 1 and both.seed == 5
    with pytest.raises(ValueError, match="unknown condition"):
        condition_config("murky")
    with pytest.raises(ValidationError):
        condition_config("ring", overrides={"vignetting": 2.0})
    # Conditions are deterministic per seed, and the seed matters.
    a, b = make_rig(condition_config("lab-rig")), make_rig(condition_config("lab-rig"))
    assert a.content_hash == b.content_hash
    assert make_rig(condition_config("lab-rig", seed=1)).content_hash != a.content_hash
    # Only the fields a condition changes are stored (a default survey stores none of them).
    stored = condition_config("lab-rig").stored_config()
    assert stored["rig_layout"] == "grid" and "silt_patches" not in stored


def test_the_default_survey_is_what_earlier_versions_generated():
    """Values recorded with the generator before the conditions were added (GENERATOR_VERSION 1):
    a change here changes every default survey, and must bump GENERATOR_VERSION."""
    config = SyntheticSurveyConfig(
        image_size=(160, 120),
        n_ring_cameras=4,
        n_frames=2,
        terrain_cell=0.004,
        texel_size=0.004,
        supersample=1,
    )
    assert GENERATOR_VERSION == 1
    rig = make_rig(config)
    cam1, aux = rig["cam1"], rig["aux"]
    np.testing.assert_allclose(
        [cam1.K[0, 0], cam1.K[0, 2], cam1.K[1, 2], cam1.R[0, 1]],
        [125.57484616939922, 79.74263758979255, 60.59902048878928, 0.007379581391129328],
        rtol=0,
        atol=1e-12,
    )
    np.testing.assert_allclose(
        cam1.dist_coeffs,
        [
            -0.034542798173135235,
            0.0020668853948824784,
            -0.0002466476690301188,
            -0.0004904219613380183,
            -0.0020644657149174648,
        ],
        rtol=0,
        atol=1e-15,
    )
    np.testing.assert_allclose(
        cam1.center, [-0.2975572525535884, 0.30006146143974555, -0.002549748879433031], rtol=0, atol=1e-13
    )
    np.testing.assert_allclose(
        aux.dist_coeffs,
        [0.018006684127425406, -0.0024634283432859363, 4.5178159198536725e-05, -0.0001698616793088355],
        rtol=0,
        atol=1e-15,
    )
    terrain = make_terrain(config)
    nodes = [(0, 0, 0), (1, 100, 200), (0, 175, 175), (1, 350, 17), (0, 123, 321)]
    np.testing.assert_allclose(
        [terrain.z[n] for n in nodes],
        [1.199427789391808, 1.1992023567173982, 1.205131168941645, 1.2037763406211286, 1.1965353994367929],
        rtol=0,
        atol=1e-12,
    )
    assert terrain.z.sum() == pytest.approx(295681.1307396231, rel=1e-12)
    assert terrain.texture.astype(np.float64).sum() == pytest.approx(226006.16325757653, rel=1e-6)
    image = render_view(cam1, rig.interface, terrain, 1, RenderSettings.from_config(config)).astype(int)
    assert image.mean() == pytest.approx(150.6342361111111, abs=0.01)
    assert (
        np.abs(image[60, 80] - [145, 159, 121]).max() <= 1
        and np.abs(image[10, 150] - [200, 211, 152]).max() <= 1
    )


# --------------------------------------------------------------------------------------------
# The lab rig
# --------------------------------------------------------------------------------------------


def test_lab_rig_layout_is_the_real_rigs():
    config = condition_config("lab-rig")
    rig = make_rig(config)
    assert rig.camera_names == [f"cam{i}" for i in range(12)] and not rig.auxiliary_names
    assert rig.image_size == (640, 480)
    centres = np.stack([rig[n].center for n in rig.camera_names])
    np.testing.assert_allclose(centres[0], 0.0, atol=1e-12)
    assert np.abs(centres[:, 2]).max() < 0.01
    spread = np.linalg.norm(centres[:, None, :2] - centres[None, :, :2], axis=-1)
    assert 1.1 < spread.max() < 1.25  # "up to ~1.2 m apart"
    nearest = np.sort(spread, axis=1)[:, 1]
    np.testing.assert_allclose(nearest, 0.33, atol=0.01)  # a grid
    tilts = [_tilt_deg(rig[n]) for n in rig.camera_names]
    assert min(tilts) > 0.8 and max(tilts) < 4.2  # nearly straight down
    assert rig.interface.water_z == 0.99  # below the reference camera
    assert config.bottom_z - config.water_z == pytest.approx(0.5)
    np.testing.assert_allclose(rig_center(config), [0.495, 0.33, 0.0])


def test_lab_lenses_are_strong_and_half_of_them_fold_just_outside_the_image():
    rig = make_rig(condition_config("lab-rig"))
    folding = 0
    for name in rig.camera_names:
        cam = rig[name]
        k1, k2, p1, p2, k3 = cam.dist_coeffs
        assert -0.53 <= k1 <= -0.48 and 0.25 <= k2 <= 0.33 and -0.17 <= k3 <= 0.14
        assert max(abs(p1), abs(p2)) <= 1e-3
        report = lens_report(cam, step=8)
        # Independent fold angle: the first zero of the radial derivative, by dense sampling.
        r = np.tan(np.radians(np.linspace(0.0, 80.0, 160001)))
        bad = _radial_derivative(cam.dist_coeffs, r) <= 0
        if bad.any():
            folding += 1
            fold_deg = math.degrees(math.atan(r[np.argmax(bad)]))
            assert 45.0 <= fold_deg <= 48.0, name
            assert report.fold_deg == pytest.approx(fold_deg, abs=1e-3)
            assert math.degrees(math.atan(fold_limit(cam.dist_coeffs, False))) == pytest.approx(
                fold_deg, abs=1e-3
            )
            # Just outside the image: the corners are within a few degrees of the fold...
            assert 2.0 < fold_deg - report.corner_deg < 8.0, name
            # ...and the polynomial maps points beyond the fold (7° beyond, towards a corner) back into
            # the image: a projection without a fold guard would "see" them.
            w, h = cam.image_size
            corner = np.array([w - 0.5 - cam.K[0, 2], h - 0.5 - cam.K[1, 2]])
            far = math.tan(math.radians(fold_deg + 7.0)) * corner / np.linalg.norm(corner)
            xy_d = distort_normalized(torch.from_numpy(far[None]), cam.dist_coeffs, False)[0].numpy()
            u, v = cam.K[0, 0] * xy_d[0] + cam.K[0, 2], cam.K[1, 1] * xy_d[1] + cam.K[1, 2]
            assert -0.5 < u < w - 0.5 and -0.5 < v < h - 0.5, name
        else:
            assert not math.isfinite(report.fold_deg) and k3 >= 0
        # Every pixel lies inside the valid range; the worst corner is where the lens flattens.
        assert report.valid_fraction == 1.0
        assert 0.15 < _radial_derivative(cam.dist_coeffs, np.tan(np.radians(report.corner_deg))) < 0.9
        # Undistorting onto the calibrated K keeps ~78-79 % of the original image, as on the real rig.
        assert 0.76 < report.kept_by_undistortion < 0.81, name
    assert folding == 6


def _radial_lens(cam: CameraCalibration, hfov_deg: float, size: tuple[int, int]) -> CameraCalibration:
    """``cam`` without tangential terms, its image widened so that the corners lie beyond the fold."""
    coeffs = cam.dist_coeffs.copy()
    coeffs[2:4] = 0.0
    r_edge = math.tan(math.radians(hfov_deg / 2))
    k1, k2, _, _, k3 = coeffs
    scale = 1 + k1 * r_edge**2 + k2 * r_edge**4 + k3 * r_edge**6
    f = (size[0] / 2) / (r_edge * scale)
    K = np.array([[f, 0.0, (size[0] - 1) / 2], [0.0, f, (size[1] - 1) / 2], [0.0, 0.0, 1.0]])
    return CameraCalibration(cam.name, K, coeffs, size, cam.R, cam.t)


def test_renderer_traces_only_the_pre_fold_inverse_and_misses_beyond_the_fold():
    config = condition_config("lab-rig", overrides=SMALL_TERRAIN)
    rig = make_rig(config)
    folding = [n for n in rig.camera_names if math.isfinite(fold_limit(rig[n].dist_coeffs, False))]
    cam = _radial_lens(rig[folding[0]], 88.0, (96, 72))
    k1, k2, _, _, k3 = cam.dist_coeffs
    # Independent reference: the radial map r -> r c(r²) on a dense float64 grid up to the fold.
    r = np.linspace(0.0, 1.5, 1_500_001)
    rd = r * (1 + k1 * r**2 + k2 * r**4 + k3 * r**6)
    fold = int(np.argmax(_radial_derivative(cam.dist_coeffs, r) <= 0))
    assert 0 < fold < r.size - 1
    rd_max = rd[fold]
    c = rig_center(config)
    terrain = Terrain.flat(config.bottom_z, center=(float(c[0]), float(c[1])), size=6.0, cell=0.05)
    v, u = np.mgrid[0:72, 0:96].astype(np.float64)
    pixels = np.stack([u.ravel(), v.ravel()], 1)
    hits = trace_pixels(cam, rig.interface, terrain, 0, pixels)
    r_d = np.hypot(pixels[:, 0] - cam.K[0, 2], pixels[:, 1] - cam.K[1, 2]) / cam.K[0, 0]
    beyond, within = r_d > rd_max * (1 + 1e-6), r_d < rd_max * (1 - 1e-3)
    assert beyond.mean() > 0.05 and within.mean() > 0.8  # the corners are beyond the fold
    assert not hits.hit[beyond].any()
    assert hits.hit[within].all()
    # Each hit lies on the ray of the pre-fold root: its ideal projection has the reference radius.
    rc = RefractiveCamera.from_calibration(cam, rig.interface)
    uv, ok = rc.project(torch.from_numpy(hits.points[within]))
    assert ok.all()
    r_ideal = np.hypot(uv[:, 0].numpy() - cam.K[0, 2], uv[:, 1].numpy() - cam.K[1, 2]) / cam.K[0, 0]
    r_ref = np.interp(r_d[within], rd[: fold + 1], r[: fold + 1])
    np.testing.assert_allclose(r_ideal, r_ref, atol=1e-6)
    assert r_ideal.max() < r[fold]
    # The rendered image shows exactly the miss colour beyond the fold.
    settings = RenderSettings(supersample=1)
    image = render_view(cam, rig.interface, terrain, 0, settings).reshape(-1, 3)
    miss = np.round(np.array(settings.miss_colour) * 255)
    assert np.all(image[beyond] == miss)
    assert np.all(np.abs(image[within].astype(float) - miss).max(axis=1) > 10)
    assert lens_report(cam, step=1).valid_fraction == pytest.approx(1 - beyond.mean(), abs=0.01)


# --------------------------------------------------------------------------------------------
# The inward-tilted ring with a central fisheye
# --------------------------------------------------------------------------------------------


def test_ring_condition_tilts_inward_and_its_fisheye_sees_the_centre():
    config = condition_config("ring", overrides=SMALL_TERRAIN)
    rig = make_rig(config)
    assert rig.primary_names == [f"cam{i}" for i in range(12)] and rig.auxiliary_names == ["aux"]
    assert rig.image_size == (800, 600) and rig["aux"].is_fisheye
    centre = rig_center(config)
    for name in rig.primary_names:
        cam = rig[name]
        assert abs(_tilt_deg(cam) - 24.0) < 1.5
        assert np.dot(cam.R[2, :2], (centre - cam.center)[:2]) > 0  # tilted towards the centre
        assert abs(np.hypot(*(cam.center - centre)[:2]) - 0.55) < 0.01
    assert _tilt_deg(rig["aux"]) < 1.5
    # The bed below the rig centre: every camera sees it, the fisheye near its image centre, and
    # tracing that pixel back lands on the point.
    terrain = Terrain.flat(config.bottom_z, center=(float(centre[0]), float(centre[1])), size=3.0)
    point = np.array([[centre[0], centre[1], config.bottom_z]])
    for name in rig.camera_names:
        cam = rig[name]
        rc = RefractiveCamera.from_calibration(cam, rig.interface)
        uv, ok = rc.project(torch.from_numpy(point))
        xy = (uv.numpy() - cam.K[:2, 2]) / np.diag(cam.K)[:2]
        xy_d = distort_normalized(torch.from_numpy(xy), cam.dist_coeffs, cam.is_fisheye).numpy()
        pixel = xy_d * np.diag(cam.K)[:2] + cam.K[:2, 2]
        w, h = cam.image_size
        assert ok.all() and 0 <= pixel[0, 0] < w and 0 <= pixel[0, 1] < h, name
        if name == "aux":
            assert np.abs(pixel[0] - [w / 2, h / 2]).max() < 0.05 * w
        back = trace_pixels(cam, rig.interface, terrain, 0, pixel)
        assert back.hit.all() and np.abs(back.points - point).max() < 1e-6, name


# --------------------------------------------------------------------------------------------
# The CLI
# --------------------------------------------------------------------------------------------


def test_generate_cli_writes_a_condition_survey(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "lab"
    args = ["generate", str(out), "--condition", "lab-rig", "--size", "64x48", "--frames", "1", "--seed", "3"]
    args += ["--set", "terrain_cell=0.01", "--set", "texel_size=0.005", "--set", "supersample=1"]
    assert cli_main(args) == 0
    expected = condition_config(
        "lab-rig",
        seed=3,
        overrides={
            "image_size": (64, 48),
            "n_frames": 1,
            "terrain_cell": 0.01,
            "texel_size": 0.005,
            "supersample": 1,
        },
    )
    assert read_config(out) == expected
    rig = load_calibration(out / "calibration.json")
    assert rig.content_hash == make_rig(expected).content_hash
    assert sorted(p.stem for p in (out / "videos").iterdir()) == sorted(rig.camera_names)
    assert cli_main(["generate", str(tmp_path / "bad"), "--set", "vignetting=5"]) == 2
    assert cli_main(["generate", str(tmp_path / "bad"), "--set", "nonsense"]) == 2
    assert "vignetting" in capsys.readouterr().err
