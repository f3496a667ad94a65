"""A refractive camera on its original pixel grid with a strongly distorted lens (the real lab rig's
k1 ≈ −0.5, k2 ≈ 0.3, k3 ≈ −0.17), against independent references: OpenCV's lens models and the
float64 Snell / Fermat references of ``geometry_reference``; the fold guard of every projection;
and the undistortion canvas that keeps every original pixel."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from aquamvs_core.camera.calibration import CameraCalibration, Interface, Rig
from aquamvs_core.camera.distortion import fold_limit, undistorted_intrinsics
from aquamvs_core.camera.lens import Lens
from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.camera.sampling import pixel_grid
from aquamvs_core.stages.ingest import Undistorter, full_canvas
from aquamvs_core.stages.sparse.depth_ranges import DepthRangeConfig, camera_depth_ranges

try:  # run from the repository root with tests/ as a package or as a plain folder
    from tests import geometry_reference as ref
except ImportError:
    import geometry_reference as ref

W, H = 640, 480
DIST = np.array([-0.5, 0.3, 0.0008, -0.0011, -0.17])
K = np.array([[652.0, 0.0, 321.3], [0.0, 650.8, 238.1], [0.0, 0.0, 1.0]])
WATER_Z = 0.99
STOP = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 500, 1e-16)


def reference_camera(tilt_deg: float = 3.0) -> ref.RefCamera:
    R_cw = ref.camera_to_world_rotation(0.3, math.radians(tilt_deg), 1.1)
    return ref.RefCamera(K=K, R=R_cw.T, C=np.array([0.05, -0.02, 0.0]), water_z=WATER_Z, size=(W, H))


def calibration(rc: ref.RefCamera, name: str = "cam0") -> CameraCalibration:
    return CameraCalibration(name, rc.K, DIST, (W, H), rc.R, rc.t)


def lens_camera(rc: ref.RefCamera) -> RefractiveCamera:
    return RefractiveCamera.from_calibration(calibration(rc), Interface(WATER_Z), with_lens=True)


def cv_undistort(pixels: np.ndarray) -> np.ndarray:
    """OpenCV's iterative undistortion, run to convergence, as ideal pixels of K."""
    return cv2.undistortPoints(pixels[:, None, :], K, DIST, P=K, criteria=STOP)[:, 0]


def cv_project_camera_frame(p_cam: np.ndarray) -> np.ndarray:
    """OpenCV's forward lens model (unguarded) of camera-frame points."""
    return cv2.projectPoints(p_cam, np.zeros(3), np.zeros(3), K, DIST)[0][:, 0]


def test_the_lens_folds_just_outside_the_image() -> None:
    lens = Lens(DIST, fisheye=False)
    assert lens.fold == pytest.approx(fold_limit(DIST, False))
    corners = np.array([[-0.5, -0.5], [W - 0.5, -0.5], [-0.5, H - 0.5], [W - 0.5, H - 0.5]])
    ideal = (cv_undistort(corners) - K[:2, 2]) / np.diag(K)[:2]
    corner_angle = np.degrees(np.arctan(np.linalg.norm(ideal, axis=1)))
    # The corners are 39–40° off axis and the model folds at 43.6°: a few degrees further out.
    assert corner_angle.max() < lens.fold_angle_deg < corner_angle.max() + 6.0


def test_cast_ray_of_every_pixel_matches_opencv_and_snell() -> None:
    rc = reference_camera()
    cam = lens_camera(rc)
    pixels = pixel_grid(W, H, dtype=torch.float64).reshape(-1, 2)
    o, d, ok = cam.cast_ray(pixels)
    assert bool(ok.all())
    sample = np.random.default_rng(3).choice(pixels.shape[0], 4000, replace=False)
    # The corners (strongest distortion) always, plus a random sample.
    corners = [0, W - 1, (H - 1) * W, H * W - 1]
    idx = np.r_[corners, sample]
    ideal = cv_undistort(pixels.numpy()[idx])
    o_ref, d_ref = rc.cast_ray(ideal)
    np.testing.assert_allclose(o.numpy()[idx], o_ref, atol=1e-9)
    np.testing.assert_allclose(d.numpy()[idx], d_ref, atol=1e-9)


def test_project_matches_fermat_and_opencv() -> None:
    rc = reference_camera()
    cam = lens_camera(rc)
    rng = np.random.default_rng(11)
    pixels = np.stack([rng.uniform(-0.5, W - 0.5, 3000), rng.uniform(-0.5, H - 0.5, 3000)], -1)
    o, d, _ = cam.cast_ray(torch.from_numpy(pixels))
    points = (o + torch.from_numpy(rng.uniform(0.2, 1.0, 3000))[:, None] * d).numpy()
    # Independent: the crossing by bisection on Fermat's principle, then OpenCV's lens model.
    crossing = rc.fermat_crossing(points)
    expected = cv_project_camera_frame((rc.R @ (crossing - rc.C).T).T)
    uv, valid = cam.project(torch.from_numpy(points))
    assert bool(valid.all())
    np.testing.assert_allclose(uv.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(uv.numpy(), pixels, atol=1e-7)  # and back to the pixel cast


@pytest.mark.parametrize("dtype, tol_px", [(torch.float64, 1e-8), (torch.float32, 2e-3)])
def test_round_trip_of_every_pixel(dtype: torch.dtype, tol_px: float) -> None:
    cam = lens_camera(reference_camera(tilt_deg=8.0))
    pixels = pixel_grid(W, H, dtype=dtype)
    o, d, ok = cam.cast_ray(pixels)
    uv, valid, o2, d2 = cam.project_rays(o + 0.6 * d)
    assert bool(ok.all()) and bool(valid.all())
    assert float((uv - pixels).abs().max()) < tol_px
    # project_rays returns the ray cast_ray gives for the projected pixel.
    assert float((o2 - o).abs().max()) < 1e3 * tol_px * 1e-3
    assert float((d2 - d).abs().max()) < 1e3 * tol_px * 1e-3


def beyond_fold_points(
    rc: ref.RefCamera, angles_deg: list[float], depth_m: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Underwater points ``depth_m`` below the water whose air ray leaves the camera at ``angles_deg``
    off axis towards the image corner, and where OpenCV's unguarded lens model puts them."""
    corner = (np.array([W - 1.0, H - 1.0]) - K[:2, 2]) / np.diag(K)[:2]
    azimuth = corner / np.linalg.norm(corner)
    points, pixels = [], []
    for a in angles_deg:
        xy = math.tan(math.radians(a)) * azimuth
        d_cam = np.array([xy[0], xy[1], 1.0])
        pixels.append(cv_project_camera_frame(d_cam[None])[0])
        d_world = rc.R.T @ d_cam
        d_world /= np.linalg.norm(d_world)
        lam = (rc.water_z - rc.C[2]) / d_world[2]
        q = rc.C + lam * d_world
        sin_w = math.sin(math.acos(d_world[2])) / ref.N_WATER
        horiz = d_world[:2] / np.linalg.norm(d_world[:2])
        d_water = np.array([*(sin_w * horiz), math.sqrt(1 - sin_w * sin_w)])
        points.append(q + depth_m / d_water[2] * d_water)
    return np.array(points), np.array(pixels)


def test_point_beyond_the_fold_is_invalid_not_a_wrong_pixel() -> None:
    rc = reference_camera(tilt_deg=0.0)
    cam = lens_camera(rc)
    points, cv_pixels = beyond_fold_points(rc, [47.0, 50.0, 54.0])
    # The polynomial folds back: OpenCV would put these far-off points inside the image.
    inside = (
        (cv_pixels[:, 0] > 0) & (cv_pixels[:, 0] < W - 1) & (cv_pixels[:, 1] > 0) & (cv_pixels[:, 1] < H - 1)
    )
    assert inside.all()
    uv, valid = cam.project(torch.from_numpy(points))
    assert not bool(valid.any())
    # A point just inside the fold projects (outside the image, as it should).
    near, _ = beyond_fold_points(rc, [42.0])
    uv, valid = cam.project(torch.from_numpy(near))
    assert bool(valid.all()) and not bool(cam.in_image(uv).any())


def test_depth_ranges_ignore_points_beyond_the_fold() -> None:
    rc = reference_camera(tilt_deg=0.0)
    cam = lens_camera(rc)
    rng = np.random.default_rng(5)
    pixels = np.stack([rng.uniform(50, W - 50, 300), rng.uniform(50, H - 50, 300)], -1)
    o, d, _ = cam.cast_ray(torch.from_numpy(pixels))
    z = rng.uniform(1.45, 1.55, 300)
    seen = (o + ((torch.from_numpy(z) - WATER_Z) / d[:, 2])[:, None] * d).numpy()
    far, _ = beyond_fold_points(rc, list(np.linspace(47.0, 54.0, 60)), depth_m=1.8)  # deeper than the bed
    ranges = camera_depth_ranges(np.concatenate([seen, far]), {"cam0": cam}, DepthRangeConfig())
    assert ranges["cam0"]["n_points"] == 300
    assert ranges["cam0"]["z_max"] < 1.6


def two_camera_rig() -> Rig:
    cams = {
        "cam0": calibration(reference_camera(0.0), "cam0"),
        "cam1": CameraCalibration(
            "cam1", K, DIST * [1.04, 0.9, 1, 1, 0.5], (W, H), np.eye(3), np.array([-0.4, 0, 0])
        ),
    }
    return Rig(cams, Interface(WATER_Z))


def test_full_canvas_keeps_every_original_pixel_at_the_centre_resolution() -> None:
    rig = two_camera_rig()
    canvas = full_canvas(rig)
    for name, cam in rig.cameras.items():
        K_new, (cw, ch) = canvas[name]
        assert K_new[0, 0] == cam.K[0, 0] and K_new[1, 1] == cam.K[1, 1]  # centre resolution kept
        border = np.concatenate(
            [
                np.stack([np.linspace(-0.5, W - 0.5, 400), np.full(400, -0.5)], -1),
                np.stack([np.linspace(-0.5, W - 0.5, 400), np.full(400, H - 0.5)], -1),
                np.stack([np.full(300, -0.5), np.linspace(-0.5, H - 0.5, 300)], -1),
                np.stack([np.full(300, W - 0.5), np.linspace(-0.5, H - 0.5, 300)], -1),
            ]
        )
        # Every original pixel (its border is the extreme) lands inside the canvas (OpenCV).
        pts = cv2.undistortPoints(border[:, None], cam.K, cam.dist_coeffs, P=K_new, criteria=STOP)[:, 0]
        assert pts[:, 0].min() >= -0.5 and pts[:, 0].max() <= cw - 0.5
        assert pts[:, 1].min() >= -0.5 and pts[:, 1].max() <= ch - 0.5
    und = Undistorter.for_rig(rig, canvas="full")
    for name, grid in und.grids.items():
        # The canvas's valid pixels map back into the original image, and each one round trips.
        m = grid.umap.map_xy.numpy()[grid.valid]
        assert m[:, 0].min() >= -0.5 and m[:, 0].max() <= W - 0.5
        assert m[:, 1].min() >= -0.5 and m[:, 1].max() <= H - 0.5
        back = cv2.undistortPoints(
            m[::97, None].astype(np.float64), rig[name].K, rig[name].dist_coeffs, P=grid.K, criteria=STOP
        )
        yy, xx = np.nonzero(grid.valid)
        np.testing.assert_allclose(back[:, 0], np.stack([xx, yy], -1)[::97], atol=2e-3)
    # The calibrated-K canvas loses about a fifth of each original image (the 78–79 %):
    # original pixels whose undistorted position (calibrated K) falls outside the image.
    calibrated = Undistorter.for_rig(rig, canvas="calibrated")
    np.testing.assert_array_equal(calibrated.grids["cam0"].K, undistorted_intrinsics(rig["cam0"]))
    yy, xx = np.mgrid[0:H, 0:W]
    und_px = cv_undistort(np.stack([xx.ravel(), yy.ravel()], -1).astype(np.float64))
    kept = ((und_px >= -0.5) & (und_px <= [W - 0.5, H - 0.5])).all(axis=1).mean()
    assert 0.7 < kept < 0.85


def test_original_canvas_stores_frames_as_recorded() -> None:
    rig = two_camera_rig()
    und = Undistorter.for_rig(rig)
    assert und.canvas == "original" and und.lens_cameras == ["cam0", "cam1"]
    img = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    out = und.apply({"cam0": img})["cam0"]
    np.testing.assert_array_equal(out, img)
    assert all(bool(m.all()) for m in und.valid_masks.values())
    np.testing.assert_array_equal(und.K_new["cam0"], rig["cam0"].K)


def test_cameras_of_the_same_calibration_share_one_solved_pixel_grid(monkeypatch) -> None:
    """The whole-image inverse is solved once per (intrinsics, lens, size): a second camera built from
    the same calibration (as every step of a run builds its own) reuses it, a different lens does not,
    and the cache stays within its budget."""
    from aquamvs_core.camera import lens as lens_module

    lens_module.clear_grid_cache()
    solved = []
    original = lens_module.PixelInverse._solve_grid
    monkeypatch.setattr(
        lens_module.PixelInverse, "_solve_grid", lambda self, d: solved.append(1) or original(self, d)
    )
    first = lens_module.PixelInverse(K, Lens(DIST, False), (W, H))
    again = lens_module.PixelInverse(K.copy(), Lens(DIST.copy(), False), (W, H))
    other = lens_module.PixelInverse(K, Lens(DIST * 0.5, False), (W, H))
    grid = first.grid()
    assert again.grid() is grid and len(solved) == 1
    # So is the lattice of starting points (for pixels off the grid), once per dtype.
    lattices = []
    original_table = lens_module.PixelInverse._solve_table
    monkeypatch.setattr(
        lens_module.PixelInverse,
        "_solve_table",
        lambda self, d, t: lattices.append(t) or original_table(self, d, t),
    )
    pixel = torch.tensor([[100.25, 50.5]], dtype=torch.float64)
    assert again._table(pixel) is first._table(pixel) and lattices == []  # solved with the grid
    assert other._table(pixel) is not first._table(pixel) and lattices == [torch.float64]
    assert first._table(pixel.float()).dtype == torch.float32 and len(lattices) == 2
    other_grid = other.grid()
    assert len(solved) == 2 and other_grid is not grid
    # Each grid is the exact inverse of its own lens: distorting it gives back the pixel grid.
    v, u = np.mgrid[0:H, 0:W]
    for inverse, xy in ((first, grid), (other, other_grid)):
        px, _ = inverse.pixels(xy)
        ok = torch.isfinite(xy).all(-1)
        assert float(ok.float().mean()) > 0.99
        err = (px - torch.from_numpy(np.stack([u, v], -1)).double()).norm(dim=-1)[ok]
        assert float(err.max()) < 1e-6
    # Over budget, the least recently used grid goes (one grid is 640×480×16 bytes ≈ 4.7 MB).
    monkeypatch.setattr(lens_module, "GRID_CACHE_MB", 6.0)
    third = lens_module.PixelInverse(K, Lens(DIST * 0.25, False), (W, H))
    third.grid()
    assert len(solved) == 3
    fresh = lens_module.PixelInverse(K, Lens(DIST, False), (W, H))
    fresh.grid()  # the older grids were dropped to make room: solved again
    assert len(solved) == 4
    lens_module.clear_grid_cache()


def test_the_solved_pixel_grid_is_the_exact_inverse_whatever_its_bands(monkeypatch) -> None:
    """The whole-image grid is solved in bands of rows (cache-sized): any band size (here 7 rows and
    a short last band, and the whole image at once) gives the same values, and they are the lens's
    own safeguarded inverse, started from the distorted point, at every pixel."""
    from aquamvs_core.camera import lens as lens_module
    from aquamvs_core.camera.distortion import K_tensor, pixels_to_normalized

    cam = lens_camera(reference_camera())
    inverse = cam._inverse
    monkeypatch.setattr(lens_module, "_GRID_BAND", 7 * W)
    banded = inverse._solve_grid(torch.device("cpu"))
    monkeypatch.setattr(lens_module, "_GRID_BAND", W * H)
    whole = inverse._solve_grid(torch.device("cpu"))
    assert banded.shape == (H, W, 2) and bool(torch.isfinite(banded).all())
    torch.testing.assert_close(banded, whole, rtol=0, atol=0)
    pixels = pixel_grid(W, H, dtype=torch.float64)
    direct, ok = inverse.lens.undistort(pixels_to_normalized(pixels, K_tensor(K, pixels)))
    assert bool(ok.all())
    torch.testing.assert_close(banded, direct, rtol=0, atol=1e-14)
