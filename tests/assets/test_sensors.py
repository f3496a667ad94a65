"""The new-frames sensor: the calibration first (and again when it changes, then every frame is
re-ingested), exactly the new frames registered and requested, and a failed ingestion retried with
its reason, up to a limit."""

from __future__ import annotations

import json

import dagster as dg
from dagster_helpers import ALL_FRAMES, as_image_folders, image_folder_survey, survey_resources

from aquamvs_assets.definitions import build_definitions, survey_namespace
from aquamvs_assets.jobs import CALIBRATION_JOB, FRAMES_JOB
from aquamvs_assets.sensors import ATTEMPT_TAG, MAX_INGEST_ATTEMPTS, REASON_TAG, SURVEY_TAG
from aquamvs_core.camera.calibration import load_calibration, save_calibration
from aquamvs_core.survey import load_survey_spec


class Daemon:
    """What the daemon does with a sensor: evaluate it with its cursor, add the partitions it asks
    for, and (here, in-process) run the runs it requests."""

    def __init__(self, survey_file, instance):
        self.defs = build_definitions(survey_file)
        self.sensor = self.defs.resolve_sensor_def("new_frames_sensor")
        self.resources = survey_resources(survey_file)
        self.instance = instance
        self.cursor = None

    def tick(self) -> tuple[list[str], list[dg.RunRequest]]:
        context = dg.build_sensor_context(
            instance=self.instance, resources=self.resources, cursor=self.cursor
        )
        result = self.sensor(context)
        self.cursor = result.cursor or self.cursor
        added = [k for r in result.dynamic_partitions_requests or [] for k in r.partition_keys]
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return added, list(result.run_requests or [])

    def run(self, request: dg.RunRequest) -> bool:
        job = self.defs.resolve_job_def(request.job_name)
        result = job.execute_in_process(
            instance=self.instance,
            partition_key=request.partition_key,
            tags=request.tags,
            raise_on_error=False,
        )
        return result.success


def test_calibration_first_then_exactly_the_new_frames(synthetic_small_survey, tmp_path):
    spec = load_survey_spec(synthetic_small_survey)
    survey_file = image_folder_survey(synthetic_small_survey, tmp_path, n_frames=2)
    ns = survey_namespace(survey_file)
    with dg.instance_for_test() as instance:
        daemon = Daemon(survey_file, instance)
        added, runs = daemon.tick()  # no calibration in the store yet: only that is requested
        assert added == [] and [r.job_name for r in runs] == [CALIBRATION_JOB]
        assert daemon.run(runs[0])
        added, runs = daemon.tick()
        assert added == ["f000000", "f000001"]
        assert [(r.job_name, r.partition_key) for r in runs] == [(FRAMES_JOB, k) for k in added]
        assert len({r.run_key for r in runs}) == 2 and all(r.tags[SURVEY_TAG] == ns.survey for r in runs)
        assert all(daemon.run(r) for r in runs)
        assert daemon.tick() == ([], [])  # nothing new
        as_image_folders(spec, tmp_path / "frames", n_frames=3)  # frame 2 arrives for every camera
        added, runs = daemon.tick()
        assert added == ["f000002"] and [r.partition_key for r in runs] == ["f000002"]
        assert instance.get_dynamic_partitions(ns.frames.name) == ALL_FRAMES


def test_a_changed_calibration_is_stored_and_every_frame_reingested(synthetic_small_survey, tmp_path):
    survey_file = image_folder_survey(synthetic_small_survey, tmp_path, n_frames=2)
    spec = load_survey_spec(survey_file)
    with dg.instance_for_test() as instance:
        daemon = Daemon(survey_file, instance)
        for _ in range(2):
            for request in daemon.tick()[1]:
                assert daemon.run(request)
        assert daemon.tick() == ([], [])
        rig = load_calibration(spec.calibration)  # the lab recalibrates: water level 2 mm lower
        interface = rig.interface.__class__(
            **{**rig.interface.__dict__, "water_z": rig.interface.water_z + 0.002}
        )
        changed = rig.__class__(**{**rig.__dict__, "interface": interface})
        save_calibration(changed, spec.calibration)
        new_hash = load_calibration(spec.calibration).content_hash
        assert new_hash != rig.content_hash
        _, runs = daemon.tick()
        assert [r.job_name for r in runs] == [CALIBRATION_JOB]
        assert daemon.run(runs[0])
        _, runs = daemon.tick()
        assert [(r.job_name, r.partition_key) for r in runs] == [
            (FRAMES_JOB, "f000000"),
            (FRAMES_JOB, "f000001"),
        ]
        assert all(r.run_key.startswith(new_hash[:12]) for r in runs)
        assert all(daemon.run(r) for r in runs)
        from aquamvs_core.store import SurveyStore

        store = SurveyStore(spec.store)
        assert {store.frame_attrs(k)["calibration_hash"] for k in ("f000000", "f000001")} == {new_hash}
        assert daemon.tick() == ([], [])


def test_a_failed_ingestion_is_retried_with_its_reason_up_to_a_limit(synthetic_small_survey, tmp_path):
    survey_file = image_folder_survey(synthetic_small_survey, tmp_path, n_frames=2)
    frame_file = tmp_path / "frames" / "cam0" / "000001.png"
    good = frame_file.read_bytes()
    frame_file.write_bytes(good[: len(good) // 3])  # still being copied when the frame is registered
    with dg.instance_for_test() as instance:
        daemon = Daemon(survey_file, instance)
        assert daemon.run(daemon.tick()[1][0])  # the calibration
        _, runs = daemon.tick()
        outcome = {r.partition_key: daemon.run(r) for r in runs}
        assert outcome == {"f000000": True, "f000001": False}
        for attempt in range(1, MAX_INGEST_ATTEMPTS):
            _, runs = daemon.tick()
            assert [(r.partition_key, r.tags[ATTEMPT_TAG]) for r in runs] == [("f000001", str(attempt))]
            assert "000001.png" in runs[0].tags[REASON_TAG]  # the reason names the unreadable file
            if attempt < MAX_INGEST_ATTEMPTS - 1:
                assert not daemon.run(runs[0])
        frame_file.write_bytes(good)  # the copy has finished: the last retry succeeds
        assert daemon.run(runs[0])
        assert daemon.tick() == ([], [])
        assert json.loads(daemon.cursor)["calibration"]


def test_retries_stop_at_the_limit(synthetic_small_survey, tmp_path):
    survey_file = image_folder_survey(synthetic_small_survey, tmp_path, n_frames=2)
    frame_file = tmp_path / "frames" / "cam1" / "000001.png"
    frame_file.write_bytes(b"not a png")
    with dg.instance_for_test() as instance:
        daemon = Daemon(survey_file, instance)
        assert daemon.run(daemon.tick()[1][0])
        requests = [r for r in daemon.tick()[1] if daemon.run(r) is False]  # frame 1 fails
        attempts = 1
        requests = daemon.tick()[1]
        while requests:
            assert not daemon.run(requests[0])
            attempts += 1
            requests = daemon.tick()[1]
        assert attempts == MAX_INGEST_ATTEMPTS
