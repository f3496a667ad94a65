"""The RoMa pathway: model loading offline, warp → depth against exact ground truth, the resource's
lifecycle inside Dagster runs, bounded memory, and missing weights.

No trained RoMa weights exist here: the model tests use romatch's real architecture with *seeded
random* weights written to a temporary folder (never committed). They check the contract (shapes,
ranges, the loading path) and make **no accuracy claim**. Accuracy of the conversion is asserted by
feeding the *exact* warp of the synthetic survey through the same code path, romatch's sampling and
pixel conversion included.
"""

from __future__ import annotations

import gc
import socket
import tracemalloc
import weakref
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import torch
import yaml

from aquamvs_assets import resources as resources_module
from aquamvs_assets.cli import main as cli_main
from aquamvs_assets.definitions import build_definitions, survey_namespace
from aquamvs_assets.resources import ReconstructionSettings, RomaMatcher
from aquamvs_assets.runner import run_ingestion
from aquamvs_core import steps as steps
from aquamvs_core.camera.calibration import load_calibration
from aquamvs_core.camera.distortion import distort_pixels, undistorted_intrinsics
from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.config import build_config
from aquamvs_core.evaluation.lens_visibility import original_pixels
from aquamvs_core.evaluation.quality import quality_report
from aquamvs_core.stages.dense.correspondence_depth import (
    WarpDepthConfig,
    combine_warp_depths,
    grid_pixels,
    warp_to_pair_depth,
)
from aquamvs_core.stages.dense.roma import (
    CheckpointError,
    MissingWeightsError,
    RomaCheckpoints,
    RomaSession,
    RomaSettings,
    import_romatch,
    load_roma,
    random_checkpoints,
    verify_checkpoints,
)
from aquamvs_core.stages.pairs import survey_pairs
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Product, load_survey_spec, product_path
from aquamvs_core.synthetic import load_ground_truth, trace_pixels
from aquamvs_core.synthetic.exact_matches import GroundTruthMatcher, ground_truth_warp
from aquamvs_core.synthetic.ground_truth_views import gt_depth_map

COARSE = 112  # a few seconds per match on the CPU
GRID = (COARSE, COARSE)


class NetworkBlocked(AssertionError):
    pass


def _blocked(*args, **kwargs):
    raise NetworkBlocked("network access attempted")


def block_network(mp: pytest.MonkeyPatch) -> None:
    """Any connection attempt, or a hub download, fails the test."""
    mp.setattr(socket.socket, "connect", _blocked)
    mp.setattr(socket, "create_connection", _blocked)
    mp.setattr(torch.hub, "load_state_dict_from_url", _blocked)
    mp.setattr(torch.hub, "download_url_to_file", _blocked)


@pytest.fixture(scope="session")
def roma_checkpoints(tmp_path_factory) -> RomaCheckpoints:
    """Seeded random RoMa outdoor + DINOv2 checkpoints (~1.7 GB) in a temporary folder."""
    folder = tmp_path_factory.mktemp("roma_weights")
    matcher, dinov2 = random_checkpoints(seed=0)
    checkpoints = RomaCheckpoints.in_dir(folder)
    torch.save(matcher, checkpoints.matcher)
    torch.save(dinov2, checkpoints.dinov2)
    del matcher, dinov2
    gc.collect()
    return checkpoints


def _settings(checkpoints: RomaCheckpoints, **kw) -> RomaSettings:
    return RomaSettings(
        device="cpu",
        matcher_checkpoint=str(checkpoints.matcher),
        dinov2_checkpoint=str(checkpoints.dinov2),
        coarse_res=COARSE,
        **kw,
    )


@pytest.fixture(scope="session")
def roma_session(roma_checkpoints):
    """The random-weight model, loaded from the files with the network blocked."""
    with pytest.MonkeyPatch.context() as mp:
        block_network(mp)
        session = load_roma(_settings(roma_checkpoints))
    yield session
    session.close()


@pytest.fixture(scope="session")
def small_scene(synthetic_small_survey):
    """Rig, ground truth, undistorted refractive cameras and pairs of the small survey."""
    spec = load_survey_spec(synthetic_small_survey)
    from aquamvs_core.camera.calibration import load_calibration

    rig = load_calibration(spec.calibration)
    cams = {
        n: RefractiveCamera.from_calibration(rig[n], rig.interface, undistorted_intrinsics(rig[n]))
        for n in rig.camera_names
    }
    return rig, load_ground_truth(spec.ground_truth), cams, survey_pairs(rig, spec)


def _gt_at_grid(rig, gt, cam: RefractiveCamera, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(h·w,) exact ray depth and world Z at the warp grid's reference pixels (NaN where no hit)."""
    pix = grid_pixels(GRID, rig[name].image_size).reshape(-1, 2)
    hits = trace_pixels(
        rig[name], rig.interface, gt, 0, distort_pixels(pix, rig[name], cam.K.numpy()).numpy()
    )
    return np.where(hits.hit, hits.ray_depth, np.nan), np.where(hits.hit, hits.points[:, 2], np.nan)


def _exact_ring_pair(small_scene, session):
    """A ring-camera pair of the small survey, its exact warp, and the arguments of
    :func:`warp_to_pair_depth` before the configuration."""
    rig, gt, cams, pairs = small_scene
    pair = next(p for p in pairs if p.src not in rig.auxiliary_names)
    match = ground_truth_warp(rig, gt, 0, cams, pair.ref, pair.src, GRID)
    sizes = (rig[pair.ref].image_size, rig[pair.src].image_size)
    return pair, match, (match, session, cams[pair.ref], cams[pair.src], *sizes)


# --------------------------------------------------------------------------------------------
# Installation and the model contract
# --------------------------------------------------------------------------------------------


def test_romatch_imports_with_the_pinned_torch():
    romatch = import_romatch()
    assert hasattr(romatch, "roma_outdoor")
    import torchvision

    assert torch.__version__.startswith("2.13.0")
    assert torchvision.__version__.startswith("0.28.0")


def test_contract_with_random_weights_no_accuracy_claim(roma_session, synthetic_small_survey, monkeypatch):
    """Shapes, finite values and certainty range of the real romatch model (random weights; no
    accuracy claim), run with the network blocked, on RGB frames of the survey."""
    block_network(monkeypatch)
    spec = load_survey_spec(synthetic_small_survey)
    from aquamvs_core.survey import Survey

    with Survey.open(spec) as survey:
        names = survey.rig.camera_names[:2]
        images = {n: survey.sources[n].read(0) for n in names}
    assert roma_session.num_parameters > 400e6  # RoMa outdoor + DINOv2 ViT-L/14, ~415.7 M
    match = roma_session.match(images[names[0]], images[names[1]])
    assert tuple(match.warp.shape) == (COARSE, COARSE, 4)
    assert tuple(match.certainty.shape) == (COARSE, COARSE)
    assert torch.isfinite(match.warp).all() and torch.isfinite(match.certainty).all()
    assert float(match.certainty.min()) >= 0.0 and float(match.certainty.max()) <= 1.0
    assert float(match.warp.abs().max()) <= 1.0
    # The first two channels are romatch's grid over image A: exactly the cell centres we assume.
    (w, h) = images[names[0]].shape[1], images[names[0]].shape[0]
    expected = grid_pixels(GRID, (w, h))
    pix_a, _ = roma_session.to_pixel_coordinates(match.warp.reshape(-1, 4), (w, h), (w, h))
    assert torch.allclose(pix_a.double() - 0.5, expected.reshape(-1, 2), atol=1e-4)
    with pytest.raises(ValueError, match="RGB"):
        roma_session.match(images[names[0]][..., 0], images[names[1]])


# --------------------------------------------------------------------------------------------
# Geometry against ground truth
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample_budget", [None, 400])
def test_exact_warp_gives_exact_pair_depth(roma_session, small_scene, sample_budget):
    """The exact warp through romatch's sampling and pixel conversion and our triangulation gives
    the ground-truth ray depth at every kept cell (float32 storage: micrometres)."""
    rig, gt, cams, _ = small_scene
    pair, match, args = _exact_ring_pair(small_scene, roma_session)
    assert float(match.certainty.mean()) > 0.3
    result = warp_to_pair_depth(*args, WarpDepthConfig(), sample_budget=sample_budget)
    depth = result.depth.reshape(-1).double().numpy()
    truth, truth_z = _gt_at_grid(rig, gt, cams[pair.ref], pair.ref)
    kept = np.isfinite(depth)
    errors_mm = np.abs(depth[kept] - truth[kept]) * 1e3
    assert np.isfinite(truth[kept]).all()
    assert errors_mm.max() < 0.01, errors_mm.max()
    confident = int((match.certainty > 0).sum())
    if sample_budget is None:
        assert kept.sum() >= 0.95 * confident  # nearly every exact correspondence passes the filters
    else:
        assert 0.5 * sample_budget <= kept.sum() <= sample_budget  # romatch's balanced sample
    # World Z of the same points (Z down) is exact too.
    z_errors_mm = np.abs(result.world_z.reshape(-1).double().numpy()[kept] - truth_z[kept]) * 1e3
    assert z_errors_mm.max() < 0.01, z_errors_mm.max()


def test_pixel_convention_matters(roma_session, small_scene):
    """Dropping the half-pixel conversion between romatch's and our pixel centres biases depth by
    millimetres: the geometry test above would catch it."""
    from aquamvs_core.stages.dense import correspondence_depth as warp_depth

    _, _, args = _exact_ring_pair(small_scene, roma_session)
    right = warp_to_pair_depth(*args, WarpDepthConfig()).depth
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(warp_depth, "ROMATCH_PIXEL_OFFSET", 0.0)
        wrong = warp_to_pair_depth(*args, WarpDepthConfig(max_reprojection_px=5.0)).depth
    both = torch.isfinite(right) & torch.isfinite(wrong)
    assert float((right - wrong)[both].abs().median()) * 1e3 > 0.5


def test_camera_depth_from_exact_warps_matches_ground_truth(roma_session, small_scene):
    """Per-camera aggregation and normalised-convolution upsampling of exact pair depths reproduce
    the full-resolution ground-truth depth map to sub-millimetre accuracy, with its coverage."""
    rig, gt, cams, pairs = small_scene
    ref = pairs[0].ref
    pair_depths = []
    for pair in (p for p in pairs if p.ref == ref):
        match = ground_truth_warp(rig, gt, 0, cams, pair.ref, pair.src, GRID)
        pair_depths.append(
            warp_to_pair_depth(
                match,
                roma_session,
                cams[ref],
                cams[pair.src],
                rig[ref].image_size,
                rig[pair.src].image_size,
                WarpDepthConfig(),
            )
        )
    assert len(pair_depths) >= 2
    from aquamvs_core.camera.undistortion import build_undistortion_map

    mask = build_undistortion_map(rig[ref], undistorted_intrinsics(rig[ref])).valid
    combined = combine_warp_depths(pair_depths, cams[ref], mask, WarpDepthConfig())
    truth = gt_depth_map(rig[ref], rig.interface, gt, 0).depth
    both = torch.isfinite(combined.depth) & torch.isfinite(truth)
    errors_mm = (combined.depth - truth)[both].abs() * 1e3
    assert float(errors_mm.median()) < 0.2, float(errors_mm.median())
    assert float(errors_mm.quantile(0.9)) < 0.6
    assert int(both.sum()) >= 0.9 * int(torch.isfinite(truth).sum())  # coverage
    assert not torch.isfinite(combined.depth[~mask]).any()  # outside the valid pixels: no depth
    assert int(combined.support[both].min()) >= 1


# --------------------------------------------------------------------------------------------
# Dagster: lifecycle, pool, missing weights
# --------------------------------------------------------------------------------------------


def _roma_definitions(survey_file: Path, checkpoints: RomaCheckpoints):
    settings = ReconstructionSettings(pathway="roma", preset="fast")
    matcher = RomaMatcher(
        device="cpu",
        matcher_checkpoint=str(checkpoints.matcher),
        dinov2_checkpoint=str(checkpoints.dinov2),
        coarse_res=COARSE,
    )
    return build_definitions(survey_file, settings, matcher)


def _ingested(survey_file: Path, checkpoints: RomaCheckpoints, frames: list[int], tmp_path: Path):
    """RoMa definitions of a copy of the survey with one source per camera (by view geometry) and no
    auxiliary sources (6 dense pairs), with ``frames`` ingested; returns the definitions, the
    instance, the survey file and the ``pairwise_depths`` job."""
    spec = load_survey_spec(survey_file).model_copy(update={"pair_neighbours": 1})
    survey_file = spec.to_yaml(tmp_path / "roma_survey.yaml")
    defs = _roma_definitions(survey_file, checkpoints)
    instance = dg.DagsterInstance.ephemeral()
    run_ingestion(survey_file, instance, frames)
    key = survey_namespace(survey_file).key("pairwise_depths")
    job = dg.define_asset_job("pairwise", selection=[key]).resolve(asset_graph=defs.resolve_asset_graph())
    return defs, instance, survey_file, job


def _pairwise(job, instance, frame: str, overrides: str = "use_auxiliary_sources: false"):
    config = {
        "resources": {
            "reconstruction": {"config": {"pathway": "roma", "preset": "fast", "overrides_yaml": overrides}}
        }
    }
    return job.execute_in_process(
        instance=instance, partition_key=frame, run_config=config, raise_on_error=False
    )


def test_one_materialization_of_a_frame_loads_roma_once_and_disposes(
    synthetic_survey_file, roma_checkpoints, monkeypatch, tmp_path
):
    block_network(monkeypatch)
    _, instance, survey_file, job = _ingested(synthetic_survey_file, roma_checkpoints, [0], tmp_path)
    loads, closes, refs = [], [], []
    real_load, real_close = resources_module.load_roma, RomaSession.close

    def counting_load(settings):
        session = real_load(settings)
        loads.append(settings)
        refs.append(weakref.ref(session.model))
        return session

    def counting_close(self):
        if self._model is not None:
            closes.append(self)
        real_close(self)

    monkeypatch.setattr(resources_module, "load_roma", counting_load)
    monkeypatch.setattr(RomaSession, "close", counting_close)
    result = _pairwise(job, instance, "f000000")
    assert result.success
    assert len(loads) == 1 and len(closes) == 1  # one model for the frame's 6 pairs
    del closes[:]
    gc.collect()
    assert refs[0]() is None  # no reference to the model survives the materialization
    spec = load_survey_spec(survey_file)
    store = SurveyStore(spec.store)
    pairs = [p for p in survey_pairs(load_calibration(spec.calibration), spec) if p.src != "aux"]
    written = store.list_products(product_path(Product.PAIRWISE_DEPTHS, "f000000"))
    assert written == sorted(p.key for p in pairs) and len(pairs) == 6
    messages = [e.message for e in instance.all_logs(result.run_id) if e.message]
    assert any("RoMa loaded on cpu" in m for m in messages)
    assert any("RoMa disposed of" in m for m in messages)


def test_gpu_work_runs_in_a_pool_limited_to_one(synthetic_small_survey):
    defs = build_definitions(synthetic_small_survey)
    assert (
        defs.resolve_assets_def(survey_namespace(synthetic_small_survey).key("pairwise_depths")).op.pool
        == "gpu"
    )
    config = yaml.safe_load((Path(__file__).parents[3] / "dagster.yaml").read_text())
    assert config["concurrency"]["pools"]["default_limit"] == 1


def test_missing_weights_fail_clearly_without_network_or_writes(synthetic_survey_file, tmp_path, monkeypatch):
    block_network(monkeypatch)
    absent = RomaCheckpoints.in_dir(tmp_path / "no_weights")
    with pytest.raises(MissingWeightsError) as info:
        load_roma(RomaSettings(matcher_checkpoint=str(absent.matcher), dinov2_checkpoint=str(absent.dinov2)))
    text = str(info.value)
    assert str(absent.matcher) in text and str(absent.dinov2) in text
    assert "roma_outdoor.pth" in text and "aquamvs roma-verify" in text

    _, instance, survey_file, job = _ingested(synthetic_survey_file, absent, [0], tmp_path)
    result = _pairwise(job, instance, "f000000")
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "RoMa weights not found" in str(failure.event_specific_data.error)
    store = SurveyStore(load_survey_spec(survey_file).store)
    assert store.list_products(Product.PAIRWISE_DEPTHS.value) == []


def test_cli_reconstruct_with_missing_weights_exits_2_before_any_work(
    synthetic_small_survey, tmp_path, capsys
):
    spec = load_survey_spec(synthetic_small_survey)
    out = tmp_path / "out"
    code = cli_main(
        [
            "reconstruct", str(spec.calibration), str(spec.inputs), str(out),
            "--pathway", "roma", "--roma-weights-dir", str(tmp_path / "none"),
        ]
    )  # fmt: skip
    assert code == 2
    assert "RoMa weights not found" in capsys.readouterr().err
    assert not (out / ".aquamvs" / "store.zarr").exists()


def test_roma_verify_reports_parameters_and_rejects_bad_checkpoints(roma_checkpoints, tmp_path, capsys):
    counts = verify_checkpoints(roma_checkpoints)
    assert counts["dinov2"] == 304_368_640  # ViT-L/14
    assert counts["total"] == counts["matcher"] + counts["dinov2"] > 400_000_000
    code = cli_main(
        [
            "roma-verify",
            "--roma-matcher",
            str(roma_checkpoints.matcher),
            "--roma-dinov2",
            str(roma_checkpoints.dinov2),
        ]
    )
    assert code == 0 and f"{counts['total']:,}" in capsys.readouterr().out
    bad = tmp_path / "truncated.pth"
    torch.save({"decoder.bogus": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError):
        verify_checkpoints(RomaCheckpoints(bad, roma_checkpoints.dinov2))
    assert (
        cli_main(["roma-verify", "--roma-matcher", str(bad), "--roma-dinov2", str(roma_checkpoints.dinov2)])
        == 2
    )


# --------------------------------------------------------------------------------------------
# Memory: one warp at a time
# --------------------------------------------------------------------------------------------


def _peak_python_heap(fn) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_the_number_of_pairs(synthetic_survey_file, roma_session, small_scene):
    """Python-heap peak (tracemalloc sees the numpy-backed warps of the exact matcher) over 2 and 8
    pairs: flat for the streaming step; a deliberately accumulating loop shows the measure would see
    the growth."""
    rig, gt, _, pairs = small_scene
    spec = load_survey_spec(synthetic_survey_file)
    run_ingestion(synthetic_survey_file, dg.DagsterInstance.ephemeral(), [0])
    store = SurveyStore(spec.store)
    store_cams = steps.StoreCameras.load(store)
    grid = (224, 224)  # 1 MB of warp and certainty per pair
    matcher = GroundTruthMatcher(rig, gt, 0, store_cams.cameras, grid, roma_session)
    config = build_config("fast", "roma")
    assert len(pairs) >= 8

    def streaming(n: int):
        return lambda: [
            steps.roma_pairwise_depths_step(store, "f000000", p, config, matcher, cams=store_cams)
            for p in pairs[:n]
        ]

    def accumulating(n: int):
        def run():
            warps = [matcher.match(None, None, names=(p.ref, p.src)) for p in pairs[:n]]
            for p, w in zip(pairs[:n], warps, strict=True):
                warp_to_pair_depth(w, matcher, store_cams.cameras[p.ref], store_cams.cameras[p.src],
                                   rig[p.ref].image_size, rig[p.src].image_size, config.roma)  # fmt: skip

        return run

    warp_bytes = grid[0] * grid[1] * 5 * 4
    streaming(1)()  # warm caches (camera rays, zarr metadata)
    s2, s8 = _peak_python_heap(streaming(2)), _peak_python_heap(streaming(8))
    a2, a8 = _peak_python_heap(accumulating(2)), _peak_python_heap(accumulating(8))
    assert a8 - a2 > 5 * warp_bytes  # the measure sees six more warps held at once
    assert s8 - s2 < 0.5 * warp_bytes, (s2, s8, warp_bytes)
    assert len(store.list_products(product_path(Product.PAIRWISE_DEPTHS, "f000000"))) == 8
    stored = steps.read_roma_pair_depth(store, "f000000", pairs[0])
    assert tuple(stored.depth.shape) == grid and float(torch.isfinite(stored.depth).float().mean()) > 0.3


def _seen_by_sources(rig, gt, ref: str, sources: list[str]) -> float:
    """The fraction of ``ref``'s original pixels whose exact bed point lies inside the original
    image of one of ``sources`` (within its lens model's valid range)."""
    w, h = rig[ref].image_size
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    hits = trace_pixels(rig[ref], rig.interface, gt, 0, np.stack([u.ravel(), v.ravel()], 1))
    points = torch.from_numpy(hits.points[hits.hit].astype(np.float64))
    seen = torch.zeros(len(points), dtype=torch.bool)
    for src in sources:
        seen |= original_pixels(rig[src], rig.interface, points)[1]
    return float(seen.sum()) / (w * h)


def test_exact_warps_feed_the_same_fusion_and_mesh(synthetic_survey_file, roma_session, small_scene):
    """The RoMa pathway's products go through the plane-sweep pathway's camera-depth, fusion and
    mesh steps: with exact warps the fused cloud meets the survey's accuracy targets."""
    rig, gt, _, pairs = small_scene
    spec = load_survey_spec(synthetic_survey_file)
    run_ingestion(synthetic_survey_file, dg.DagsterInstance.ephemeral(), [0])
    store = SurveyStore(spec.store)
    store_cams = steps.StoreCameras.load(store)
    matcher = GroundTruthMatcher(rig, gt, 0, store_cams.cameras, GRID, roma_session)
    config = build_config("balanced", "roma")
    chosen = steps.dense_pairs(store, pairs, config)
    for pair in chosen:
        steps.roma_pairwise_depths_step(store, "f000000", pair, config, matcher, cams=store_cams)
    summary = steps.camera_depths_step(store, "f000000", chosen, config)
    assert set(summary) == {p.ref for p in chosen}
    # With exact warps each camera has a depth over what its sources see of the bed: almost all of a
    # ring camera's image, and the part of the fisheye's wide field that its sources see.
    seen = {ref: _seen_by_sources(rig, gt, ref, [p.src for p in chosen if p.ref == ref]) for ref in summary}
    for ref, s in summary.items():
        assert s["valid_fraction"] > 0.9 * seen[ref], (ref, s, seen[ref])
    steps.fused_cloud_step(store, "f000000", config)
    steps.mesh_step(store, "f000000", config)
    report = quality_report(store, "f000000", spec.ground_truth, config)
    assert report["cloud_median_abs_error_mm"] < 0.5, report
    assert report["cloud_outlier_fraction"] <= 0.005, report
    assert report["cloud_completeness"] > 0.8, report


def test_sampling_is_seeded(roma_session, small_scene):
    """romatch's sampler draws at random: the same seed gives the same cells, another seed others."""
    _, _, args = _exact_ring_pair(small_scene, roma_session)

    def kept(seed: int) -> torch.Tensor:
        return torch.isfinite(
            warp_to_pair_depth(*args, WarpDepthConfig(), sample_budget=400, seed=seed).depth
        )

    first, again, other = kept(0), kept(0), kept(1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_invalid_matcher_settings_name_the_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="device"):
        RomaSettings(device="gpu0")
    with pytest.raises(ValidationError, match="coarse_res"):
        RomaMatcher(coarse_res=100).settings()  # not a multiple of 14
    assert RomaMatcher().settings() == RomaSettings()  # the resource's defaults are the core's
