"""Rig layout of the synthetic survey: a ring of inward-tilted cameras plus a central fisheye.

The world frame is the project's (world Z down, metres): the origin is the centre of the reference
camera ``cam0``, the first ring camera, so the ring is centred at ``(-ring_radius, 0, 0)``. Every
camera centre lies near ``Z = 0`` (the reference exactly, the others with a small jitter), above the
water plane ``Z = water_z``.

Ring camera ``i`` sits at azimuth ``2π i / n`` around the ring centre. Its image x axis is the ring
tangent and its optical axis is tilted by ``ring_tilt_deg`` from the vertical towards the ring
centre, so the bottom rows of its image look inwards and all views overlap over the centre.
The auxiliary camera looks straight down from the ring centre (``R ≈ I``).
"""

from __future__ import annotations

import math

import numpy as np

from aquamvs_core.camera.calibration import CameraCalibration, Interface, Rig, calibration_hash
from aquamvs_core.synthetic.config import SyntheticSurveyConfig

RIG_STREAM = 1  # random stream id (independent of the terrain and texture streams)
AUX_NAME = "aux"


def ring_name(i: int) -> str:
    return f"cam{i}"


def ring_center(config: SyntheticSurveyConfig) -> np.ndarray:
    """(3,) world position of the ring centre (the rig centre), metres."""
    return np.array([-config.ring_radius, 0.0, 0.0])


def _rotvec_matrix(w: np.ndarray) -> np.ndarray:
    """Rotation matrix of the rotation vector ``w`` (Rodrigues)."""
    angle = float(np.linalg.norm(w))
    if angle == 0.0:
        return np.eye(3)
    a = w / angle
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def _ring_rotation(azimuth: float, tilt: float) -> np.ndarray:
    """World→camera rotation of a ring camera at ``azimuth`` tilted by ``tilt`` towards the centre."""
    e_r = np.array([math.cos(azimuth), math.sin(azimuth), 0.0])  # outwards from the ring centre
    e_t = np.array([-math.sin(azimuth), math.cos(azimuth), 0.0])  # tangent
    z_c = math.cos(tilt) * np.array([0.0, 0.0, 1.0]) - math.sin(tilt) * e_r
    x_c = e_t
    y_c = np.cross(z_c, x_c)
    return np.stack([x_c, y_c, z_c])  # rows: camera axes in world coordinates


def _intrinsics(width: int, height: int, focal: float, rng: np.random.Generator) -> np.ndarray:
    cx = (width - 1) / 2 + rng.normal(0.0, 0.005 * width)
    cy = (height - 1) / 2 + rng.normal(0.0, 0.005 * width)
    fy = focal * (1.0 + rng.normal(0.0, 1e-3))
    return np.array([[focal, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def make_rig(config: SyntheticSurveyConfig) -> Rig:
    """The synthetic rig: ``cam0 … cam{n-1}`` (pinhole, radial-tangential) and ``aux`` (fisheye).

    Deterministic for ``config.seed``. ``content_hash`` is computed; ``source`` is empty.
    """
    rng = np.random.default_rng([config.seed, RIG_STREAM])
    width, height = config.image_size
    focal = (width / 2) / math.tan(math.radians(config.horizontal_fov_deg) / 2)
    tilt = math.radians(config.ring_tilt_deg)
    center = ring_center(config)
    rot_sigma = math.radians(config.rotation_jitter_deg)

    cameras: dict[str, CameraCalibration] = {}
    for i in range(config.n_ring_cameras):
        azimuth = 2 * math.pi * i / config.n_ring_cameras
        pos = center + config.ring_radius * np.array([math.cos(azimuth), math.sin(azimuth), 0.0])
        jitter = rng.normal(0.0, config.position_jitter, 3)
        rot_jitter = rng.normal(0.0, rot_sigma, 3)
        pos = np.zeros(3) if i == 0 else pos + jitter  # the reference camera defines the origin
        R = _ring_rotation(azimuth, tilt) @ _rotvec_matrix(rot_jitter).T
        K = _intrinsics(width, height, focal, rng)
        k1 = float(np.clip(-0.03 + 0.008 * rng.normal(), -0.05, -0.01))
        k2 = float(np.clip(0.01 + 0.004 * rng.normal(), 0.0, 0.02))
        p1, p2 = (float(v) for v in np.clip(rng.normal(0.0, 3e-4, 2), -1e-3, 1e-3))
        k3 = float(np.clip(-0.002 + 0.001 * rng.normal(), -0.005, 0.0))
        dist = np.array([k1, k2, p1, p2, k3]) if config.lens_distortion else np.zeros(5)
        cameras[ring_name(i)] = CameraCalibration(
            name=ring_name(i), K=K, dist_coeffs=dist, image_size=(width, height), R=R, t=-R @ pos
        )

    if config.auxiliary_camera:
        half = math.radians(config.aux_horizontal_fov_deg) / 2
        focal_aux = (width / 2) / half  # equidistant: r = f θ
        pos = center + rng.normal(0.0, config.position_jitter, 3)
        R = _rotvec_matrix(rng.normal(0.0, rot_sigma, 3)).T
        K = _intrinsics(width, height, focal_aux, rng)
        k = np.array([0.02, -0.004, 0.001, -0.0002]) + rng.normal(0.0, [0.004, 0.001, 0.0003, 5e-5])
        dist = k if config.lens_distortion else np.zeros(4)
        cameras[AUX_NAME] = CameraCalibration(
            name=AUX_NAME,
            K=K,
            dist_coeffs=dist,
            image_size=(width, height),
            R=R,
            t=-R @ pos,
            is_fisheye=True,
            is_auxiliary=True,
        )

    interface = Interface(water_z=config.water_z, n_air=config.n_air, n_water=config.n_water)
    return Rig(
        cameras=cameras,
        interface=interface,
        content_hash=calibration_hash(cameras, interface),
        extra={"metadata": config.metadata()},
    )
