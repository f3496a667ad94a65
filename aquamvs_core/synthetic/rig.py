"""Rig layout of the synthetic survey: a ring of inward-tilted cameras plus a central fisheye, or
a grid of cameras looking nearly straight down (a lab rig).

The world frame is the project's (world Z down, metres): the origin is the centre of the reference
camera ``cam0``. Every camera centre lies near ``Z = 0`` (the reference exactly, the others with a
small jitter), above the water plane ``Z = water_z``.

* ``ring`` (default): ring camera ``i`` sits at azimuth ``2π i / n`` around the ring centre
  ``(-ring_radius, 0, 0)``. Its image x axis is the ring tangent and its optical axis is tilted by
  ``ring_tilt_deg`` from the vertical towards the ring centre, so the bottom rows of its image look
  inwards and all views overlap over the centre.
* ``grid``: ``rows × columns`` cameras ``grid_spacing`` apart, ``cam0`` at the corner
  ``(0, 0)``, camera ``r * columns + c`` at ``(c, r) * grid_spacing``; image x along world X, each
  optical axis tilted from the vertical by an angle drawn in ``grid_tilt_deg`` towards a random
  azimuth.

The auxiliary camera looks straight down from the rig centre (``R ≈ I``). Lens models:
:mod:`aquamvs_core.synthetic.lenses`.
"""

from __future__ import annotations

import math

import numpy as np

from aquamvs_core.camera.calibration import CameraCalibration, Interface, Rig, calibration_hash
from aquamvs_core.synthetic.config import SyntheticSurveyConfig
from aquamvs_core.synthetic.lenses import focal_for_fov, lab_coefficients, mild_pinhole_coefficients

RIG_STREAM = 1  # random stream id (independent of the terrain and texture streams)
AUX_NAME = "aux"


def ring_name(i: int) -> str:
    return f"cam{i}"


def rig_center(config: SyntheticSurveyConfig) -> np.ndarray:
    """(3,) world position of the rig centre (ring centre, or centre of the grid), metres."""
    if config.rig_layout == "grid":
        rows, cols = config.grid_shape
        return np.array([(cols - 1) / 2 * config.grid_spacing, (rows - 1) / 2 * config.grid_spacing, 0.0])
    return np.array([-config.ring_radius, 0.0, 0.0])


ring_center = rig_center  # the name of earlier versions


def rig_radius(config: SyntheticSurveyConfig) -> float:
    """Horizontal distance from the rig centre to its farthest primary camera, metres."""
    if config.rig_layout == "grid":
        rows, cols = config.grid_shape
        return 0.5 * config.grid_spacing * math.hypot(rows - 1, cols - 1)
    return config.ring_radius


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


def _tilted_down(azimuth: float, tilt: float) -> np.ndarray:
    """World→camera rotation of a camera looking down (image x along world X) tilted by ``tilt``
    towards ``azimuth``."""
    z_c = np.array([math.sin(tilt) * math.cos(azimuth), math.sin(tilt) * math.sin(azimuth), math.cos(tilt)])
    x_c = np.array([1.0, 0.0, 0.0]) - z_c[0] * z_c
    x_c /= np.linalg.norm(x_c)
    return np.stack([x_c, np.cross(z_c, x_c), z_c])


def _intrinsics(width: int, height: int, focal: float, rng: np.random.Generator) -> np.ndarray:
    cx = (width - 1) / 2 + rng.normal(0.0, 0.005 * width)
    cy = (height - 1) / 2 + rng.normal(0.0, 0.005 * width)
    fy = focal * (1.0 + rng.normal(0.0, 1e-3))
    return np.array([[focal, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def n_primary_cameras(config: SyntheticSurveyConfig) -> int:
    return (
        config.grid_shape[0] * config.grid_shape[1] if config.rig_layout == "grid" else config.n_ring_cameras
    )


def _primary_pose(
    config: SyntheticSurveyConfig, rng: np.random.Generator, i: int
) -> tuple[np.ndarray, np.ndarray]:
    """(R, centre) of primary camera ``i`` (draws its jitter from ``rng``)."""
    rot_sigma = math.radians(config.rotation_jitter_deg)
    if config.rig_layout == "grid":
        r, c = divmod(i, config.grid_shape[1])
        pos = np.array([c * config.grid_spacing, r * config.grid_spacing, 0.0])
        jitter = rng.normal(0.0, config.position_jitter, 3)
        tilt = math.radians(rng.uniform(*config.grid_tilt_deg))
        azimuth = rng.uniform(0.0, 2 * math.pi)
        roll = _rotvec_matrix(np.array([0.0, 0.0, rng.normal(0.0, rot_sigma)]))
        return roll @ _tilted_down(azimuth, tilt), (pos if i == 0 else pos + jitter)
    azimuth = 2 * math.pi * i / config.n_ring_cameras
    pos = rig_center(config) + config.ring_radius * np.array([math.cos(azimuth), math.sin(azimuth), 0.0])
    jitter = rng.normal(0.0, config.position_jitter, 3)
    rot_jitter = rng.normal(0.0, rot_sigma, 3)
    pos = np.zeros(3) if i == 0 else pos + jitter  # the reference camera defines the origin
    R = _ring_rotation(azimuth, math.radians(config.ring_tilt_deg)) @ _rotvec_matrix(rot_jitter).T
    return R, pos


def make_rig(config: SyntheticSurveyConfig) -> Rig:
    """The synthetic rig: ``cam0 … cam{n-1}`` (pinhole, radial-tangential) and ``aux`` (fisheye).

    Deterministic for ``config.seed``. ``content_hash`` is computed; ``source`` is empty.
    """
    rng = np.random.default_rng([config.seed, RIG_STREAM])
    width, height = config.image_size
    focal = (width / 2) / math.tan(math.radians(config.horizontal_fov_deg) / 2)
    center = rig_center(config)
    rot_sigma = math.radians(config.rotation_jitter_deg)
    n_primary = n_primary_cameras(config)
    lab = lab_coefficients(config, n_primary) if config.lens_profile == "lab" else None

    cameras: dict[str, CameraCalibration] = {}
    for i in range(n_primary):
        R, pos = _primary_pose(config, rng, i)
        f = focal if lab is None else focal_for_fov(lab[i], width, config.horizontal_fov_deg)
        K = _intrinsics(width, height, f, rng)
        mild = mild_pinhole_coefficients(rng)  # drawn for every lens: the poses do not depend on the lenses
        dist = (mild if lab is None else lab[i]) if config.lens_distortion else np.zeros(5)
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
