"""Independent float64 reference geometry for the tests (plain numpy, no torch, no aquamvs_core).

Written on purpose with different formulas from :mod:`aquamvs_core.camera.refraction`:

* pixel → air ray solves ``K x = [u, v, 1]`` instead of multiplying by an inverse;
* refraction uses the angle form of Snell's law in spherical coordinates (tilt angle and azimuth)
  instead of the vector form;
* world point → pixel finds the surface crossing from Fermat's principle by plain bisection
  (fixed 200 halvings, no Newton) on the derivative of the optical path, written with 3D vectors
  along the segment between the two nadir points, then applies an ordinary pinhole projection.

Conventions are the project's (see :mod:`aquamvs_core.camera.calibration`): world Z down, water plane
``Z = water_z``, ``p_cam = R @ p_world + t``, pixel centres at integer ``(u, v)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_AIR = 1.0
N_WATER = 1.333
WATER_Z = 0.7


def axis_angle_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation by ``angle`` radians about ``axis`` (right-handed), Rodrigues' formula."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


def camera_to_world_rotation(yaw: float, tilt: float, tilt_azimuth: float) -> np.ndarray:
    """Camera→world rotation of a camera that looks straight down when ``tilt == 0``.

    With world Z down, a nadir camera whose image x axis is world X has camera axes equal to the
    world axes (z forward = down, y = z × x = world Y). ``yaw`` turns it about the vertical, then
    the optical axis is tilted by ``tilt`` radians away from the vertical, towards ``tilt_azimuth``.
    """
    yaw_m = axis_angle_matrix([0.0, 0.0, 1.0], yaw)
    # Rotating about z × h (horizontal, unit) moves the optical axis z towards h.
    h = np.array([np.cos(tilt_azimuth), np.sin(tilt_azimuth), 0.0])
    axis = np.cross([0.0, 0.0, 1.0], h)
    return axis_angle_matrix(axis, tilt) @ yaw_m


@dataclass
class RefCamera:
    """A pinhole camera in air, as plain float64 numpy arrays."""

    K: np.ndarray
    R: np.ndarray  # world→camera
    C: np.ndarray  # centre, world
    water_z: float = WATER_Z
    n_air: float = N_AIR
    n_water: float = N_WATER
    size: tuple[int, int] = (1600, 1200)

    @property
    def t(self) -> np.ndarray:
        return -self.R @ self.C

    # -- air ----------------------------------------------------------------------------------

    def air_ray(self, pixels: np.ndarray) -> np.ndarray:
        """Unit world directions (N, 3) of the air rays through pixels (N, 2)."""
        pixels = np.atleast_2d(np.asarray(pixels, dtype=np.float64))
        rhs = np.concatenate([pixels, np.ones((len(pixels), 1))], axis=1).T  # (3, N)
        d_cam = np.linalg.solve(self.K, rhs)  # (3, N)
        d_world = (self.R.T @ d_cam).T
        return d_world / np.sqrt(np.sum(d_world**2, axis=1, keepdims=True))

    def pinhole(self, world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Plain pinhole projection of points (N, 3) in air (no refraction); returns (uv, z_cam)."""
        world = np.atleast_2d(np.asarray(world, dtype=np.float64))
        p = (self.R @ (world - self.C).T).T  # same as R p + t
        h = (self.K @ p.T).T
        return h[:, :2] / h[:, 2:3], p[:, 2]

    # -- refraction ---------------------------------------------------------------------------

    def cast_ray(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reference (origins, directions) of refracted rays, for downward air rays only."""
        d = self.air_ray(pixels)
        assert np.all(d[:, 2] > 0), "reference cast_ray expects downward rays"
        lam = (self.water_z - self.C[2]) / d[:, 2]
        origins = self.C + lam[:, None] * d
        origins[:, 2] = self.water_z
        theta_air = np.arctan2(np.hypot(d[:, 0], d[:, 1]), d[:, 2])
        azimuth = np.arctan2(d[:, 1], d[:, 0])
        theta_water = np.arcsin(self.n_air / self.n_water * np.sin(theta_air))
        directions = np.stack(
            [
                np.sin(theta_water) * np.cos(azimuth),
                np.sin(theta_water) * np.sin(azimuth),
                np.cos(theta_water),
            ],
            axis=1,
        )
        return origins, directions

    def optical_path(self, q: np.ndarray, points: np.ndarray) -> np.ndarray:
        """n_air·|Q − C| + n_water·|P − Q| for surface points Q (N, 3) and underwater points P."""
        return self.n_air * np.linalg.norm(q - self.C, axis=-1) + self.n_water * np.linalg.norm(
            points - q, axis=-1
        )

    def fermat_crossing(self, points: np.ndarray, iterations: int = 200) -> np.ndarray:
        """Surface crossings (N, 3) minimising the optical path, by bisection on its derivative.

        Fermat's principle puts the crossing in the vertical plane through C and P, on the segment
        A→B between the nadir points of C and P on the water plane. Along ``Q(λ) = A + λ (B − A)``
        the optical path is convex, with derivative
        ``n_air (Q − C)·(B − A)/|Q − C| − n_water (P − Q)·(B − A)/|P − Q|``, negative at λ = 0 and
        positive at λ = 1; its sign change is bracketed and halved ``iterations`` times.
        """
        points = np.atleast_2d(np.asarray(points, dtype=np.float64))
        a = np.array([self.C[0], self.C[1], self.water_z])
        b = points.copy()
        b[:, 2] = self.water_z
        ab = b - a
        lo = np.zeros(len(points))
        hi = np.ones(len(points))

        def slope(lam: np.ndarray) -> np.ndarray:
            q = a + lam[:, None] * ab
            to_q = q - self.C
            to_p = points - q
            return self.n_air * np.sum(to_q * ab, axis=1) / np.linalg.norm(to_q, axis=1) - (
                self.n_water * np.sum(to_p * ab, axis=1) / np.linalg.norm(to_p, axis=1)
            )

        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            positive = slope(mid) > 0
            hi = np.where(positive, mid, hi)
            lo = np.where(positive, lo, mid)
        lam = 0.5 * (lo + hi)
        q = a + lam[:, None] * ab
        q[:, 2] = self.water_z
        return q

    def project(self, points: np.ndarray) -> np.ndarray:
        """Reference refractive projection of underwater points (N, 3) to pixels (N, 2)."""
        uv, _ = self.pinhole(self.fermat_crossing(points))
        return uv


def random_camera(
    rng: np.random.Generator, max_tilt_deg: float = 35.0, water_z: float = WATER_Z
) -> RefCamera:
    """A random 1600×1200 camera 0.4–0.9 m above the water, tilted up to ``max_tilt_deg``."""
    f = rng.uniform(1000.0, 1400.0)
    K = np.array(
        [
            [f * rng.uniform(0.98, 1.02), 0.0, 800.0 + rng.uniform(-20.0, 20.0)],
            [0.0, f, 600.0 + rng.uniform(-20.0, 20.0)],
            [0.0, 0.0, 1.0],
        ]
    )
    rot_cw = camera_to_world_rotation(
        yaw=rng.uniform(-np.pi, np.pi),
        tilt=np.deg2rad(rng.uniform(0.0, max_tilt_deg)),
        tilt_azimuth=rng.uniform(-np.pi, np.pi),
    )
    C = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), water_z - rng.uniform(0.4, 0.9)])
    return RefCamera(K=K, R=rot_cw.T, C=C, water_z=water_z)


def random_pixels(rng: np.random.Generator, n: int, size: tuple[int, int] = (1600, 1200)) -> np.ndarray:
    """(n, 2) random sub-pixel positions inside the image (pixel centres span [0, W-1])."""
    return np.stack([rng.uniform(0.0, size[0] - 1.0, n), rng.uniform(0.0, size[1] - 1.0, n)], axis=1)


def point_line_distance(points: np.ndarray, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Distance (N,) of points from the lines ``origins + s * directions`` (unit directions)."""
    return np.linalg.norm(np.cross(points - origins, directions), axis=-1)
