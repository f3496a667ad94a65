"""Tests of the refractive camera against independent float64 numpy references.

The references (``geometry_reference``) use different formulas from the module: the angle form of
Snell's law for casting, and Fermat's principle solved by plain bisection for projecting.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aquamvs_core.camera.refraction import (
    RefractiveCamera,
    point_at_ray_depth,
    ray_depth_to_world_z,
    refract,
    world_z_to_ray_depth,
)

try:  # run from the repository root with tests/ as a package or as a plain folder
    from tests import geometry_reference as ref
except ImportError:
    import geometry_reference as ref

F64, F32 = torch.float64, torch.float32
DTYPES = [F64, F32]
N_CAMERAS = 12
N_PIXELS = 400
CRITICAL = math.asin(ref.N_AIR / ref.N_WATER)

# Bounds per dtype. Maxima observed with these seeds: pixel round trip 1.1e-12 / 4.0e-4 px,
# point-to-ray distance 2.2e-15 / 7.8e-7 m, Fermat reference 9.1e-13 / 3.7e-4 px (float64 / float32).
SNELL_TOL = {F64: 1e-12, F32: 1e-6}
UNIT_TOL = {F64: 1e-12, F32: 1e-6}
ROUND_TRIP_PX = {F64: 1e-8, F32: 5e-4}
RAY_DISTANCE_M = {F64: 1e-9, F32: 1e-5}
REFERENCE_PX = {F64: 1e-6, F32: 1e-3}


def model(rc: ref.RefCamera) -> RefractiveCamera:
    return RefractiveCamera(rc.K, rc.R, rc.t, rc.water_z, rc.n_air, rc.n_water, rc.size)


def as_t(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(np.asarray(x), dtype=dtype)


def as_np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).numpy()


@pytest.fixture(scope="module")
def cameras() -> list[ref.RefCamera]:
    """Random cameras: one exactly nadir, one tilted by 35°, the rest tilted up to 35°."""
    rng = np.random.default_rng(20240611)
    cams = [ref.random_camera(rng) for _ in range(N_CAMERAS)]
    cams[0].R = ref.camera_to_world_rotation(0.4, 0.0, 0.0).T
    cams[1].R = ref.camera_to_world_rotation(-1.1, np.deg2rad(35.0), 2.0).T
    return cams


def random_underwater_points(rc: ref.RefCamera, rng: np.random.Generator, n: int) -> np.ndarray:
    """Random underwater points whose reference projection lies inside the image, in front of the
    camera. Drawn in world coordinates, independently of any ray casting."""
    out = []
    while sum(len(p) for p in out) < n:
        p = np.stack(
            [
                rc.C[0] + rng.uniform(-4.0, 4.0, 4 * n),
                rc.C[1] + rng.uniform(-4.0, 4.0, 4 * n),
                rc.water_z + rng.uniform(0.01, 3.0, 4 * n),
            ],
            axis=1,
        )
        q = rc.fermat_crossing(p, iterations=60)  # coarse selection only
        uv, z = rc.pinhole(q)
        keep = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= rc.size[0] - 1)
        keep &= (uv[:, 1] >= 0) & (uv[:, 1] <= rc.size[1] - 1)
        out.append(p[keep])
    return np.concatenate(out)[:n]


# ---------------------------------------------------------------------------------------------
# 1. Nadir camera
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("yaw", [0.0, 0.7])
def test_nadir_principal_ray(dtype, yaw):
    K = np.array([[1100.0, 0.0, 812.5], [0.0, 1090.0, 590.25], [0.0, 0.0, 1.0]])
    C = np.array([0.3, -0.2, 0.1])
    R = ref.camera_to_world_rotation(yaw, 0.0, 0.0).T
    cam = RefractiveCamera(K, R, -R @ C, water_z=0.7)
    tol = 1e-12 if dtype == F64 else 1e-6

    o, d, valid = cam.cast_ray(as_t([[812.5, 590.25]], dtype))
    assert valid.item()
    np.testing.assert_allclose(as_np(o)[0], [0.3, -0.2, 0.7], atol=tol)
    np.testing.assert_allclose(as_np(d)[0], [0.0, 0.0, 1.0], atol=tol)

    uv, valid = cam.project(as_t([[0.3, -0.2, 2.0]], dtype))
    assert valid.item()
    np.testing.assert_allclose(as_np(uv)[0], [812.5, 590.25], atol=1e-9 if dtype == F64 else 1e-4)


# ---------------------------------------------------------------------------------------------
# 2. Snell's law, coplanarity, origins
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_snell_law_on_random_rays(cameras, dtype):
    rng = np.random.default_rng(1)
    tol = SNELL_TOL[dtype]
    for rc in cameras:
        cam = model(rc)
        px = ref.random_pixels(rng, N_PIXELS)
        o, d, valid = cam.cast_ray(as_t(px, dtype))
        assert o.dtype == dtype and d.dtype == dtype
        assert bool(valid.all())
        o, d = as_np(o), as_np(d)
        inc = rc.air_ray(px)  # independent float64 air ray

        sin_air = np.hypot(inc[:, 0], inc[:, 1])
        sin_water = np.hypot(d[:, 0], d[:, 1])
        assert np.abs(rc.n_air * sin_air - rc.n_water * sin_water).max() < tol

        # Coplanar with the normal [0, 0, -1]: det[inc, n, d] = 0, and on the same side of it.
        normal = np.broadcast_to([0.0, 0.0, -1.0], inc.shape)
        det = np.linalg.det(np.stack([inc, normal, d], axis=1))
        assert np.abs(det).max() < tol
        assert np.all(np.sum(inc[:, :2] * d[:, :2], axis=1) >= 0)

        assert np.abs(np.linalg.norm(d, axis=1) - 1.0).max() < UNIT_TOL[dtype]
        assert np.all(d[:, 2] > 0)

        # Origin on the water plane and on the air ray from the camera centre.
        scale = np.maximum(1.0, np.linalg.norm(o - rc.C, axis=1))
        assert np.abs(o[:, 2] - rc.water_z).max() < tol * 10
        dist = ref.point_line_distance(o, rc.C, inc)
        assert (dist / scale).max() < tol * 10

        # Same as the angle-form reference.
        ro, rd = rc.cast_ray(px)
        assert (np.abs(o - ro).max(axis=1) / scale).max() < tol * 10
        assert np.abs(d - rd).max() < tol


def test_refract_total_internal_reflection():
    """From the dense side, rays beyond the critical angle are flagged; upward rays are invalid."""
    ang = np.deg2rad([0.0, 30.0, 48.0, 49.0, 80.0])
    inc = torch.tensor(np.stack([np.sin(ang), 0 * ang, np.cos(ang)], axis=1))
    _, ok = refract(inc, ref.N_WATER, ref.N_AIR)
    assert ok.tolist() == [True, True, True, False, False]
    _, ok = refract(-inc, ref.N_AIR, ref.N_WATER)
    assert not bool(ok.any())


# ---------------------------------------------------------------------------------------------
# 3. Round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_pixel_ray_point_pixel(cameras, dtype):
    rng = np.random.default_rng(2)
    worst = 0.0
    for rc in cameras:
        cam = model(rc)
        px = ref.random_pixels(rng, N_PIXELS)
        depth = rng.uniform(0.05, 3.0, N_PIXELS)
        o, d, valid = cam.cast_ray(as_t(px, dtype))
        assert bool(valid.all())
        points = point_at_ray_depth(o, d, as_t(depth, dtype))
        uv, valid = cam.project(points)
        assert uv.dtype == dtype
        assert bool(valid.all())
        worst = max(worst, float(np.abs(as_np(uv) - px).max()))
    assert worst < ROUND_TRIP_PX[dtype], worst


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_point_pixel_ray(cameras, dtype):
    rng = np.random.default_rng(3)
    worst = 0.0
    for rc in cameras:
        cam = model(rc)
        points = random_underwater_points(rc, rng, N_PIXELS)
        uv, valid = cam.project(as_t(points, dtype))
        assert bool(valid.all())
        o, d, valid = cam.cast_ray(uv)
        assert bool(valid.all())
        o, d = as_np(o), as_np(d)
        worst = max(worst, float(ref.point_line_distance(points, o, d).max()))
        # The point lies ahead of the origin along the refracted ray (positive ray depth).
        assert np.all(np.sum((points - o) * d, axis=1) > 0)
    assert worst < RAY_DISTANCE_M[dtype], worst


# ---------------------------------------------------------------------------------------------
# 4. Fermat-principle reference projection
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_project_matches_fermat_reference(cameras, dtype):
    rng = np.random.default_rng(4)
    worst = 0.0
    for rc in cameras:
        cam = model(rc)
        points = random_underwater_points(rc, rng, N_PIXELS)
        expected = rc.project(points)
        uv, valid = cam.project(as_t(points, dtype))
        assert bool(valid.all())
        worst = max(worst, float(np.abs(as_np(uv) - expected).max()))
    assert worst < REFERENCE_PX[dtype], worst


def test_refraction_points_minimise_optical_path(cameras):
    """The module's crossings agree with the bisection reference and are local minima of the
    optical path (perturbing them on the plane in any direction only lengthens it)."""
    rng = np.random.default_rng(5)
    for rc in cameras[:4]:
        cam = model(rc)
        points = random_underwater_points(rc, rng, 100)
        q, valid = cam.refraction_points(as_t(points, F64))
        assert bool(valid.all())
        q = as_np(q)
        np.testing.assert_allclose(q[:, 2], rc.water_z, atol=1e-15)
        scale = np.maximum(1.0, np.linalg.norm(points - rc.C, axis=1))
        assert (np.abs(q - rc.fermat_crossing(points)).max(axis=1) / scale).max() < 1e-12
        base = rc.optical_path(q, points)
        for ang in np.linspace(0.0, 2 * np.pi, 8, endpoint=False):
            shifted = q + 1e-4 * np.array([np.cos(ang), np.sin(ang), 0.0])
            assert np.all(rc.optical_path(shifted, points) > base)


# ---------------------------------------------------------------------------------------------
# 5. Grazing rays
# ---------------------------------------------------------------------------------------------

GRAZING_DEG = np.array([80.0, 85.0, 87.0, 89.0, 89.5, 89.9, 89.99])
ABOVE_HORIZON_DEG = np.array([90.5, 95.0])


@pytest.fixture(scope="module")
def grazing():
    """A camera 0.5 m above the water tilted 75° from nadir, and pixels whose air rays make given
    angles with the vertical (three azimuths each)."""
    rc = ref.RefCamera(
        K=np.array([[1000.0, 0.0, 800.0], [0.0, 1000.0, 600.0], [0.0, 0.0, 1.0]]),
        R=ref.camera_to_world_rotation(0.3, np.deg2rad(75.0), 0.0).T,
        C=np.array([0.1, -0.2, ref.WATER_Z - 0.5]),
    )

    def pixels_for(theta_deg: np.ndarray) -> np.ndarray:
        th, az = np.meshgrid(np.deg2rad(theta_deg), [0.0, 0.1, -0.15], indexing="ij")
        d_world = np.stack([np.sin(th) * np.cos(az), np.sin(th) * np.sin(az), np.cos(th)], axis=-1)
        d_cam = d_world.reshape(-1, 3) @ rc.R.T
        assert np.all(d_cam[:, 2] > 0.5)  # well in front of the camera
        h = d_cam @ rc.K.T
        return h[:, :2] / h[:, 2:]

    return rc, pixels_for


@pytest.mark.parametrize("dtype", DTYPES)
def test_grazing_rays_approach_critical_angle(grazing, dtype):
    rc, pixels_for = grazing
    cam = model(rc)
    px = pixels_for(GRAZING_DEG)
    o, d, valid = cam.cast_ray(as_t(px, dtype))
    assert bool(valid.all())
    assert bool(torch.isfinite(o).all()) and bool(torch.isfinite(d).all())
    d = as_np(d)
    assert np.all(d[:, 2] > 0)
    sin_water = np.hypot(d[:, 0], d[:, 1])
    theta_water = np.arcsin(np.clip(sin_water, 0.0, 1.0)).reshape(len(GRAZING_DEG), -1)
    slack = 1e-12 if dtype == F64 else 1e-6
    assert np.all(theta_water <= CRITICAL + slack)
    # Monotonic in the air angle, and within 1e-5 rad of the critical angle at 89.99°.
    assert np.all(np.diff(theta_water, axis=0) > -slack)
    assert np.all(CRITICAL - theta_water[-1] < 1e-5)
    if dtype == F64:
        ro, rd = rc.cast_ray(px)
        assert np.abs(d - rd).max() < 1e-12
        rel = np.abs(as_np(o) - ro).max(axis=1) / np.linalg.norm(ro - rc.C, axis=1)
        assert rel.max() < 1e-12


@pytest.mark.parametrize("dtype", DTYPES)
def test_rays_above_horizon_are_invalid(grazing, dtype):
    rc, pixels_for = grazing
    cam = model(rc)
    px = np.concatenate([pixels_for(GRAZING_DEG), pixels_for(ABOVE_HORIZON_DEG)])
    o, d, valid = cam.cast_ray(as_t(px, dtype))
    n_ok = 3 * len(GRAZING_DEG)
    assert bool(valid[:n_ok].all())
    assert not bool(valid[n_ok:].any())
    assert bool(torch.isfinite(o).all()) and bool(torch.isfinite(d).all())


def test_grazing_far_points_round_trip(grazing):
    rc, pixels_for = grazing
    cam = model(rc)
    px = np.concatenate([pixels_for(GRAZING_DEG)] * 2)
    depth = np.repeat([0.05, 2.0], len(px) // 2)
    o, d, valid = cam.cast_ray(as_t(px, F64))
    assert bool(valid.all())
    points = point_at_ray_depth(o, d, as_t(depth, F64))
    # The farthest are ~2.9 km away horizontally.
    assert float(torch.linalg.norm(points[:, :2] - torch.tensor(rc.C[:2]), dim=1).max()) > 2000
    uv, valid = cam.project(points)
    assert bool(valid.all())
    assert np.abs(as_np(uv) - px).max() < 1e-6
    assert np.abs(rc.project(as_np(points)) - px).max() < 1e-6


# ---------------------------------------------------------------------------------------------
# 6. Invalid inputs, batching, dtypes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_points_at_or_above_surface_are_invalid_in_mixed_batch(cameras, dtype):
    rc = cameras[1]
    cam = model(rc)
    rng = np.random.default_rng(6)
    good = random_underwater_points(rc, rng, 6)
    bad = good.copy()
    bad[:2, 2] = rc.water_z  # on the surface
    bad[2:4, 2] = rc.water_z - 0.3  # in air, below the camera
    bad[4:, 2] = rc.C[2] - 1.0  # in air, above the camera
    mixed = np.stack([good, bad], axis=1).reshape(-1, 3)  # interleaved
    uv, valid = cam.project(as_t(mixed, dtype))
    assert valid.tolist() == [True, False] * 6
    assert bool(torch.isfinite(uv).all())
    uv_good, valid_good = cam.project(as_t(good, dtype))
    assert bool(valid_good.all())
    torch.testing.assert_close(uv[0::2], uv_good, rtol=0, atol=1e-9 if dtype == F64 else 1e-3)
    np.testing.assert_allclose(as_np(uv[0::2]), rc.project(good), atol=REFERENCE_PX[dtype])


def test_points_behind_camera_are_invalid():
    # Tilted 80° towards +X: light from far behind (-X) crosses the surface behind the image plane.
    rc = ref.RefCamera(
        K=np.array([[1000.0, 0.0, 800.0], [0.0, 1000.0, 600.0], [0.0, 0.0, 1.0]]),
        R=ref.camera_to_world_rotation(0.0, np.deg2rad(80.0), 0.0).T,
        C=np.array([0.0, 0.0, ref.WATER_Z - 0.3]),
    )
    cam = model(rc)
    uv, valid = cam.project(torch.tensor([[-5.0, 0.0, 1.5], [5.0, 0.0, 1.5]], dtype=F64))
    assert valid.tolist() == [False, True]
    assert bool(torch.isfinite(uv).all())


@pytest.mark.parametrize("camera_z", [0.8, 0.7])
def test_camera_at_or_below_water_raises(camera_z):
    K = np.array([[1000.0, 0.0, 800.0], [0.0, 1000.0, 600.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="not above the water surface"):
        RefractiveCamera(K, np.eye(3), -np.array([0.0, 0.0, camera_z]), water_z=0.7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 5), (2, 1, 3), (7,), ()])
def test_arbitrary_batch_shapes(cameras, dtype, shape):
    rc = cameras[2]
    cam = model(rc)
    rng = np.random.default_rng(7)
    n = math.prod(shape)
    px = ref.random_pixels(rng, n)
    depth = rng.uniform(0.1, 2.0, n)

    o, d, valid = cam.cast_ray(as_t(px, dtype).reshape(*shape, 2))
    assert o.shape == (*shape, 3) and d.shape == (*shape, 3) and valid.shape == shape
    assert o.dtype == d.dtype == dtype and valid.dtype == torch.bool
    o_flat, d_flat, _ = cam.cast_ray(as_t(px, dtype))
    assert torch.equal(o.reshape(-1, 3), o_flat) and torch.equal(d.reshape(-1, 3), d_flat)

    points = point_at_ray_depth(o, d, as_t(depth, dtype).reshape(shape))
    uv, valid = cam.project(points)
    assert uv.shape == (*shape, 2) and valid.shape == shape and uv.dtype == dtype
    assert bool(valid.all())
    np.testing.assert_allclose(as_np(uv).reshape(-1, 2), px, atol=ROUND_TRIP_PX[dtype])


def test_empty_batches(cameras):
    cam = model(cameras[0])
    o, d, valid = cam.cast_ray(torch.zeros(0, 2, dtype=F64))
    assert o.shape == (0, 3) and d.shape == (0, 3) and valid.shape == (0,)
    uv, valid = cam.project(torch.zeros(3, 0, 3, dtype=F32))
    assert uv.shape == (3, 0, 2) and valid.shape == (3, 0) and uv.dtype == F32


@pytest.mark.parametrize(
    "bad, error",
    [
        (np.zeros((3, 2)), TypeError),  # numpy, not a tensor
        ([[400.0, 300.0]], TypeError),  # list
        (torch.zeros(3, 2, dtype=torch.int64), TypeError),  # integer tensor
        (torch.zeros(3, 3), ValueError),  # wrong last dimension
        (torch.tensor(1.0), ValueError),  # 0-d
    ],
)
def test_cast_ray_rejects_bad_input(cameras, bad, error):
    with pytest.raises(error, match="pixels must"):
        model(cameras[0]).cast_ray(bad)


@pytest.mark.parametrize(
    "bad, error",
    [
        (np.tile([0.0, 0.0, 2.0], (3, 1)), TypeError),
        ([[0.0, 0.0, 2.0]], TypeError),
        (torch.ones(3, 3, dtype=torch.int32), TypeError),
        (torch.zeros(3, 2), ValueError),
        (torch.tensor(2.0), ValueError),
    ],
)
def test_project_rejects_bad_input(cameras, bad, error):
    with pytest.raises(error, match="points must"):
        model(cameras[0]).project(bad)


def test_in_image_uses_pixel_centre_convention(cameras):
    cam = model(cameras[0])  # 1600 x 1200
    px = torch.tensor([[-0.5, -0.5], [1599.5, 1199.5], [-0.51, 3.0], [3.0, 1199.51], [800.0, 600.0]])
    assert cam.in_image(px).tolist() == [True, True, False, False, True]
    assert cam.in_image(px, margin=1.0).tolist() == [False, False, False, False, True]


# ---------------------------------------------------------------------------------------------
# 7. Depth convention helpers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_depth_helpers_round_trip(cameras, dtype):
    rc = cameras[1]
    cam = model(rc)
    rng = np.random.default_rng(8)
    px = ref.random_pixels(rng, 200)
    depth = rng.uniform(0.0, 3.0, 200)
    o, d, valid = cam.cast_ray(as_t(px, dtype))
    assert bool(valid.all())
    s = as_t(depth, dtype)
    tol = 1e-12 if dtype == F64 else 2e-6

    points = point_at_ray_depth(o, d, s)
    assert points.shape == (200, 3) and points.dtype == dtype
    on, dn = as_np(o), as_np(d)
    np.testing.assert_allclose(as_np(points), on + depth[:, None] * dn, atol=tol)
    # Ray depth is the distance from the origin on the water surface, along the refracted ray.
    np.testing.assert_allclose(np.linalg.norm(as_np(points) - on, axis=1), depth, atol=tol * 4)

    world_z = ray_depth_to_world_z(d, s, rc.water_z)
    assert world_z.dtype == dtype
    np.testing.assert_allclose(as_np(world_z), as_np(points[..., 2]), atol=tol)
    np.testing.assert_allclose(as_np(world_z), rc.water_z + depth * dn[:, 2], atol=tol)
    assert np.all(as_np(world_z) >= rc.water_z - tol)

    back = world_z_to_ray_depth(d, world_z, rc.water_z)
    np.testing.assert_allclose(as_np(back), depth, atol=tol * 10)

    # A target world Z maps to the ray depth whose point has that Z.
    target = as_t(rc.water_z + rng.uniform(0.0, 2.0, 200), dtype)
    s_target = world_z_to_ray_depth(d, target, rc.water_z)
    assert np.all(as_np(s_target) >= as_np(target - rc.water_z) - tol)  # slanted rays are longer
    np.testing.assert_allclose(
        as_np(point_at_ray_depth(o, d, s_target)[..., 2]), as_np(target), atol=tol * 10
    )


# ---------------------------------------------------------------------------------------------
# 8. Convergence on extreme geometry
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def low_camera() -> ref.RefCamera:
    """5 cm above the water, tilted 80° from nadir towards +X."""
    return ref.RefCamera(
        K=np.array([[1000.0, 0.0, 800.0], [0.0, 1000.0, 600.0], [0.0, 0.0, 1.0]]),
        R=ref.camera_to_world_rotation(0.0, np.deg2rad(80.0), 0.0).T,
        C=np.array([0.0, 0.0, ref.WATER_Z - 0.05]),
    )


EXTREME_POINTS = np.array(
    [
        [20.0, 0.0, ref.WATER_Z + 5.0],  # 5 m deep, 20 m away
        [20.0, 1.0, ref.WATER_Z + 5.0],
        [18.0, -6.0, ref.WATER_Z + 5.0],
        [200.0, 3.0, ref.WATER_Z + 0.01],  # shallow, very far
        [30.0, -2.0, ref.WATER_Z + 50.0],  # very deep
    ]
)


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_geometry_converges(low_camera, dtype):
    cam = model(low_camera)
    expected = low_camera.project(EXTREME_POINTS)
    uv, valid = cam.project(as_t(EXTREME_POINTS, dtype))
    assert bool(valid.all())
    assert np.all((expected > 0) & (expected < [1599, 1199]))  # all inside the image
    assert np.abs(as_np(uv) - expected).max() < (1e-6 if dtype == F64 else 1e-3)
    if dtype == F64:
        o, d, ok = cam.cast_ray(uv)
        assert bool(ok.all())
        dist = ref.point_line_distance(EXTREME_POINTS, as_np(o), as_np(d))
        assert dist.max() < 1e-9


def test_unconverged_solve_is_reported_not_hidden(low_camera):
    """With too few iterations the extreme points are flagged invalid rather than returned wrong;
    the default solve converges for all of them."""
    cam = model(low_camera)
    pts = as_t(EXTREME_POINTS[:3], F64)
    _, valid = cam.refraction_points(pts, max_iter=1)
    assert not bool(valid.any())
    q, valid = cam.refraction_points(pts)
    assert bool(valid.all())
    np.testing.assert_allclose(as_np(q), low_camera.fermat_crossing(EXTREME_POINTS[:3]), atol=1e-10)
