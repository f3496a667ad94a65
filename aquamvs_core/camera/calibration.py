"""AquaCal calibration: loading, validation, writing and content hashing.

Conventions (the single place they are stated for the whole project):

* **World frame**: metres, origin at the reference camera, **Z points down** into the water.
  The water surface is the horizontal plane ``Z = water_z``; underwater points have ``Z > water_z``.
  The interface normal ``[0, 0, -1]`` points from water to air. A tilted normal is rejected.
* **Camera frame**: OpenCV (x right, y down, z forward); ``p_cam = R @ p_world + t`` (world→camera).
* **Pixels**: ``(u, v)`` = (column, row); integer values are pixel *centres* (OpenCV convention).
  Image sizes are ``(width, height)``; image arrays are ``(H, W, 3)`` uint8 in **RGB** order.
* **Lens model**: ``dist_coeffs`` are OpenCV's radial-tangential ``[k1, k2, p1, p2, k3(, k4, k5, k6)]``
  for pinhole cameras, or OpenCV's equidistant fisheye ``[k1, k2, k3, k4]`` when ``is_fisheye``.
* **Depth**: "ray depth" is the distance in metres along the *refracted* ray from its origin on the
  water surface (see :mod:`aquamvs_core.camera.refraction`); "world Z" is the Z coordinate. They are
  never mixed.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aquamvs_core.files import atomic_write_text

SUPPORTED_VERSIONS = ("1.0",)
FORBIDDEN_NAME_CHARS = set("|,[]/\\ ")
ORTHONORMAL_TOL = 1e-6


class CalibrationError(ValueError):
    """Raised for an invalid calibration file; the message names the file and the field."""


@dataclass(frozen=True)
class Interface:
    """The flat air–water interface.

    Attributes:
        water_z: world Z of the water plane, metres (positive: below the reference camera).
        n_air: refractive index above the surface.
        n_water: refractive index below the surface.
    """

    water_z: float
    n_air: float = 1.0
    n_water: float = 1.333


@dataclass(frozen=True)
class CameraCalibration:
    """One camera of the rig, as calibrated (distorted-image intrinsics).

    Attributes:
        name: camera name (also its key in the calibration file).
        K: (3, 3) float64 intrinsics of the *distorted* image.
        dist_coeffs: (5,) or (8,) radial-tangential, or (4,) fisheye coefficients.
        image_size: (width, height) in pixels.
        R: (3, 3) float64 world→camera rotation.
        t: (3,) float64 world→camera translation, metres.
        is_fisheye: equidistant fisheye lens model.
        is_auxiliary: an auxiliary camera (e.g. a central wide-angle one), used as a source only.
    """

    name: str
    K: np.ndarray
    dist_coeffs: np.ndarray
    image_size: tuple[int, int]
    R: np.ndarray
    t: np.ndarray
    is_fisheye: bool = False
    is_auxiliary: bool = False

    @property
    def center(self) -> np.ndarray:
        """(3,) camera centre in world coordinates, metres: ``-R.T @ t``."""
        return -self.R.T @ self.t


@dataclass(frozen=True)
class Rig:
    """A validated calibration: cameras in file order, the interface, and provenance."""

    cameras: dict[str, CameraCalibration]
    interface: Interface
    source: str = ""
    content_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def camera_names(self) -> list[str]:
        return list(self.cameras)

    @property
    def primary_names(self) -> list[str]:
        return [n for n, c in self.cameras.items() if not c.is_auxiliary]

    @property
    def auxiliary_names(self) -> list[str]:
        return [n for n, c in self.cameras.items() if c.is_auxiliary]

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) shared by all cameras."""
        return next(iter(self.cameras.values())).image_size

    @property
    def short_hash(self) -> str:
        return self.content_hash[:12]

    def __getitem__(self, name: str) -> CameraCalibration:
        if name not in self.cameras:
            raise KeyError(f"unknown camera {name!r}; the calibration has {self.camera_names}")
        return self.cameras[name]


# --------------------------------------------------------------------------------------------
# Serialisation
# --------------------------------------------------------------------------------------------


def rig_to_dict(rig: Rig) -> dict[str, Any]:
    """AquaCal "1.0" JSON structure of ``rig`` (the fields this project uses, plus ``rig.extra``)."""
    cameras = {}
    for name, cam in rig.cameras.items():
        entry: dict[str, Any] = {
            "name": name,
            "intrinsics": {
                "K": np.asarray(cam.K, dtype=float).tolist(),
                "dist_coeffs": np.asarray(cam.dist_coeffs, dtype=float).tolist(),
                "image_size": [int(cam.image_size[0]), int(cam.image_size[1])],
            },
            "extrinsics": {
                "R": np.asarray(cam.R, dtype=float).tolist(),
                "t": np.asarray(cam.t, dtype=float).tolist(),
            },
            "water_z": float(rig.interface.water_z),
        }
        if cam.is_fisheye:
            entry["intrinsics"]["is_fisheye"] = True
        if cam.is_auxiliary:
            entry["is_auxiliary"] = True
        cameras[name] = entry
    out: dict[str, Any] = {
        "version": "1.0",
        "cameras": cameras,
        "interface": {
            "normal": [0.0, 0.0, -1.0],
            "n_air": float(rig.interface.n_air),
            "n_water": float(rig.interface.n_water),
        },
    }
    out.update(rig.extra)
    return out


def save_calibration(rig: Rig, path: str | Path) -> Path:
    """Write ``rig`` as AquaCal "1.0" JSON, atomically (:func:`~aquamvs_core.files.atomic_write_text`)."""
    return atomic_write_text(path, json.dumps(rig_to_dict(rig), indent=2))


def calibration_hash(cameras: dict[str, CameraCalibration], interface: Interface) -> str:
    """SHA-256 of the canonical geometric content (independent of JSON formatting and key order
    of optional sections). Floats are rounded to 12 significant digits so that a JSON round trip
    keeps the hash."""

    def canon(a: Any) -> Any:
        # "+ 0.0" folds -0.0 into 0.0: the same geometry must not hash differently.
        return [float(f"{x:.12g}") + 0.0 for x in np.asarray(a, dtype=float).ravel()]

    payload = {
        "interface": canon([interface.water_z, interface.n_air, interface.n_water]),
        "cameras": [
            {
                "name": c.name,
                "K": canon(c.K),
                "dist": canon(c.dist_coeffs),
                "size": list(c.image_size),
                "R": canon(c.R),
                "t": canon(c.t),
                "fisheye": c.is_fisheye,
                "aux": c.is_auxiliary,
            }
            for c in cameras.values()
        ],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


class _Validator:
    """Builds error messages of the form ``<file>: <field.path>: <problem>``."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, fld: str, problem: str) -> CalibrationError:
        return CalibrationError(f"{self.source}: {fld}: {problem}")

    def get(self, obj: Any, key: str, fld: str) -> Any:
        if not isinstance(obj, dict):
            raise self.fail(fld.rsplit(".", 1)[0], f"expected an object, got {type(obj).__name__}")
        if key not in obj:
            raise self.fail(f"{fld}", "missing required field")
        return obj[key]

    def array(self, value: Any, fld: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise self.fail(fld, f"not a numeric array ({exc})") from None
        if shape is not None and arr.shape != shape:
            raise self.fail(fld, f"expected shape {shape}, got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise self.fail(fld, "contains NaN or infinite values")
        return arr

    def number(self, value: Any, fld: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(fld, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise self.fail(fld, f"must be finite, got {value!r}")
        return float(value)


def load_calibration(path: str | Path, required_cameras: list[str] | None = None) -> Rig:
    """Load and validate an AquaCal calibration JSON file.

    Args:
        path: the calibration file.
        required_cameras: camera names that must be present (e.g. those with video inputs).

    Returns:
        The validated :class:`Rig`, with ``source`` set to the path and ``content_hash`` computed.

    Raises:
        CalibrationError: naming the file and the offending field.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise CalibrationError(f"{source}: calibration file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"{source}: not valid JSON ({exc})") from None
    return parse_calibration(data, source=source, required_cameras=required_cameras)


def parse_calibration(
    data: dict[str, Any], source: str = "<calibration>", required_cameras: list[str] | None = None
) -> Rig:
    """Validate an already-parsed AquaCal JSON object (see :func:`load_calibration`)."""
    v = _Validator(source)
    if not isinstance(data, dict):
        raise v.fail("<root>", "expected a JSON object")
    version = str(v.get(data, "version", "version"))
    if version not in SUPPORTED_VERSIONS:
        raise v.fail("version", f"unsupported serialization version {version!r} (supported: 1.0)")

    iface = v.get(data, "interface", "interface")
    normal = v.array(v.get(iface, "normal", "interface.normal"), "interface.normal", (3,))
    norm = np.linalg.norm(normal)
    if norm == 0 or np.abs(normal / norm - np.array([0.0, 0.0, -1.0])).max() > 1e-9:
        raise v.fail(
            "interface.normal",
            f"tilted or inverted interface normal {normal.tolist()} is not supported: "
            "this model requires a horizontal water surface with normal [0, 0, -1]",
        )
    n_air = v.number(iface.get("n_air", 1.0), "interface.n_air")
    n_water = v.number(iface.get("n_water", 1.333), "interface.n_water")
    if n_air <= 0 or n_water <= 0:
        raise v.fail("interface", f"refractive indices must be positive (n_air={n_air}, n_water={n_water})")
    if n_water <= n_air:
        raise v.fail("interface.n_water", f"must exceed n_air ({n_water} <= {n_air})")

    cams_raw = v.get(data, "cameras", "cameras")
    if not isinstance(cams_raw, dict) or not cams_raw:
        raise v.fail("cameras", "expected a non-empty object of cameras")

    cameras: dict[str, CameraCalibration] = {}
    water_zs: dict[str, float] = {}
    for key, raw in cams_raw.items():
        f = f"cameras.{key}"
        if not isinstance(raw, dict):
            raise v.fail(f, "expected an object")
        name = str(raw.get("name", key))
        if name != key:
            raise v.fail(f"{f}.name", f"name {name!r} differs from its key {key!r}")
        if not name or set(name) & FORBIDDEN_NAME_CHARS:
            raise v.fail(f"{f}.name", f"camera name {name!r} is empty or contains one of '|,[]/\\ '")

        intr = v.get(raw, "intrinsics", f"{f}.intrinsics")
        K = v.array(v.get(intr, "K", f"{f}.intrinsics.K"), f"{f}.intrinsics.K", (3, 3))
        if abs(np.linalg.det(K)) < 1e-9 or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise v.fail(f"{f}.intrinsics.K", "singular or invalid K (focal lengths must be positive)")
        if np.abs(K[2] - np.array([0.0, 0.0, 1.0])).max() > 1e-9 or K[1, 0] != 0:
            raise v.fail(f"{f}.intrinsics.K", f"last row must be [0, 0, 1] and K[1,0] zero, got {K.tolist()}")
        is_fisheye = bool(intr.get("is_fisheye", False))
        dist_field = f"{f}.intrinsics.dist_coeffs"
        dist = v.array(v.get(intr, "dist_coeffs", dist_field), dist_field).ravel()
        allowed = (4,) if is_fisheye else (5, 8)
        if dist.size not in allowed:
            kind = "fisheye" if is_fisheye else "pinhole"
            raise v.fail(dist_field, f"{kind} model needs {allowed} coefficients, got {dist.size}")
        size_raw = v.get(intr, "image_size", f"{f}.intrinsics.image_size")
        size = v.array(size_raw, f"{f}.intrinsics.image_size", (2,))
        if np.any(size <= 0) or np.any(size != np.round(size)):
            raise v.fail(
                f"{f}.intrinsics.image_size", f"must be two positive integers [width, height], got {size_raw}"
            )
        image_size = (int(size[0]), int(size[1]))

        extr = v.get(raw, "extrinsics", f"{f}.extrinsics")
        R = v.array(v.get(extr, "R", f"{f}.extrinsics.R"), f"{f}.extrinsics.R", (3, 3))
        err = np.abs(R.T @ R - np.eye(3)).max()
        if err > ORTHONORMAL_TOL or np.linalg.det(R) < 0:
            raise v.fail(
                f"{f}.extrinsics.R",
                f"not a rotation (max |RᵀR - I| = {err:.2e}, det = {np.linalg.det(R):.6f})",
            )
        t = v.array(v.get(extr, "t", f"{f}.extrinsics.t"), f"{f}.extrinsics.t").ravel()
        if t.shape != (3,):
            raise v.fail(f"{f}.extrinsics.t", f"expected 3 values, got {t.size}")

        if "water_z" in raw:
            water_zs[name] = v.number(raw["water_z"], f"{f}.water_z")
        elif "interface_distance" in raw:
            water_zs[name] = v.number(raw["interface_distance"], f"{f}.interface_distance")
        else:
            raise v.fail(f"{f}.water_z", "missing required field (or legacy interface_distance)")

        cameras[name] = CameraCalibration(
            name=name,
            K=K,
            dist_coeffs=dist,
            image_size=image_size,
            R=R,
            t=t,
            is_fisheye=is_fisheye,
            is_auxiliary=bool(raw.get("is_auxiliary", False)),
        )

    zs = np.array(list(water_zs.values()))
    if zs.max() - zs.min() > 1e-6:
        raise v.fail("cameras.*.water_z", f"cameras disagree on the water plane Z: {water_zs}")
    water_z = float(np.median(zs))

    sizes = {n: c.image_size for n, c in cameras.items()}
    if len(set(sizes.values())) > 1:
        raise v.fail("cameras.*.intrinsics.image_size", f"image sizes differ between cameras: {sizes}")

    for name, cam in cameras.items():
        cz = float(cam.center[2])
        if cz >= water_z:
            raise v.fail(
                f"cameras.{name}.extrinsics",
                f"camera centre is at or below the water surface (Z={cz:.4f} m >= water_z={water_z:.4f} m)",
            )

    if required_cameras:
        missing = [n for n in required_cameras if n not in cameras]
        if missing:
            raise v.fail("cameras", f"missing camera(s) {missing}; the calibration has {list(cameras)}")

    interface = Interface(water_z=water_z, n_air=n_air, n_water=n_water)
    extra = {k: data[k] for k in ("board", "diagnostics", "metadata") if k in data}
    return Rig(
        cameras=cameras,
        interface=interface,
        source=source,
        content_hash=calibration_hash(cameras, interface),
        extra=extra,
    )
