"""Tests of AquaCal calibration loading, validation, writing, hashing, and of pair selection."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from aquamvs_core.camera.calibration import CalibrationError, load_calibration, save_calibration
from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.stages.pairs import CameraPair, select_pairs

try:  # run from the repository root with tests/ as a package or as a plain folder
    from tests import geometry_reference as ref
except ImportError:
    import geometry_reference as ref

WATER_Z = 0.7
IMAGE_SIZE = [1600, 1200]
# Irregular ring so that every camera has a unique nearest-neighbour order.
RING_DEG = [0.0, 62.0, 139.0, 228.0, 301.0]
RING_RADIUS = 0.3


def rig_centres() -> dict[str, np.ndarray]:
    """Camera centres, world frame: primaries on a ring (cam0, the reference, at the origin) and a
    fisheye auxiliary at the ring's centre, 5 cm higher."""
    ring = np.array([[math.cos(math.radians(a)), math.sin(math.radians(a)), 0.0] for a in RING_DEG])
    ring *= RING_RADIUS
    centre = -ring[0]
    out = {f"cam{i}": ring[i] + centre for i in range(len(RING_DEG))}
    out["wide"] = centre + np.array([0.0, 0.0, -0.05])
    return out


def make_rig_dict(water_key: str = "water_z") -> dict[str, Any]:
    """A valid AquaCal "1.0" calibration: five pinhole cameras on a ring, tilted 10° inwards, and
    one nadir fisheye auxiliary camera; ``R`` proper rotations and ``t = -R C``."""
    centres = rig_centres()
    cameras: dict[str, Any] = {}
    for i, (name, c) in enumerate(centres.items()):
        aux = name == "wide"
        if aux:
            rot_cw = ref.camera_to_world_rotation(0.2, 0.0, 0.0)
            K = [[600.0, 0.0, 801.0], [0.0, 600.0, 598.5], [0.0, 0.0, 1.0]]
            dist = [0.05, -0.01, 0.002, -0.0003]
        else:
            inward = math.atan2(centres["wide"][1] - c[1], centres["wide"][0] - c[0])
            rot_cw = ref.camera_to_world_rotation(0.1 * i, math.radians(10.0), inward)
            K = [[1400.0 + 10 * i, 0.0, 799.5 + i], [0.0, 1401.0 + 10 * i, 599.5 - i], [0.0, 0.0, 1.0]]
            dist = [-0.1 + 0.01 * i, 0.05, 0.001, -0.0005, -0.01]
        R = rot_cw.T
        entry: dict[str, Any] = {
            "name": name,
            "intrinsics": {"K": K, "dist_coeffs": dist, "image_size": list(IMAGE_SIZE)},
            "extrinsics": {"R": R.tolist(), "t": (-R @ c).tolist()},
            water_key: WATER_Z,
        }
        if aux:
            entry["intrinsics"]["is_fisheye"] = True
            entry["is_auxiliary"] = True
        cameras[name] = entry
    return {
        "version": "1.0",
        "cameras": cameras,
        "interface": {"normal": [0.0, 0.0, -1.0], "n_air": 1.0, "n_water": 1.333},
    }


def write(tmp_path: Path, data: Any, name: str = "calib.json", **dumps: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, **dumps))
    return path


def set_centre(cam: dict[str, Any], centre: list[float]) -> None:
    R = np.array(cam["extrinsics"]["R"])
    cam["extrinsics"]["t"] = (-R @ np.array(centre)).tolist()


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return write(tmp_path, make_rig_dict(), indent=2)


# ---------------------------------------------------------------------------------------------
# Loading a good file
# ---------------------------------------------------------------------------------------------


def test_good_file_loads(good: Path):
    data = make_rig_dict()
    rig = load_calibration(good)
    assert rig.source == str(good)
    assert rig.camera_names == ["cam0", "cam1", "cam2", "cam3", "cam4", "wide"]
    assert rig.primary_names == ["cam0", "cam1", "cam2", "cam3", "cam4"]
    assert rig.auxiliary_names == ["wide"]
    assert rig.image_size == (1600, 1200)  # (width, height)
    assert rig.interface.water_z == WATER_Z
    assert rig.interface.n_air == 1.0 and rig.interface.n_water == 1.333
    assert re.fullmatch(r"[0-9a-f]{64}", rig.content_hash)
    assert rig.short_hash == rig.content_hash[:12]

    for name, centre in rig_centres().items():
        cam, raw = rig[name], data["cameras"][name]
        assert cam.name == name
        np.testing.assert_array_equal(cam.K, raw["intrinsics"]["K"])
        np.testing.assert_array_equal(cam.dist_coeffs, raw["intrinsics"]["dist_coeffs"])
        np.testing.assert_array_equal(cam.R, raw["extrinsics"]["R"])
        np.testing.assert_array_equal(cam.t, raw["extrinsics"]["t"])
        assert cam.image_size == (1600, 1200)
        assert cam.is_fisheye == cam.is_auxiliary == (name == "wide")
        np.testing.assert_allclose(cam.center, centre, atol=1e-12)
        assert cam.K.dtype == cam.R.dtype == cam.t.dtype == np.float64
    np.testing.assert_allclose(rig["cam0"].center, 0.0, atol=1e-12)  # the reference camera
    with pytest.raises(KeyError, match="nope"):
        rig["nope"]


def test_legacy_interface_distance_key(tmp_path: Path, good: Path):
    legacy = load_calibration(write(tmp_path, make_rig_dict("interface_distance"), "legacy.json"))
    assert legacy.interface.water_z == WATER_Z
    assert legacy.content_hash == load_calibration(good).content_hash


def test_required_cameras_present(good: Path):
    rig = load_calibration(good, required_cameras=["cam3", "wide"])
    assert "cam3" in rig.cameras


def test_refractive_camera_from_calibration(good: Path):
    rig = load_calibration(good)
    cam = RefractiveCamera.from_calibration(rig["cam2"], rig.interface)
    np.testing.assert_allclose(cam.center.numpy(), rig["cam2"].center, atol=1e-15)
    assert cam.water_z == WATER_Z and cam.n_water == 1.333 and cam.image_size == (1600, 1200)
    o, d, valid = cam.cast_ray(torch.tensor([[800.0, 600.0]], dtype=torch.float64))
    assert bool(valid.all()) and abs(float(o[0, 2]) - WATER_Z) < 1e-12 and float(d[0, 2]) > 0


# ---------------------------------------------------------------------------------------------
# Writing and the content hash
# ---------------------------------------------------------------------------------------------


def test_save_load_round_trip_keeps_hash(tmp_path: Path, good: Path):
    rig = load_calibration(good)
    saved = save_calibration(rig, tmp_path / "sub" / "saved.json")
    assert saved.is_file() and not list(saved.parent.glob("*.tmp"))
    again = load_calibration(saved)
    assert again.content_hash == rig.content_hash
    assert again.camera_names == rig.camera_names
    for name in rig.camera_names:
        for attr in ("K", "dist_coeffs", "R", "t"):
            np.testing.assert_array_equal(getattr(again[name], attr), getattr(rig[name], attr))
        assert again[name].is_fisheye == rig[name].is_fisheye
        assert again[name].is_auxiliary == rig[name].is_auxiliary
    assert again.interface == rig.interface


def test_save_keeps_metadata_section(tmp_path: Path):
    data = make_rig_dict()
    data["metadata"] = {"operator": "x", "date": "2024-06-11"}
    rig = load_calibration(write(tmp_path, data))
    again = load_calibration(save_calibration(rig, tmp_path / "saved.json"))
    assert again.extra["metadata"] == data["metadata"]


def _formatting_variants() -> list[tuple[str, Callable[[dict[str, Any]], tuple[Any, dict[str, Any]]]]]:
    def compact(d):
        return d, {"separators": (",", ":")}

    def indent4_sorted(d):
        return d, {"indent": 4, "sort_keys": True}

    def with_metadata(d):
        d["metadata"] = {"note": "added later", "tool": {"name": "aquacal", "version": "9"}}
        d["diagnostics"] = {"reprojection_rms": 0.31}
        return d, {"indent": 1}

    def integers_and_negative_zero(d):
        # 1400.0 written as 1400, 0.0 as -0.0: the same numbers.
        K = d["cameras"]["cam0"]["intrinsics"]["K"]
        K[0][0], K[2][2], K[1][0] = 1400, 1, -0.0
        d["cameras"]["cam1"]["intrinsics"]["image_size"] = [1600.0, 1200.0]
        d["interface"]["normal"] = [0, 0, -1]
        return d, {}

    def reordered_keys(d):
        d = dict(reversed(list(d.items())))
        d["cameras"] = {k: dict(reversed(list(v.items()))) for k, v in d["cameras"].items()}
        return d, {}

    return [
        ("compact", compact),
        ("indent4_sorted", indent4_sorted),
        ("metadata", with_metadata),
        ("integers_and_negative_zero", integers_and_negative_zero),
        ("reordered_keys", reordered_keys),
    ]


@pytest.mark.parametrize("variant", _formatting_variants(), ids=lambda v: v[0])
def test_hash_ignores_formatting_and_metadata(tmp_path: Path, good: Path, variant):
    data, dumps = variant[1](make_rig_dict())
    other = load_calibration(write(tmp_path, data, "variant.json", **dumps))
    assert other.content_hash == load_calibration(good).content_hash


def _rotate(cam: dict[str, Any], angle: float) -> None:
    """Turn a camera about its own centre by ``angle`` (stays a proper rotation)."""
    R = np.array(cam["extrinsics"]["R"])
    centre = -R.T @ np.array(cam["extrinsics"]["t"])
    cam["extrinsics"]["R"] = (ref.axis_angle_matrix([0.3, -0.2, 1.0], angle) @ R).tolist()
    set_centre(cam, centre.tolist())


def _all_cams(fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def apply(d: dict[str, Any]) -> None:
        for cam in d["cameras"].values():
            fn(cam)

    return apply


def _rename(d: dict[str, Any]) -> None:
    cam = d["cameras"].pop("cam4")
    cam["name"] = "cam5"
    d["cameras"]["cam5"] = cam


GEOMETRY_CHANGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "fx": lambda d: d["cameras"]["cam1"]["intrinsics"]["K"][0].__setitem__(0, 1410.0 + 1e-6),
    "cy": lambda d: d["cameras"]["cam2"]["intrinsics"]["K"][1].__setitem__(2, 597.5 + 1e-5),
    "dist": lambda d: d["cameras"]["cam3"]["intrinsics"]["dist_coeffs"].__setitem__(4, -0.0100001),
    "fisheye_dist": lambda d: d["cameras"]["wide"]["intrinsics"]["dist_coeffs"].__setitem__(0, 0.0501),
    "R": lambda d: _rotate(d["cameras"]["cam0"], 1e-7),
    "t": lambda d: d["cameras"]["cam4"]["extrinsics"]["t"].__setitem__(1, 0.1234567),
    "water_z": _all_cams(lambda c: c.__setitem__("water_z", WATER_Z + 1e-7)),
    "n_water": lambda d: d["interface"].__setitem__("n_water", 1.334),
    "n_air": lambda d: d["interface"].__setitem__("n_air", 1.0003),
    "image_size": _all_cams(lambda c: c["intrinsics"].__setitem__("image_size", [1920, 1080])),
    "auxiliary_flag": lambda d: d["cameras"]["cam4"].__setitem__("is_auxiliary", True),
    "name": _rename,
}


@pytest.mark.parametrize("change", list(GEOMETRY_CHANGES), ids=str)
def test_hash_changes_with_any_geometric_value(tmp_path: Path, good: Path, change: str):
    data = make_rig_dict()
    GEOMETRY_CHANGES[change](data)
    changed = load_calibration(write(tmp_path, data, "changed.json"))
    assert changed.content_hash != load_calibration(good).content_hash


# ---------------------------------------------------------------------------------------------
# Invalid files: each error names the file and the field
# ---------------------------------------------------------------------------------------------


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(d: dict[str, Any]) -> None:
        obj = d
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value

    return apply


def _delete(path: list[Any]) -> Callable[[dict[str, Any]], None]:
    def apply(d: dict[str, Any]) -> None:
        obj = d
        for key in path[:-1]:
            obj = obj[key]
        del obj[path[-1]]

    return apply


def _scale_R(d: dict[str, Any]) -> None:
    cam = d["cameras"]["cam1"]
    cam["extrinsics"]["R"] = (1.01 * np.array(cam["extrinsics"]["R"])).tolist()


def _reflect_R(d: dict[str, Any]) -> None:
    cam = d["cameras"]["cam2"]
    R = np.array(cam["extrinsics"]["R"])
    R[:, 0] *= -1.0  # orthonormal, det -1
    cam["extrinsics"]["R"] = R.tolist()


def _below_water(d: dict[str, Any]) -> None:
    set_centre(d["cameras"]["cam3"], [0.1, 0.1, WATER_Z + 0.1])


BAD_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    # (id, mutation, field named in the message, problem pattern)
    ("R_not_orthonormal", _scale_R, "cameras.cam1.extrinsics.R", "not a rotation"),
    ("R_reflection", _reflect_R, "cameras.cam2.extrinsics.R", r"not a rotation.*det = -1\.0"),
    (
        "K_singular",
        _set(["cameras", "cam0", "intrinsics", "K", 1, 1], 0.0),
        "cameras.cam0.intrinsics.K",
        "singular",
    ),
    (
        "K_bad_last_row",
        _set(["cameras", "cam0", "intrinsics", "K", 2], [0.0, 0.1, 1.0]),
        "cameras.cam0.intrinsics.K",
        "last row",
    ),
    (
        "t_nan",
        _set(["cameras", "cam2", "extrinsics", "t", 1], float("nan")),
        "cameras.cam2.extrinsics.t",
        "NaN",
    ),
    (
        "t_inf",
        _set(["cameras", "cam2", "extrinsics", "t", 0], float("inf")),
        "cameras.cam2.extrinsics.t",
        "NaN",
    ),
    (
        "t_length",
        _set(["cameras", "cam2", "extrinsics", "t"], [0.0, 0.1]),
        "cameras.cam2.extrinsics.t",
        "3 values",
    ),
    ("camera_below_water", _below_water, "cameras.cam3.extrinsics", "below the water"),
    (
        "image_sizes_differ",
        _set(["cameras", "cam4", "intrinsics", "image_size"], [1920, 1080]),
        "cameras.*.intrinsics.image_size",
        "differ",
    ),
    (
        "image_size_not_integer",
        _set(["cameras", "cam4", "intrinsics", "image_size"], [1600.5, 1200]),
        "cameras.cam4.intrinsics.image_size",
        "positive integers",
    ),
    ("missing_extrinsics", _delete(["cameras", "cam1", "extrinsics"]), "cameras.cam1.extrinsics", "missing"),
    ("missing_K", _delete(["cameras", "cam1", "intrinsics", "K"]), "cameras.cam1.intrinsics.K", "missing"),
    ("missing_water_z", _delete(["cameras", "cam0", "water_z"]), "cameras.cam0.water_z", "missing"),
    ("missing_cameras", _delete(["cameras"]), "cameras", "missing"),
    ("missing_interface", _delete(["interface"]), "interface", "missing"),
    (
        "pinhole_dist_count",
        _set(["cameras", "cam0", "intrinsics", "dist_coeffs"], [0.1, 0.0, 0.0, 0.0]),
        "cameras.cam0.intrinsics.dist_coeffs",
        r"pinhole model needs \(5, 8\) coefficients, got 4",
    ),
    (
        "fisheye_dist_count",
        _set(["cameras", "wide", "intrinsics", "dist_coeffs"], [0.1, 0.0, 0.0, 0.0, 0.0]),
        "cameras.wide.intrinsics.dist_coeffs",
        r"fisheye model needs \(4,\) coefficients, got 5",
    ),
    ("tilted_normal", _set(["interface", "normal"], [0.05, 0.0, -1.0]), "interface.normal", "tilted"),
    (
        "inverted_normal",
        _set(["interface", "normal"], [0.0, 0.0, 1.0]),
        "interface.normal",
        "tilted or inverted",
    ),
    ("n_water_equal_n_air", _set(["interface", "n_water"], 1.0), "interface.n_water", "must exceed n_air"),
    ("n_water_below_n_air", _set(["interface", "n_water"], 0.9), "interface.n_water", "must exceed n_air"),
    ("unsupported_version", _set(["version"], "2.0"), "version", "unsupported"),
    (
        "water_z_disagrees",
        _set(["cameras", "cam2", "water_z"], WATER_Z + 0.01),
        "cameras.*.water_z",
        "disagree",
    ),
    ("water_z_not_number", _set(["cameras", "cam2", "water_z"], "0.7"), "cameras.cam2.water_z", "number"),
    ("name_mismatch", _set(["cameras", "cam2", "name"], "camX"), "cameras.cam2.name", "differs"),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_invalid_calibration_names_file_and_field(tmp_path: Path, case):
    _, mutate, fld, problem = case
    data = make_rig_dict()
    mutate(data)
    path = write(tmp_path, data, "bad calib.json", indent=2)
    pattern = f"^{re.escape(str(path))}: {re.escape(fld)}: .*{problem}"
    with pytest.raises(CalibrationError, match=pattern):
        load_calibration(path)


def test_nan_is_written_as_json_nan_token(tmp_path: Path):
    data = make_rig_dict()
    data["cameras"]["cam2"]["extrinsics"]["t"][1] = float("nan")
    assert "NaN" in write(tmp_path, data).read_text()


def test_missing_required_camera(good: Path):
    pattern = f"^{re.escape(str(good))}: cameras: missing camera\\(s\\) \\['camX'\\]"
    with pytest.raises(CalibrationError, match=pattern):
        load_calibration(good, required_cameras=["cam0", "camX"])


def test_invalid_json(tmp_path: Path):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(make_rig_dict())[:-20])
    with pytest.raises(CalibrationError, match=f"^{re.escape(str(path))}: not valid JSON"):
        load_calibration(path)


def test_missing_file(tmp_path: Path):
    path = tmp_path / "absent.json"
    with pytest.raises(CalibrationError, match=f"^{re.escape(str(path))}: calibration file not found"):
        load_calibration(path)


def test_calibration_error_is_a_value_error():
    assert issubclass(CalibrationError, ValueError)


# ---------------------------------------------------------------------------------------------
# Pair selection
# ---------------------------------------------------------------------------------------------


# The geometric selection itself is tested in tests/stages/test_pairs.py; here: keys and input checks.


def test_select_pairs_names_with_dashes(tmp_path: Path):
    data = make_rig_dict()
    data["cameras"] = {k.replace("cam", "cam-"): v for k, v in data["cameras"].items()}
    for name, cam in data["cameras"].items():
        cam["name"] = name
    rig = load_calibration(write(tmp_path, data))
    pairs = select_pairs(rig, k=1)
    assert pairs and all(p.key == f"{p.ref}-{p.src}" for p in pairs)
    assert {p.ref for p in pairs} >= {"cam-0", "cam-1", "cam-2", "cam-3", "cam-4"}
    assert CameraPair("cam-0", "cam-4").key == "cam-0-cam-4"


def test_select_pairs_needs_two_primaries(tmp_path: Path):
    data = make_rig_dict()
    data["cameras"] = {n: c for n, c in data["cameras"].items() if n in ("cam0", "wide")}
    with pytest.raises(ValueError, match="at least two primary"):
        select_pairs(load_calibration(write(tmp_path, data)))
