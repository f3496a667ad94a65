"""The CLI through Dagster: ingestion recorded in the instance (one run per frame, the calibration
once), clear errors for bad input with nothing written, the user's instance file left as it was,
and rigs added as code locations of a workspace."""

from __future__ import annotations

import shutil

import dagster as dg
import yaml
from dagster_helpers import ALL_FRAMES

from aquamvs_assets.cli import main as cli_main
from aquamvs_assets.definitions import survey_namespace
from aquamvs_assets.project import ensure_dagster_home
from aquamvs_assets.workspace import LOCATION_MODULE
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import load_survey_spec


def test_cli_ingests_through_dagster_and_reports_bad_input(synthetic_survey_file, tmp_path, capsys):
    home = tmp_path / "home"
    assert cli_main(["ingest", str(synthetic_survey_file), "--dagster-home", str(home)]) == 0
    spec = load_survey_spec(synthetic_survey_file)
    ns = survey_namespace(synthetic_survey_file)
    assert SurveyStore(spec.store).list_frames() == ALL_FRAMES
    instance = dg.DagsterInstance.from_config(str(home))
    assert instance.get_dynamic_partitions(ns.frames.name) == ALL_FRAMES
    assert instance.get_materialized_partitions(ns.key("frames")) == set(ALL_FRAMES)
    runs = instance.get_runs()
    assert all(r.is_success for r in runs)
    assert sorted(r.job_name for r in runs) == ["calibration"] + ["ingest_frames"] * 3  # a run per frame
    capsys.readouterr()
    # Ingesting again: the calibration is current (no run), the frames' input unchanged (not rewritten).
    write_ids = {k: SurveyStore(spec.store).frame_attrs(k)["write_id"] for k in ALL_FRAMES}
    assert cli_main(["ingest", str(synthetic_survey_file), "--dagster-home", str(home)]) == 0
    assert len(instance.get_runs()) == len(runs) + 3
    assert {k: SurveyStore(spec.store).frame_attrs(k)["write_id"] for k in ALL_FRAMES} == write_ids

    # A frame outside the survey, and a survey whose inputs name an unknown camera: clear errors.
    assert cli_main(["ingest", str(synthetic_survey_file), "--frames", "7", "--dagster-home", str(home)]) == 2
    assert "outside the survey's 3 frames" in capsys.readouterr().err
    bad_inputs = tmp_path / "bad_inputs"
    shutil.copytree(spec.inputs, bad_inputs)
    shutil.copy(bad_inputs / "cam0.mp4", bad_inputs / "camX.mp4")
    bad = spec.model_copy(update={"inputs": bad_inputs}).to_yaml(tmp_path / "bad.yaml")
    assert cli_main(["ingest", str(bad), "--dagster-home", str(home)]) == 2
    assert "unknown camera 'camX'" in capsys.readouterr().err


def test_an_existing_instance_file_is_never_written_over(synthetic_survey_file, tmp_path):
    home = tmp_path / "lab-instance"
    home.mkdir()
    production = (
        "# the lab's instance: hand-written, with comments and its own settings\n"
        "storage:\n  sqlite:\n    base_dir: " + str(home / "storage") + "\n"
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: QueuedRunCoordinator\n"
        "telemetry:\n  enabled: false\n"
    )
    (home / "dagster.yaml").write_text(production)
    before = (home / "dagster.yaml").read_bytes()
    assert ensure_dagster_home(home) == home
    assert cli_main(["ingest", str(synthetic_survey_file), "--frames", "0", "--dagster-home", str(home)]) == 0
    assert (home / "dagster.yaml").read_bytes() == before  # byte-identical
    assert (home / "storage").is_dir()  # and it was the instance used
    fresh = ensure_dagster_home(tmp_path / "fresh")  # a new home gets the embedded configuration
    settings = yaml.safe_load((fresh / "dagster.yaml").read_text())
    assert settings["storage"] == {"sqlite": {"base_dir": str(fresh)}}
    assert settings["concurrency"]["pools"]["default_limit"] == 1


def test_location_add_lists_rigs_in_a_workspace(synthetic_survey_file, tmp_path, capsys):
    workspace = tmp_path / "workspace.yaml"
    other = load_survey_spec(synthetic_survey_file).model_copy(update={"name": "rig-b"})
    other_file = other.to_yaml(tmp_path / "rig_b" / "survey.yaml")
    assert cli_main(["location", "add", str(synthetic_survey_file), "--workspace", str(workspace)]) == 0
    assert cli_main(["location", "add", str(other_file), "--workspace", str(workspace)]) == 0
    assert cli_main(["location", "add", str(other_file), "--workspace", str(workspace)]) == 0  # idempotent
    entries = yaml.safe_load(workspace.read_text())["load_from"]
    names = [e["python_file"]["location_name"] for e in entries]
    assert names == ["synthetic-demo", "rig-b"]
    module = other_file.with_name(LOCATION_MODULE)
    assert entries[1]["python_file"]["relative_path"] == str(module)
    namespace: dict = {"__file__": str(module)}
    exec(compile(module.read_text(), str(module), "exec"), namespace)  # the module builds rig-b's defs
    keys = namespace["defs"].resolve_all_asset_keys()
    assert {k.path[0] for k in keys} == {"rig-b"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nunknown_field: 1\n")
    assert cli_main(["location", "add", str(bad), "--workspace", str(workspace)]) == 2
    assert "unknown_field" in capsys.readouterr().err
    assert [
        e["python_file"]["location_name"] for e in yaml.safe_load(workspace.read_text())["load_from"]
    ] == names
