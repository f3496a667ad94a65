"""Lens distortion against OpenCV (the reference implementation of both lens models)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from aquamvs_core.camera.calibration import CameraCalibration
from aquamvs_core.camera.distortion import (
    distort_normalized,
    distort_pixels,
    fold_limit,
    undistort_normalized,
    undistort_pixels,
    undistorted_intrinsics,
)
from aquamvs_core.camera.undistortion import UndistortionMap, build_undistortion_map, undistort_image

W, H = 640, 480
K = np.array([[560.0, 0.0, 321.7], [0.0, 557.5, 238.4], [0.0, 0.0, 1.0]])
DIST = {
    "pinhole5": np.array([-0.09, 0.06, 0.0012, -0.0008, -0.012]),
    "pinhole8": np.array([-0.07, 0.04, -0.0009, 0.0011, -0.006, 0.03, 0.012, 0.002]),
    "fisheye": np.array([0.04, -0.018, 0.006, -0.002]),
}
MODELS = list(DIST)
STOP = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-15)


def make_camera(model: str, K: np.ndarray = K, dist: np.ndarray | None = None) -> CameraCalibration:
    return CameraCalibration(
        name=model,
        K=K,
        dist_coeffs=DIST[model] if dist is None else dist,
        image_size=(W, H),
        R=np.eye(3),
        t=np.zeros(3),
        is_fisheye=model == "fisheye",
    )


def random_pixels(n: int, seed: int, margin: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform([-0.5 + margin, -0.5 + margin], [W - 0.5 - margin, H - 0.5 - margin], (n, 2))


def cv_distort(pix_undist: np.ndarray, cam: CameraCalibration, K_new: np.ndarray) -> np.ndarray:
    """Independent forward model: OpenCV on normalized points from K_new."""
    xy = (pix_undist - K_new[:2, 2]) / np.diag(K_new)[:2]
    if cam.is_fisheye:
        return cv2.fisheye.distortPoints(xy[:, None, :], cam.K, cam.dist_coeffs)[:, 0]
    pts = np.c_[xy, np.ones(len(xy))]
    return cv2.projectPoints(pts, np.zeros(3), np.zeros(3), cam.K, cam.dist_coeffs)[0][:, 0]


def cv_undistort(pix_dist: np.ndarray, cam: CameraCalibration, K_new: np.ndarray) -> np.ndarray:
    pts = pix_dist[:, None, :]
    if cam.is_fisheye:
        return cv2.fisheye.undistortPoints(pts, cam.K, cam.dist_coeffs, P=K_new, criteria=STOP)[:, 0]
    return cv2.undistortPoints(pts, cam.K, cam.dist_coeffs, P=K_new, criteria=STOP)[:, 0]


def cv_map(cam: CameraCalibration, K_new: np.ndarray) -> np.ndarray:
    init = cv2.fisheye.initUndistortRectifyMap if cam.is_fisheye else cv2.initUndistortRectifyMap
    mx, my = init(cam.K, cam.dist_coeffs, np.eye(3), K_new, (W, H), cv2.CV_32FC1)
    return np.stack([mx, my], axis=-1)


def smooth_image(channels: int = 3) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    planes = [
        127.5 + 100 * np.sin(xx / 23.0) * np.cos(yy / 31.0),
        127.5 + 110 * np.cos((xx + 2 * yy) / 57.0),
        255.0 * xx / (W - 1),
    ]
    return np.clip(np.round(np.stack(planes[:channels], axis=-1)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Points
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_distort_pixels_matches_opencv(model: str) -> None:
    cam = make_camera(model)
    K_new = undistorted_intrinsics(cam)
    pix = random_pixels(2000, seed=1)
    ours = distort_pixels(torch.from_numpy(pix), cam, K_new)
    assert ours.dtype == torch.float64 and ours.shape == (2000, 2)
    np.testing.assert_allclose(ours.numpy(), cv_distort(pix, cam, K_new), rtol=0, atol=1e-9)


@pytest.mark.parametrize("model", MODELS)
def test_undistort_pixels_matches_opencv(model: str) -> None:
    cam = make_camera(model)
    K_new = undistorted_intrinsics(cam)
    pix = random_pixels(2000, seed=2)
    ours, converged = undistort_pixels(torch.from_numpy(pix), cam, K_new)
    assert bool(converged.all())
    np.testing.assert_allclose(ours.numpy(), cv_undistort(pix, cam, K_new), rtol=0, atol=1e-6)


@pytest.mark.parametrize("model", MODELS)
def test_round_trip_float64(model: str) -> None:
    cam = make_camera(model)
    K_new = undistorted_intrinsics(cam)
    pix = torch.from_numpy(random_pixels(5000, seed=3))
    und, converged = undistort_pixels(pix, cam, K_new)
    assert bool(converged.all())
    assert float((distort_pixels(und, cam, K_new) - pix).abs().max()) < 1e-9
    # And the other way round, starting from undistorted pixels.
    back, converged = undistort_pixels(distort_pixels(pix, cam, K_new), cam, K_new)
    assert bool(converged.all())
    assert float((back - pix).abs().max()) < 1e-9


@pytest.mark.parametrize("model", MODELS)
def test_round_trip_float32(model: str) -> None:
    cam = make_camera(model)
    K_new = undistorted_intrinsics(cam)
    pix = torch.from_numpy(random_pixels(5000, seed=4)).to(torch.float32)
    und, converged = undistort_pixels(pix, cam, K_new)
    assert und.dtype == torch.float32 and bool(converged.all())
    redist = distort_pixels(und, cam, K_new)
    assert redist.dtype == torch.float32
    assert float((redist.double() - pix.double()).abs().max()) < 1e-4
    # The float32 solution agrees with the float64 one to float32 accuracy.
    und64, _ = undistort_pixels(pix.double(), cam, K_new)
    assert float((und.double() - und64).abs().max()) < 2e-4


def test_normalized_shapes_dtypes_and_centre() -> None:
    for model in MODELS:
        fisheye = model == "fisheye"
        xy = torch.zeros(3, 4, 2, dtype=torch.float32)
        xy[0, 0] = torch.tensor([1e-20, 0.0])
        xy[1] = torch.rand(4, 2, generator=torch.Generator().manual_seed(0)) - 0.5
        out = distort_normalized(xy, DIST[model], fisheye)
        assert out.shape == (3, 4, 2) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        assert torch.equal(out[2], torch.zeros(4, 2))  # the centre is a fixed point (r = 0 limit)
        back, converged = undistort_normalized(out, DIST[model], fisheye)
        assert back.shape == (3, 4, 2) and converged.shape == (3, 4) and bool(converged.all())
        empty, conv_empty = undistort_normalized(torch.zeros(0, 2), DIST[model], fisheye)
        assert empty.shape == (0, 2) and conv_empty.shape == (0,)


def test_fisheye_matches_equidistant_formula() -> None:
    """Hand-evaluated equidistant model at a few points (independent of OpenCV)."""
    k1, k2, k3, k4 = DIST["fisheye"]
    pts = np.array([[0.3, -0.2], [1.5, 0.7], [-0.01, 0.002]])
    expected = []
    for a, b in pts:
        r = math.hypot(a, b)
        th = math.atan(r)
        th_d = th * (1 + k1 * th**2 + k2 * th**4 + k3 * th**6 + k4 * th**8)
        expected.append([th_d / r * a, th_d / r * b])
    out = distort_normalized(torch.from_numpy(pts), DIST["fisheye"], fisheye=True)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-14, atol=1e-16)


def test_non_convergence_is_reported() -> None:
    # Barrel distortion that folds over: r_d = r (1 - 0.3 r² + 0.02 r⁴) rises to 0.734 at r = 1.139,
    # falls, then rises again, so r_d = 2 has a solution only on the outer (non-physical) branch
    # and r_d = 0.9 none near the image; r_d = 0.5 is fine.
    dist = [-0.3, 0.02, 0.0, 0.0, 0.0]
    r_fold = math.sqrt((0.9 - math.sqrt(0.41)) / 0.2)  # first root of 1 - 0.9 r² + 0.1 r⁴
    assert fold_limit(dist, fisheye=False) == pytest.approx(r_fold, rel=1e-9)
    xd = torch.tensor([[0.5, 0.0], [0.0, 0.9], [2.0, 0.0], [1e3, -1e3]], dtype=torch.float64)
    xy, converged = undistort_normalized(xd, dist, fisheye=False)
    assert converged.tolist() == [True, False, False, False]
    assert torch.isfinite(xy).all()
    assert float((distort_normalized(xy[:1], dist, False) - xd[:1]).abs().max()) < 1e-14

    # Fisheye: θ_d(θ) = θ (1 - 0.3 θ²) peaks at θ = 1/sqrt(0.9) with θ_d = 0.7027.
    fdist = [-0.3, 0.0, 0.0, 0.0]
    assert fold_limit(fdist, fisheye=True) == pytest.approx(1 / math.sqrt(0.9), rel=1e-9)
    xd = torch.tensor([[0.6, 0.2], [0.8, 0.0], [5.0, 5.0]], dtype=torch.float32)
    xy, converged = undistort_normalized(xd, fdist, fisheye=True)
    assert converged.tolist() == [True, False, False]
    assert torch.isfinite(xy).all()

    # The same through the pixel API: a pixel far outside a strongly distorted image.
    cam = make_camera("pinhole5", dist=np.array(dist))
    _, converged = undistort_pixels(torch.tensor([[W / 2, H / 2], [W / 2 + 3 * K[0, 0], H / 2]]), cam, K)
    assert converged.tolist() == [True, False]


def test_undistorted_intrinsics_policy() -> None:
    for model in ("pinhole5", "pinhole8"):
        cam = make_camera(model)
        np.testing.assert_array_equal(undistorted_intrinsics(cam), K)

    # Fisheye: the incidence angle of the left/right image edges (row through the principal point),
    # computed with OpenCV, must land exactly on the edge of the undistorted image on the tighter side.
    def expected_f(cam: CameraCalibration) -> float:
        edges = np.array([[[-0.5, cam.K[1, 2]]], [[W - 0.5, cam.K[1, 2]]]])
        xy = cv2.fisheye.undistortPoints(edges, cam.K, cam.dist_coeffs, criteria=STOP)[:, 0]
        theta = np.minimum(np.arctan(np.abs(xy[:, 0])), math.radians(60))
        d = np.array([cam.K[0, 2] + 0.5, W - 0.5 - cam.K[0, 2]])
        return float(np.min(d / np.tan(theta)))

    narrow = make_camera("fisheye")
    wide = make_camera("fisheye", K=np.array([[250.0, 0.0, 330.2], [0.0, 251.0, 241.0], [0.0, 0.0, 1.0]]))
    for cam in (narrow, wide):
        K_new = undistorted_intrinsics(cam)
        assert K_new.dtype == np.float64 and K_new.shape == (3, 3)
        np.testing.assert_array_equal(K_new[:, 2], cam.K[:, 2])
        assert K_new[0, 1] == 0 and K_new[1, 0] == 0
        assert K_new[0, 0] == pytest.approx(expected_f(cam), rel=1e-9)
        assert K_new[1, 1] / K_new[0, 0] == pytest.approx(cam.K[1, 1] / cam.K[0, 0], rel=1e-12)
        np.testing.assert_array_equal(K_new, undistorted_intrinsics(cam))  # deterministic
    # The narrow lens keeps its whole horizontal field of view: the fisheye's edge pixels (row through
    # the principal point) land inside the undistorted image, one of them exactly on its edge.
    K_new = undistorted_intrinsics(narrow)
    edges = torch.tensor([[-0.5, narrow.K[1, 2]], [W - 0.5, narrow.K[1, 2]]], dtype=torch.float64)
    und, converged = undistort_pixels(edges, narrow, K_new)
    assert bool(converged.all())
    u = und[:, 0].numpy()
    assert u[0] >= -0.5 - 1e-9 and u[1] <= W - 0.5 + 1e-9
    assert min(abs(u[0] + 0.5), abs(u[1] - (W - 0.5))) < 1e-9
    # The wide lens (edges at 74° and 69° incidence) is capped at a 60° half-angle on the tighter side.
    K_new = undistorted_intrinsics(wide)
    assert K_new[0, 0] == pytest.approx((W - 0.5 - 330.2) / math.tan(math.radians(60)), rel=1e-12)
    # So is a lens whose image edges lie beyond what the model can produce at 90° incidence.
    wider = make_camera("fisheye", K=np.array([[150.0, 0.0, 330.2], [0.0, 150.0, 241.0], [0.0, 0.0, 1.0]]))
    K_wider = undistorted_intrinsics(wider)
    assert K_wider[0, 0] == pytest.approx(K_new[0, 0], rel=1e-12)
    assert K_wider[1, 1] == pytest.approx(K_new[0, 0], rel=1e-12)


# --------------------------------------------------------------------------------------------
# Maps and images
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_map_matches_opencv(model: str) -> None:
    cam = make_camera(model)
    umap = build_undistortion_map(cam)
    assert isinstance(umap, UndistortionMap)
    np.testing.assert_array_equal(umap.K_new, undistorted_intrinsics(cam))
    assert umap.map_xy.shape == (H, W, 2) and umap.map_xy.dtype == torch.float32
    assert umap.valid.shape == (H, W) and umap.valid.dtype == torch.bool
    ref = cv_map(cam, umap.K_new)
    valid = umap.valid.numpy()
    assert valid.mean() > 0.9
    assert np.abs(umap.map_xy.numpy() - ref)[valid].max() < 1e-3
    # valid is exactly "the OpenCV source pixel lies inside the original image" (away from ties).
    inside = (
        (ref[..., 0] >= -0.5) & (ref[..., 0] <= W - 0.5) & (ref[..., 1] >= -0.5) & (ref[..., 1] <= H - 0.5)
    )
    edge = (np.abs(ref[..., 0] + 0.5) < 1e-3) | (np.abs(ref[..., 0] - W + 0.5) < 1e-3)
    edge |= (np.abs(ref[..., 1] + 0.5) < 1e-3) | (np.abs(ref[..., 1] - H + 0.5) < 1e-3)
    assert np.array_equal(valid[~edge], inside[~edge])
    # The map agrees with the point function.
    pts = torch.tensor([[0.0, 0.0], [W - 1.0, H - 1.0], [100.0, 300.0]], dtype=torch.float64)
    expected = distort_pixels(pts, cam, umap.K_new).numpy()
    got = umap.map_xy.numpy()[pts[:, 1].long(), pts[:, 0].long()]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_map_marks_fold_invalid() -> None:
    # Strong barrel distortion folds at r = 1.1395; with a short focal length the
    # undistorted image reaches r = 1.43 in its corners. Those pixels map back *inside* the
    # original image (the fold makes r_d small again) but must be invalid.
    dist = np.array([-0.3, 0.02, 0.0, 0.0, 0.0])
    cam = make_camera("pinhole5", dist=dist)
    K_new = np.array([[280.0, 0.0, 320.0], [0.0, 280.0, 240.0], [0.0, 0.0, 1.0]])
    umap = build_undistortion_map(cam, K_new)
    r_fold = math.sqrt((0.9 - math.sqrt(0.41)) / 0.2)
    yy, xx = np.mgrid[0:H, 0:W]
    r = np.hypot((xx - 320.0) / 280.0, (yy - 240.0) / 280.0)
    valid = umap.valid.numpy()
    assert not valid[r > r_fold + 1e-6].any()
    src = umap.map_xy.numpy()
    inside = (
        (src[..., 0] >= -0.5) & (src[..., 0] <= W - 0.5) & (src[..., 1] >= -0.5) & (src[..., 1] <= H - 0.5)
    )
    assert (inside & (r > r_fold + 1e-6)).any()  # the fold would have fooled an inside test
    assert np.array_equal(valid[r < r_fold - 1e-6], inside[r < r_fold - 1e-6])


@pytest.mark.parametrize("model", MODELS)
def test_undistort_image_matches_cv2_remap(model: str) -> None:
    cam = make_camera(model)
    umap = build_undistortion_map(cam)
    mxy = umap.map_xy.numpy()
    valid = umap.valid.numpy()
    for channels in (3, 1):
        img = smooth_image(channels)
        if channels == 1:
            img = img[..., 0]
        ref = cv2.remap(img, mxy[..., 0], mxy[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        ref[~valid] = 0
        for given in (img, torch.from_numpy(img)):
            out = undistort_image(given, umap)
            assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == img.shape
            diff = np.abs(out.astype(int) - ref.astype(int))
            assert (diff <= 1).mean() >= 0.99
            assert diff.max() <= 3
            assert not out[~valid].any()


def test_identity_map_and_image() -> None:
    cam = make_camera("pinhole5", dist=np.zeros(5))
    umap = build_undistortion_map(cam)
    yy, xx = np.mgrid[0:H, 0:W]
    np.testing.assert_allclose(umap.map_xy.numpy(), np.stack([xx, yy], -1), rtol=0, atol=1e-4)
    assert bool(umap.valid.all())
    img = smooth_image()
    np.testing.assert_array_equal(undistort_image(img, umap), img)
    # Zero fisheye coefficients are not the identity (equidistant vs pinhole), but with K_new = K
    # the centre pixel is a fixed point.
    fcam = make_camera("fisheye", dist=np.zeros(4))
    c = torch.tensor([[K[0, 2], K[1, 2]]], dtype=torch.float64)
    assert float((distort_pixels(c, fcam, K) - c).abs().max()) == 0.0
