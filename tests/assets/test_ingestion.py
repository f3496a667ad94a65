"""Ingestion assets: calibration with its hash as data version, frames bit-exact through Zarr with a
``frames_complete`` check that checks the inputs independently (and fails when they change), and
the pair geometry."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from dagster_helpers import ALL_FRAMES

from aquamvs_assets.definitions import build_definitions
from aquamvs_assets.jobs import CALIBRATION_JOB, FRAMES_JOB
from aquamvs_core.camera.calibration import load_calibration
from aquamvs_core.stages.pairs import survey_pairs
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import load_survey_spec
from aquamvs_core.survey.video import VideoSource


def _run(defs, job: str, instance, partition: str | None = None):
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, partition_key=partition, raise_on_error=False
    )


def test_ingestion_round_trips_bit_exactly_and_checks_the_inputs(synthetic_survey_file, ns):
    spec = load_survey_spec(synthetic_survey_file)
    rig = load_calibration(spec.calibration)
    defs = build_definitions(synthetic_survey_file)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(ns.frames.name, ALL_FRAMES)
        assert _run(defs, CALIBRATION_JOB, instance).success
        calib = instance.get_latest_materialization_event(ns.key("survey_calibration"))
        assert calib.asset_materialization.tags["dagster/data_version"] == rig.content_hash
        result = _run(defs, FRAMES_JOB, instance, "f000001")
        assert result.success

    meta = result.asset_materializations_for_node(ns.key("frames").to_python_identifier())[0].metadata
    assert meta["calibration_hash"].value == rig.content_hash
    assert meta["cameras"].value == len(rig.cameras)
    assert meta["image_size"].value == "160x120"
    assert "data:image/png;base64," in meta["preview"].value
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [("frames_complete", True)]

    store = SurveyStore(spec.store)
    assert store.list_frames() == ["f000001"]
    stored = store.read_frame("f000001")
    videos = Path(spec.inputs)
    for name in rig.camera_names:
        # Frames are stored as recorded (the lens is in the camera model): bit-exact through Zarr.
        np.testing.assert_array_equal(stored[name], VideoSource(videos / f"{name}.mp4").read(1))
        assert stored[name].std() > 10  # a real textured image, not a blank
    # Every original pixel is kept (no lens model of this rig folds inside its image), the cameras
    # are recorded as lens cameras and their intrinsics are the calibrated ones.
    masks = store.read_valid_masks()
    assert all(m.shape == (120, 160) and m.all() for m in masks.values())
    assert store.read_lens_cameras() == rig.camera_names
    for name in rig.camera_names:
        np.testing.assert_array_equal(store.read_undistorted_K()[name], rig[name].K)


def test_frames_complete_fails_when_the_decoder_lands_on_another_frame(synthetic_survey_file, ns):
    """Ingestion decoded the wrong frame (an off-by-one seek): the check decodes the inputs again with
    fresh decoders, finds other images than were ingested, and fails, naming the frame and cause."""
    from aquamvs_core.survey import Survey

    defs = build_definitions(synthetic_survey_file)
    real = Survey.read_frame
    calls = {"n": 0}

    def off_by_one_once(self, index):
        calls["n"] += 1
        return real(self, index + 1 if calls["n"] == 1 else index)

    with dg.instance_for_test() as instance, pytest.MonkeyPatch.context() as mp:
        instance.add_dynamic_partitions(ns.frames.name, ALL_FRAMES)
        assert _run(defs, CALIBRATION_JOB, instance).success
        mp.setattr(Survey, "read_frame", off_by_one_once)
        result = _run(defs, FRAMES_JOB, instance, "f000000")
    assert result.success  # a failed check does not fail the materialization
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "frames_complete" and not check.passed
    assert check.metadata["problems"].value == ["the inputs decode to other images than were ingested"]


def test_frames_refuse_a_store_without_the_calibration(synthetic_survey_file, ns):
    spec = load_survey_spec(synthetic_survey_file)
    defs = build_definitions(synthetic_survey_file)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(ns.frames.name, ALL_FRAMES)
        result = _run(defs, FRAMES_JOB, instance, "f000000")
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "materialize survey_calibration first" in str(failure.event_specific_data.error)
    assert SurveyStore(spec.store).list_frames() == []


def test_pair_geometry(synthetic_survey_file, ns):
    spec = load_survey_spec(synthetic_survey_file)
    rig = load_calibration(spec.calibration)
    pairs = survey_pairs(rig, spec)
    # 5 cameras (4 ring + the fisheye, which is a reference too), each with its 4 best sources.
    assert len(pairs) == 5 * 4
    defs = build_definitions(synthetic_survey_file)
    with dg.instance_for_test() as instance:
        result = _run(defs, CALIBRATION_JOB, instance)
    assert result.success
    store = SurveyStore(spec.store)
    assert store.pair_keys() == sorted(pair.key for pair in pairs)
    for pair in pairs:
        geometry = store.read_pair_geometry(pair.key)
        baseline = np.linalg.norm(rig[pair.ref].center - rig[pair.src].center)
        assert geometry["baseline_m"] == pytest.approx(baseline, abs=1e-6)
        assert (geometry["ref"], geometry["src"]) == (pair.ref, pair.src)
        assert 0.3 < geometry["overlap"] <= 1.0  # neighbours tilted inwards share much of the bed
    table = result.asset_materializations_for_node(ns.key("camera_pair_geometry").to_python_identifier())
    assert len(table[0].metadata["pairs"].value.records) == len(pairs)
