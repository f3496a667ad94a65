"""Shared fixtures. Keep small; prefix fixture names by the area that owns them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import pytest


def _aquacal_dict(
    cameras: Sequence[str] = ("cam0", "cam1", "cam2"),
    image_size: tuple[int, int] = (64, 48),
    water_z: float = 0.5,
) -> dict[str, Any]:
    """A valid AquaCal "1.0" dict: cameras 0.1 m apart along X at Z = 0, looking down (R = I)."""
    w, h = image_size
    out: dict[str, Any] = {"version": "1.0", "cameras": {}}
    for i, name in enumerate(cameras):
        center = np.array([0.1 * i, 0.0, 0.0])
        R = np.eye(3)
        out["cameras"][name] = {
            "name": name,
            "intrinsics": {
                "K": [[60.0, 0.0, w / 2], [0.0, 60.0, h / 2], [0.0, 0.0, 1.0]],
                "dist_coeffs": [0.01, -0.002, 0.0, 0.0, 0.0],
                "image_size": [w, h],
            },
            "extrinsics": {"R": R.tolist(), "t": (-R @ center).tolist()},
            "water_z": water_z,
        }
    out["interface"] = {"normal": [0.0, 0.0, -1.0], "n_air": 1.0, "n_water": 1.333}
    return out


def _textured_frames(n: int, width: int = 64, height: int = 48, seed: int = 0) -> list[np.ndarray]:
    """``n`` (H, W, 3) uint8 RGB frames of a smooth random texture moving 1 px down and 2 px right
    per frame (compressible, so H.264 makes P/B frames, unlike pure noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 4 + 2, width // 4 + 2, 3), dtype=np.uint8)
    big = cv2.resize(coarse, (width + 2 * n + 8, height + n + 8), interpolation=cv2.INTER_CUBIC)
    return [np.ascontiguousarray(big[i : i + height, 2 * i : 2 * i + width]) for i in range(n)]


@pytest.fixture
def survey_aquacal_dict() -> Callable[..., dict[str, Any]]:
    """Factory ``(cameras=..., image_size=(w, h), water_z=0.5) -> AquaCal dict``."""
    return _aquacal_dict


@pytest.fixture
def frames_textured() -> Callable[..., list[np.ndarray]]:
    """Factory ``(n, width=64, height=48, seed=0) -> list of RGB frames``."""
    return _textured_frames


# -- synthetic survey fixtures (used by the Dagster-layer tests) --------------------------------


@pytest.fixture(scope="session")
def synthetic_small_survey(tmp_path_factory: pytest.TempPathFactory):
    """A tiny generated survey (4 ring cameras + 1 fisheye auxiliary, 160×120, 3 frames), shared
    read-only by the session. Returns the path of its survey.yaml."""
    from aquamvs_core.synthetic import SyntheticSurveyConfig, generate_survey

    config = SyntheticSurveyConfig(seed=7, n_ring_cameras=4, image_size=(160, 120), n_frames=3, supersample=1)
    return generate_survey(tmp_path_factory.mktemp("synthetic") / "survey", config)


@pytest.fixture
def synthetic_survey_file(synthetic_small_survey, tmp_path):
    """A copy of the small survey's YAML whose Zarr store is private to the test."""
    from aquamvs_core.survey import load_survey_spec

    spec = load_survey_spec(synthetic_small_survey)
    private = spec.model_copy(update={"store": str(tmp_path / "store.zarr")})
    return private.to_yaml(tmp_path / "survey.yaml")


@pytest.fixture
def ingested(synthetic_survey_file):
    """The small survey (4 ring cameras + fisheye, 160×120) with frame 0 in a private store:
    ``(spec, store, pairs)``."""
    from aquamvs_core.camera.calibration import load_calibration
    from aquamvs_core.stages.ingest import Undistorter
    from aquamvs_core.stages.pairs import survey_pairs
    from aquamvs_core.steps import ingest_frames, write_calibration
    from aquamvs_core.store import SurveyStore
    from aquamvs_core.survey import Survey, load_survey_spec

    spec = load_survey_spec(synthetic_survey_file)
    store = SurveyStore(spec.store)
    with Survey.open(spec) as survey:
        undistorter = Undistorter.for_rig(survey.rig)
        write_calibration(store, survey.rig, undistorter)
        ingest_frames(survey, store, [0], undistorter)
    pairs = survey_pairs(load_calibration(spec.calibration), spec)
    return spec, store, pairs


@pytest.fixture(scope="session")
def gt_scene():
    """4 ring cameras at 160×120 (~8 mm pixels on the bed) without an auxiliary: the rig, terrain,
    undistorted refractive cameras, renders and validity masks, and exact ground-truth depth maps
    (shared by the fusion and mesh tests)."""
    from types import SimpleNamespace

    from aquamvs_core.camera.distortion import undistorted_intrinsics
    from aquamvs_core.camera.refraction import RefractiveCamera
    from aquamvs_core.camera.undistortion import build_undistortion_map, undistort_image
    from aquamvs_core.synthetic import SyntheticSurveyConfig, make_rig, make_terrain, render_view
    from aquamvs_core.synthetic.ground_truth_views import gt_depth_maps

    config = SyntheticSurveyConfig(
        seed=7,
        n_ring_cameras=4,
        auxiliary_camera=False,
        image_size=(160, 120),
        n_frames=1,
        supersample=1,
        terrain_cell=0.002,
        texel_size=0.001,
    )
    rig, terrain = make_rig(config), make_terrain(config)
    cameras, images, masks = {}, {}, {}
    for name, cam in rig.cameras.items():
        umap = build_undistortion_map(cam, undistorted_intrinsics(cam))
        cameras[name] = RefractiveCamera.from_calibration(cam, rig.interface, umap.K_new)
        images[name] = undistort_image(render_view(cam, rig.interface, terrain, 0), umap)
        masks[name] = umap.valid.numpy()
    depth = gt_depth_maps(rig, terrain, 0)
    return SimpleNamespace(rig=rig, terrain=terrain, cameras=cameras, images=images, masks=masks, depth=depth)


# -- bed change fixtures (steps and assets) -------------------------------------------------------


@pytest.fixture
def change_store(ingested):
    """The small survey's private store with fused clouds of frames 0, 1, 2 made from the exact
    ground truth (one point at the centre of 85 % of the 1 mm cells within 0.12 m of the rig's
    centre; the bed moves between frames): ``(spec, store, gt, frames)``. The heightfield of such
    a cloud is the ground truth at the cell centres."""
    from aquamvs_core.stages.fusion import FusedCloud
    from aquamvs_core.survey import Product, product_path
    from aquamvs_core.synthetic import load_ground_truth

    spec, store, _ = ingested
    gt = load_ground_truth(spec.ground_truth)
    centre = np.array([gt.x.mean(), gt.y.mean()])
    cells = np.arange(-120, 121) * 1e-3
    xx, yy = np.meshgrid(np.round(centre[0] * 1e3) * 1e-3 + cells, np.round(centre[1] * 1e3) * 1e-3 + cells)
    xy = np.stack([xx.ravel(), yy.ravel()], axis=1)
    xy = xy[np.hypot(*(xy - centre).T) < 0.12]
    keys = []
    for index in range(3):
        keep = np.random.default_rng(index).random(len(xy)) < 0.85
        points = np.column_stack([xy[keep], gt.height_at(index, xy[keep])])
        n = len(points)
        cloud = FusedCloud(
            points,
            np.full((n, 3), 128, np.uint8),
            np.tile(np.array([0.0, 0.0, -1.0], np.float32), (n, 1)),
            np.full(n, 4, np.int32),
        )
        key = f"f{index:06d}"
        store.write_product(product_path(Product.FUSED_CLOUD, key), cloud.as_arrays(), {"frame": key})
        keys.append(key)
    return spec, store, gt, keys
