"""Automation with a real ``dagster-daemon``: the sensors run by default, and a frame whose files
appear in the survey's inputs becomes a mesh with no click (the calibration stored, the frame
registered and ingested by the new-frames sensor, the reconstruction chain requested by the
automation sensor, the runs launched from the queue)."""

from __future__ import annotations

import os
import subprocess
import time

import dagster as dg
import yaml
from dagster_helpers import BIN, as_image_folders, image_folder_survey

from aquamvs_assets.definitions import SENSOR_INTERVAL_ENV, survey_namespace
from aquamvs_assets.project import ensure_dagster_home
from aquamvs_assets.workspace import add_survey_location
from aquamvs_core.survey import load_survey_spec


def _wait_for(condition, timeout_s: float, what: str, log) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log()[-4000:]}"
        time.sleep(2.0)


def test_a_frame_that_appears_becomes_a_mesh_with_no_click(synthetic_small_survey, tmp_path):
    survey_file = image_folder_survey(synthetic_small_survey, tmp_path, n_frames=1, name="auto-rig")
    spec = load_survey_spec(survey_file)
    cheap = {"preset": "fast", "overrides_yaml": "use_auxiliary_sources: false"}  # 6 dense pairs a frame
    spec = spec.model_copy(update={"reconstruction": cheap, "pair_neighbours": 1})
    survey_file = spec.to_yaml(survey_file)
    ns = survey_namespace(survey_file)
    home = ensure_dagster_home(tmp_path / "home")
    settings = yaml.safe_load((home / "dagster.yaml").read_text())
    assert "sensors" not in settings  # the sensors run because their definitions say so, not config
    workspace = tmp_path / "workspace.yaml"
    add_survey_location(survey_file, workspace)
    env = {**os.environ, "DAGSTER_HOME": str(home), SENSOR_INTERVAL_ENV: "3"}
    log_path = tmp_path / "daemon.log"
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            instance = dg.DagsterInstance.from_config(str(home))

            def meshes() -> set[str]:
                return instance.get_materialized_partitions(ns.key("mesh"))

            _wait_for(lambda: meshes() == {"f000000"}, 900, "frame 0's mesh", log_path.read_text)
            as_image_folders(load_survey_spec(synthetic_small_survey), tmp_path / "frames", n_frames=2)
            _wait_for(lambda: meshes() == {"f000000", "f000001"}, 900, "frame 1's mesh", log_path.read_text)
            # the chain goes on past the mesh: frame 1's bed change from frame 0, then the change
            # table (eager after each bed change); nothing more is launched once the table follows
            # the last bed change

            def settled() -> bool:
                change = instance.get_latest_materialization_event(ns.key("bed_change"))
                table = instance.get_latest_materialization_event(ns.key("change_summary"))
                return (
                    instance.get_materialized_partitions(ns.key("bed_change")) == {"f000000", "f000001"}
                    and table is not None
                    and table.timestamp > change.timestamp
                    and all(r.is_finished for r in instance.get_runs())
                )

            _wait_for(settled, 600, "the change table after frame 1's bed change", log_path.read_text)
        finally:
            daemon.terminate()
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
    runs = instance.get_runs()
    assert all(r.is_success for r in runs), [(r.job_name, r.status) for r in runs]
    assert instance.get_dynamic_partitions(ns.frames.name) == ["f000000", "f000001"]
    for asset in ("sparse_matches", "pairwise_depths", "fused_cloud", "mesh", "heightfield", "bed_change"):
        assert instance.get_materialized_partitions(ns.key(asset)) == {"f000000", "f000001"}, asset
    # Nobody launched these: the sensors did (new-frames: calibration and ingestion; automation: the rest).
    launched_by = {r.tags.get("dagster/sensor_name") for r in runs}
    assert launched_by == {"new_frames_sensor", "automation"}
