"""End to end: the whole reconstruction through Dagster for two frames of a small synthetic survey,
asserting accuracy against its ground truth (clouds, meshes, heightfields and the change between
the frames), plus the CLI contract and configuration."""

from __future__ import annotations

from pathlib import Path

import cv2
import dagster as dg
import numpy as np
import open3d as o3d
import pandas as pd
import pytest
import yaml

from aquamvs_assets.cli import _survey_name_for
from aquamvs_assets.cli import main as cli_main
from aquamvs_core.config import ConfigError, build_config
from aquamvs_core.evaluation.metrics import mesh_metrics, reconstruction_metrics
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Product, Survey, product_path
from aquamvs_core.survey.video import VideoSource
from aquamvs_core.synthetic import SyntheticSurveyConfig, generate_survey, load_ground_truth

# This survey is 320×240 (a pixel covers ~4.4 mm of the bed, against ~2.2 mm for the default
# survey) with 4 ring cameras 90° apart. Measured here: cloud median 1.01 mm, p90 2.53 mm, outliers
# 0.006 %, completeness 76.7 %. The bounds fail a 2× regression: median or p90 × 1.5, or twice the
# missing share (23 % → 46 %).
CI_TARGETS = {
    "median_abs_error_mm": 1.5,
    "p90_abs_error_mm": 3.8,
    "outlier_fraction": 0.01,
    "completeness": 0.7,
}
#: Heightfields of this coarse survey: 2 mm cells (its cloud is too sparse for 1 mm cells) and no
#: compensation of the window's blur (with ~1 mm errors it would amplify noise more than it restores
#: relief, see the README). Volumes deepened and raised between the two frames then exceed the
#: truth by +14 % and +29 %: the height noise (~1 mm) over the 1.4 m² compared adds its positive
#: part to both. The product target (10 %) is measured at 640×480 (benchmarks/change_bench.py).
CI_HEIGHTFIELD = {"cell_mm": 2.0, "psf_sigma_mm": 0.0}
VOLUME_TOLERANCE = 0.35


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon")
    config = SyntheticSurveyConfig(
        seed=11, n_ring_cameras=4, image_size=(320, 240), n_frames=2, supersample=1
    )
    survey_file = generate_survey(root / "survey", config)
    # The CLI contract's second input layout: one folder of PNG images per camera.
    images = root / "images"
    for video in sorted((survey_file.parent / "videos").glob("*.mp4")):
        (images / video.stem).mkdir(parents=True)
        for index in range(2):
            frame = VideoSource(video).read(index)
            cv2.imwrite(str(images / video.stem / f"{index:06d}.png"), np.ascontiguousarray(frame[..., ::-1]))
    return survey_file.parent, images


def test_reconstruct_cli_through_dagster_meets_accuracy_bounds(survey, tmp_path, capsys, monkeypatch):
    survey_dir, images = survey
    opened = []
    real_open = Survey.open.__func__

    def counted_open(cls, spec):
        opened.append(spec)
        return real_open(cls, spec)

    monkeypatch.setattr(Survey, "open", classmethod(counted_open))
    config_file = tmp_path / "ci.yaml"
    config_file.write_text(yaml.safe_dump({"quality": CI_TARGETS, "heightfield": CI_HEIGHTFIELD}))
    out = tmp_path / "out"
    home = tmp_path / "home"
    code = cli_main(
        [
            "reconstruct",
            str(survey_dir / "calibration.json"),
            str(images),
            str(out),
            "--frames",
            "0,1",
            "--preset",
            "fast",
            "--config",
            str(config_file),
            "--ground-truth",
            str(survey_dir / "ground_truth.npz"),
            "--dagster-home",
            str(home),
            "--mesh-format",
            "ply",
            "--mesh-format",
            "glb",
            "--profile",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    # The inputs are opened by the CLI (its checks, and the frame keys it hands on), then by each
    # frame's ingestion and by its verification (fresh decoders): 1 + 2 per frame.
    assert len(opened) == 1 + 2 * 2
    assert "quality vs ground truth (met)" in printed
    # The files, written side by side, are listed frame by frame in a fixed order.
    listed = [line.split("wrote ", 1)[1] for line in printed.splitlines() if line.startswith("wrote ")]
    per_frame = ["fused_cloud.ply", "mesh.ply", "mesh.glb", "heightfield.npz"]
    expected = [str(out / f"frame_00000{i}" / name) for i in (0, 1) for name in per_frame]
    assert listed[:8] == expected and all(Path(p).is_file() for p in listed)
    assert "top bottlenecks (profiled stages):" in printed and printed.count("% of the time") == 3

    # The files of the contract, in the world frame (metres, Z down), re-loadable.
    cloud = o3d.io.read_point_cloud(str(out / "frame_000000" / "fused_cloud.ply"))
    mesh = o3d.io.read_triangle_mesh(str(out / "frame_000000" / "mesh.ply"))
    assert (out / "frame_000000" / "mesh.glb").stat().st_size > 0
    assert cloud.has_colors() and cloud.has_normals() and len(mesh.triangles) > 1000
    gt = load_ground_truth(survey_dir / "ground_truth.npz")
    points = np.asarray(cloud.points)
    metrics = reconstruction_metrics(points, gt, 0)
    assert metrics["median_abs_error_mm"] < CI_TARGETS["median_abs_error_mm"]
    assert metrics["p90_abs_error_mm"] < CI_TARGETS["p90_abs_error_mm"]
    assert metrics["outlier_fraction"] < CI_TARGETS["outlier_fraction"]
    assert mesh_metrics(mesh, gt, 0)["median_abs_error_mm"] < CI_TARGETS["median_abs_error_mm"]
    normals_up = np.asarray(cloud.normals)[:, 2] < 0  # oriented towards the cameras (Z down)
    assert normals_up.mean() > 0.95

    _check_heightfields_and_change(out, gt)

    # Every asset was materialized through Dagster for both frames, and the quality check ran.
    instance = dg.DagsterInstance.from_config(str(home))
    survey_name = _survey_name_for(out)
    keys = (
        "frames",
        "sparse_matches",
        "sparse_cloud",
        "pairwise_depths",
        "camera_depths",
        "fused_cloud",
        "mesh",
        "heightfield",
        "bed_change",
    )
    for key in keys:
        got = instance.get_materialized_partitions(dg.AssetKey([survey_name, key]))
        assert got == {"f000000", "f000001"}, key
    assert instance.get_latest_materialization_event(dg.AssetKey([survey_name, "change_summary"]))
    store = SurveyStore(out / ".aquamvs" / "store.zarr", read_only=True)
    for frame in ("f000000", "f000001"):
        pairs = store.list_products(product_path(Product.PAIRWISE_DEPTHS, frame))
        # Sources by view geometry: 4 ring cameras × (3 ring cameras + the fisheye), and the fisheye
        # as a reference with the 4 ring cameras.
        assert len(pairs) == 4 * (3 + 1) + 4
    assert store.list_products(product_path(Product.BED_CHANGE, "f000001")) == ["f000000"]
    assert all(run.is_success for run in instance.get_runs())
    jobs = sorted(r.job_name for r in instance.get_runs())
    # the calibration once, one run per frame (its chain up to its bed change), the change table
    assert jobs == ["calibration", "reconstruct", "reconstruct", "summarize_changes"]


def _check_heightfields_and_change(out, gt):
    """The CLI's heightfield and change files: their layout, and their accuracy against the ground
    truth (at 320×240 a pixel covers ~4.4 mm of the bed: fine ripples are partly smoothed away)."""
    beds = []
    for index in (0, 1):
        with np.load(out / f"frame_{index:06d}" / "heightfield.npz") as f:
            x, y, z = f["x"], f["y"], f["z"]
        assert x.ndim == y.ndim == 1 and z.shape == (y.size, x.size) and np.all(np.diff(x) > 0)
        xx, yy = np.meshgrid(x, y)
        truth = gt.height_at(index, np.stack([xx.ravel(), yy.ravel()], axis=1)).reshape(z.shape)
        err = np.abs(z - truth)[np.isfinite(z) & np.isfinite(truth)] * 1e3
        assert err.size > 200_000 and np.median(err) < CI_TARGETS["median_abs_error_mm"], np.median(err)
        beds.append((z, truth))
    with np.load(out / "changes" / "frame_000000_to_000001.npz") as f:
        assert set(f.files) == {"x", "y", "dz", "lod"}
        np.testing.assert_array_equal(f["x"], x)
        dz, lod = f["dz"], f["lod"]
    np.testing.assert_array_equal(dz, beds[1][0] - beds[0][0])  # z_B − z_A, NaN where either is
    dz_gt = beds[1][1] - beds[0][1]
    ok = np.isfinite(dz) & np.isfinite(dz_gt)
    err = np.abs(dz - dz_gt)[ok] * 1e3
    assert np.median(err) < 0.25, np.median(err)  # the product target at 640×480 holds here too
    assert np.all(lod[ok] > 0) and np.isnan(lod[~np.isfinite(dz)]).all()
    volumes = pd.read_csv(out / "changes" / "volumes.csv")
    assert (
        list(volumes.from_frame) == [0] and list(volumes.to_frame) == [1] and list(volumes.region) == ["all"]
    )
    area = (x[1] - x[0]) ** 2
    truth = {
        "deepened_m3": dz_gt[ok][dz_gt[ok] > 0].sum() * area,
        "raised_m3": -dz_gt[ok][dz_gt[ok] < 0].sum() * area,
    }
    for key, true in truth.items():
        assert volumes[key].iloc[0] == pytest.approx(true, rel=VOLUME_TOLERANCE), key


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pathway", "roma", "--roma-weights-dir", "/nonexistent/weights"], "RoMa weights not found"),
        (["--frames", "0,x"], "comma-separated frame indices"),
        (["--frames", "5"], "outside the survey's 2 frames"),
    ],
)
def test_reconstruct_cli_rejects_bad_input_clearly(survey, tmp_path, capsys, args, message):
    survey_dir, images = survey
    code = cli_main(
        ["reconstruct", str(survey_dir / "calibration.json"), str(images), str(tmp_path / "o"), *args]
    )
    assert code == 2
    assert message in capsys.readouterr().err


def test_reconstruct_cli_rejects_bad_files(survey, tmp_path, capsys):
    survey_dir, images = survey
    assert cli_main(["reconstruct", str(tmp_path / "nope.json"), str(images), str(tmp_path / "o")]) == 2
    assert "calibration file not found" in capsys.readouterr().err
    (images / "camZ").mkdir()
    try:
        assert (
            cli_main(["reconstruct", str(survey_dir / "calibration.json"), str(images), str(tmp_path / "o")])
            == 2
        )
        assert "unknown camera 'camZ'" in capsys.readouterr().err
    finally:
        (images / "camZ").rmdir()
    bad = tmp_path / "bad.yaml"
    bad.write_text("plane_sweep: {num_depths: 1}\n")
    assert (
        cli_main(
            [
                "reconstruct",
                str(survey_dir / "calibration.json"),
                str(images),
                str(tmp_path / "o"),
                "--config",
                str(bad),
            ]
        )
        == 2
    )
    assert "plane_sweep.num_depths" in capsys.readouterr().err
    assert not (tmp_path / "o" / "frame_000000").exists()


def test_config_presets_yaml_and_overrides(tmp_path):
    fast, balanced, quality = (build_config(p) for p in ("fast", "balanced", "quality"))
    assert fast.plane_sweep.num_depths < balanced.plane_sweep.num_depths < quality.plane_sweep.num_depths
    assert build_config(pathway="lightglue").matching.method == "aliked"
    path = tmp_path / "c.yaml"
    path.write_text("preset: fast\nfusion: {tol_3d_mm: 2.5}\n")
    cfg = build_config(yaml_file=path, overrides={"fusion": {"voxel_size_mm": 0.5}})
    assert (cfg.preset, cfg.fusion.tol_3d_mm, cfg.fusion.voxel_size_mm) == ("fast", 2.5, 0.5)
    assert cfg.plane_sweep == fast.plane_sweep  # the rest of the preset stays
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config("turbo")
    with pytest.raises(ConfigError, match=r"fusion\.nonsense"):
        build_config(overrides={"fusion": {"nonsense": 1}})


def test_torch_thread_setting_is_scoped():
    import torch

    from aquamvs_core.runtime import torch_threads

    assert build_config().torch_threads == 1
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="torch_threads"):
        build_config(overrides={"torch_threads": 0})
