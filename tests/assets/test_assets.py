"""The Dagster layer: definitions, materialization of the ingestion assets, the new-frames sensor,
the CLI, and a real dagster-webserver answering GraphQL."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import dagster as dg
import numpy as np
import pytest

from aquamvs_assets.assets.ingestion import build_pair_geometry_asset, frames, survey_calibration
from aquamvs_assets.cli import main as cli_main
from aquamvs_assets.definitions import build_definitions
from aquamvs_assets.partitions import camera_pair_partitions, frame_pair_partitions
from aquamvs_assets.project import PROJECT_ROOT, ensure_dagster_home
from aquamvs_assets.resources import SurveyResource, ZarrStoreResource
from aquamvs_assets.sensors import new_frames_sensor
from aquamvs_core.camera.calibration import load_calibration
from aquamvs_core.stages.pairs import survey_pairs
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import load_survey_spec
from aquamvs_core.survey.video import VideoSource

ALL_FRAMES = ["f000000", "f000001", "f000002"]
ASSET_KEYS = {
    "survey_calibration",
    "frames",
    "camera_pair_geometry",  # ingestion
    "sparse_matches",
    "sparse_cloud",
    "pairwise_depths",
    "camera_depths",
    "fused_cloud",
    "mesh",
    "benchmark_tables",
    "benchmark_summary",
}
PER_PAIR = {"sparse_matches", "pairwise_depths"}


def _resources(survey_file: Path) -> dict:
    spec = load_survey_spec(survey_file)
    return {
        "survey": SurveyResource(survey_file=str(survey_file)),
        "store": ZarrStoreResource(root=spec.store),
    }


def test_definitions_validate_and_describe_the_rig(synthetic_survey_file):
    defs = build_definitions(synthetic_survey_file)
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert keys == ASSET_KEYS
    for key in PER_PAIR:
        dims = defs.resolve_assets_def(key).partitions_def.partitions_defs
        assert [d.name for d in dims] == ["frame", "pair"]

    spec = load_survey_spec(synthetic_survey_file)
    rig = load_calibration(spec.calibration)
    pairs = survey_pairs(rig, spec)
    # 5 cameras (4 ring + the fisheye, which is a reference too), each with its 4 best sources.
    assert len(pairs) == 5 * 4
    pair_def = defs.resolve_assets_def("camera_pair_geometry").partitions_def
    assert pair_def.get_partition_keys() == [p.key for p in pairs]
    frames_def = defs.resolve_assets_def("frames").partitions_def
    assert isinstance(frames_def, dg.DynamicPartitionsDefinition) and frames_def.name == "frames"
    assert defs.resolve_job_def("ingest") is not None
    assert defs.resolve_sensor_def("new_frames_sensor") is not None

    # The frame × pair partitions for the depth assets: keys "frame|pair", dimensions by name.
    multi = frame_pair_partitions(pair_def)
    assert [d.name for d in multi.partitions_defs] == ["frame", "pair"]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("frames", ALL_FRAMES[:2])
        mkeys = multi.get_partition_keys(dynamic_partitions_store=instance)
    assert len(mkeys) == 2 * len(pairs)
    assert f"f000001|{pairs[0].key}" in mkeys


def test_code_location_module_loads_with_dagster_cli(synthetic_survey_file):
    env = {**os.environ, "AQUAMVS_SURVEY": str(synthetic_survey_file)}
    dagster = Path(sys.executable).parent / "dagster"
    out = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "aquamvs_assets.definitions"],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_materialize_ingestion_round_trips_bit_exactly(synthetic_survey_file):
    spec = load_survey_spec(synthetic_survey_file)
    rig = load_calibration(spec.calibration)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("frames", ALL_FRAMES)
        result = dg.materialize(
            [survey_calibration, frames],
            partition_key="f000001",
            instance=instance,
            resources=_resources(synthetic_survey_file),
        )
        assert result.success
        calib_event = instance.get_latest_materialization_event(dg.AssetKey("survey_calibration"))
        assert calib_event.asset_materialization.tags["dagster/data_version"] == rig.content_hash

    meta = result.asset_materializations_for_node("frames")[0].metadata
    assert meta["calibration_hash"].value == rig.content_hash
    assert meta["cameras"].value == len(rig.cameras)
    assert meta["image_size"].value == "160x120"
    assert "data:image/png;base64," in meta["preview"].value
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [("frames_complete", True)]

    store = SurveyStore(spec.store)
    assert store.list_frames() == ["f000001"]
    assert store.frame_attrs("f000001")["calibration_hash"] == rig.content_hash
    stored = store.read_frame("f000001")
    assert set(stored) == set(rig.camera_names)
    videos = Path(spec.inputs)
    for name in rig.camera_names:
        # Frames are stored as recorded (the lens is in the camera model): bit-exact through Zarr.
        np.testing.assert_array_equal(stored[name], VideoSource(videos / f"{name}.mp4").read(1))
        assert stored[name].std() > 10  # a real textured image, not a blank
    masks = store.read_valid_masks()
    assert all(m.shape == (120, 160) and m.all() for m in masks.values())
    assert store.read_lens_cameras() == rig.camera_names
    np.testing.assert_array_equal(store.read_undistorted_K()["cam0"], rig["cam0"].K)


def test_frames_refuse_a_store_without_the_calibration(synthetic_survey_file):
    spec = load_survey_spec(synthetic_survey_file)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("frames", ALL_FRAMES)
        result = dg.materialize(
            [frames],
            partition_key="f000000",
            instance=instance,
            resources=_resources(synthetic_survey_file),
            raise_on_error=False,
        )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "materialize survey_calibration first" in str(failure.event_specific_data.error)
    assert SurveyStore(spec.store).list_frames() == []


def test_pair_geometry_asset(synthetic_survey_file):
    spec = load_survey_spec(synthetic_survey_file)
    rig = load_calibration(spec.calibration)
    pairs = survey_pairs(rig, spec)
    pair = pairs[0]
    pair_asset = build_pair_geometry_asset(pairs, camera_pair_partitions(pairs))
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [survey_calibration, pair_asset],
            partition_key=pair.key,
            instance=instance,
            resources=_resources(synthetic_survey_file),
        )
    assert result.success
    geometry = SurveyStore(spec.store).read_pair_geometry(pair.key)
    baseline = np.linalg.norm(rig[pair.ref].center - rig[pair.src].center)
    assert geometry["baseline_m"] == pytest.approx(baseline, abs=1e-6)
    assert (geometry["ref"], geometry["src"]) == (pair.ref, pair.src)
    # Neighbouring ring cameras tilted inwards see much of the same bottom.
    assert 0.3 < geometry["overlap"] <= 1.0


def _as_image_folders(spec, dest: Path, n_frames: int) -> None:
    """Decode the survey's videos into <camera>/000000.png folders with the first n frames."""
    for video in sorted(Path(spec.inputs).glob("*.mp4")):
        folder = dest / video.stem
        folder.mkdir(parents=True, exist_ok=True)
        source = VideoSource(video)
        for i in range(n_frames):
            cv2.imwrite(str(folder / f"{i:06d}.png"), source.read(i)[..., ::-1])
        source.close()


def test_sensor_adds_exactly_the_new_frames(synthetic_small_survey, tmp_path):
    spec = load_survey_spec(synthetic_small_survey)
    inputs = tmp_path / "frames"
    _as_image_folders(spec, inputs, n_frames=2)
    survey_file = spec.model_copy(update={"inputs": inputs, "store": str(tmp_path / "s.zarr")}).to_yaml(
        tmp_path / "survey.yaml"
    )
    resources = {"survey": SurveyResource(survey_file=str(survey_file))}

    def tick(instance):
        result = new_frames_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        added = [k for r in result.dynamic_partitions_requests or [] for k in r.partition_keys]
        for request in result.dynamic_partitions_requests or []:  # what the daemon does
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return added, result.run_requests or []

    with dg.instance_for_test() as instance:
        added, runs = tick(instance)
        assert added == ["f000000", "f000001"]
        assert [r.partition_key for r in runs] == added
        assert len({r.run_key for r in runs}) == 2
        added, runs = tick(instance)  # a second tick: nothing new
        assert (added, runs) == ([], [])
        _as_image_folders(spec, inputs, n_frames=3)  # frame 2 arrives for every camera
        added, runs = tick(instance)
        assert added == ["f000002"] and [r.partition_key for r in runs] == ["f000002"]
        assert instance.get_dynamic_partitions("frames") == ALL_FRAMES


def test_cli_ingests_through_dagster_and_reports_bad_input(synthetic_survey_file, tmp_path, capsys):
    home = tmp_path / "home"
    assert cli_main(["ingest", str(synthetic_survey_file), "--dagster-home", str(home)]) == 0
    spec = load_survey_spec(synthetic_survey_file)
    assert SurveyStore(spec.store).list_frames() == ALL_FRAMES
    instance = dg.DagsterInstance.from_config(str(home))
    assert instance.get_dynamic_partitions("frames") == ALL_FRAMES
    materialized = instance.get_materialized_partitions(dg.AssetKey("frames"))
    assert materialized == set(ALL_FRAMES)
    runs = instance.get_runs()
    assert len(runs) == 1 and runs[0].is_success  # one run over the partition range
    capsys.readouterr()

    # A frame outside the survey, and a survey whose inputs name an unknown camera: clear errors.
    assert cli_main(["ingest", str(synthetic_survey_file), "--frames", "7", "--dagster-home", str(home)]) == 2
    assert "outside the survey's 3 frames" in capsys.readouterr().err
    bad_inputs = tmp_path / "bad_inputs"
    shutil.copytree(spec.inputs, bad_inputs)
    shutil.copy(bad_inputs / "cam0.mp4", bad_inputs / "camX.mp4")
    bad = spec.model_copy(update={"inputs": bad_inputs}).to_yaml(tmp_path / "bad.yaml")
    assert cli_main(["ingest", str(bad), "--dagster-home", str(home)]) == 2
    assert "unknown camera 'camX'" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


ASSET_QUERY = "{ assetNodes { assetKey { path } isPartitioned partitionKeys } }"


def test_webserver_answers_graphql_with_assets_and_partitions(synthetic_survey_file, tmp_path):
    home = ensure_dagster_home(tmp_path / "home")
    instance = dg.DagsterInstance.from_config(str(home))
    instance.add_dynamic_partitions("frames", ALL_FRAMES[:2])
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "AQUAMVS_SURVEY": str(synthetic_survey_file)}
    webserver = Path(sys.executable).parent / "dagster-webserver"
    log = open(tmp_path / "webserver.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(webserver), "-h", "127.0.0.1", "-p", str(port), "-w", str(PROJECT_ROOT / "workspace.yaml")],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        nodes, deadline = [], time.monotonic() + 150
        while time.monotonic() < deadline and not nodes:
            assert proc.poll() is None, (tmp_path / "webserver.log").read_text()[-3000:]
            with contextlib.suppress(OSError, KeyError, TypeError):
                nodes = _graphql(port, ASSET_QUERY)["data"]["assetNodes"]
            time.sleep(1.0)
        assert nodes, (
            "webserver did not serve the assets in time:\n" + (tmp_path / "webserver.log").read_text()
        )
        by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
        assert set(by_key) == ASSET_KEYS
        assert by_key["frames"]["isPartitioned"] and by_key["frames"]["partitionKeys"] == ALL_FRAMES[:2]
        assert not by_key["survey_calibration"]["isPartitioned"]
        rig = load_calibration(load_survey_spec(synthetic_survey_file).calibration)
        pair_keys = [p.key for p in survey_pairs(rig, load_survey_spec(synthetic_survey_file))]
        assert by_key["camera_pair_geometry"]["partitionKeys"] == pair_keys
        # frame × pair assets: every registered frame with every pair, keys "frame|pair".
        assert sorted(by_key["pairwise_depths"]["partitionKeys"]) == sorted(
            f"{f}|{p}" for f in ALL_FRAMES[:2] for p in pair_keys
        )
        assert by_key["mesh"]["partitionKeys"] == ALL_FRAMES[:2]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_stage_registry_names_the_reconstruction_assets_and_jobs(synthetic_survey_file):
    """One registry: the reconstruction assets, their products and the jobs all follow ``STAGES``."""
    from aquamvs_assets.jobs import RECONSTRUCTION_JOBS
    from aquamvs_core.steps import STAGES
    from aquamvs_core.survey import Product

    defs = build_definitions(synthetic_survey_file)
    for stage in STAGES:
        asset = defs.resolve_assets_def(stage.name)
        is_pair = asset.partitions_def.__class__.__name__ == "MultiPartitionsDefinition"
        assert is_pair == stage.per_pair, stage
        assert Product(stage.name) is stage.product
    assert [a for job in RECONSTRUCTION_JOBS for a in job.assets] == [s.name for s in STAGES]
    assert all(len({s.per_pair for s in STAGES if s.name in job.assets}) == 1 for job in RECONSTRUCTION_JOBS)
