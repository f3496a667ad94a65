"""A survey's definitions: asset keys and frame partitions scoped to the survey, jobs from the stage
registry, sensors that run by default, and code locations that load (or fail clearly) without
writing anything."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import dagster as dg
from dagster_helpers import BIN

from aquamvs_assets.definitions import build_definitions
from aquamvs_assets.jobs import RECONSTRUCT_JOB, reconstruction_asset_keys
from aquamvs_assets.project import PROJECT_ROOT
from aquamvs_core.steps import STAGES
from aquamvs_core.survey import Product, load_survey_spec

ASSETS = {
    "survey_calibration",
    "frames",
    "camera_pair_geometry",
    "sparse_matches",
    "sparse_cloud",
    "pairwise_depths",
    "camera_depths",
    "fused_cloud",
    "mesh",
    "benchmark_tables",
    "benchmark_summary",
    "heightfield",
    "bed_change",
    "change_summary",
}


def test_definitions_validate_and_are_scoped_to_the_survey(synthetic_survey_file, ns):
    defs = build_definitions(synthetic_survey_file)
    dg.Definitions.validate_loadable(defs)
    keys = defs.resolve_all_asset_keys()
    assert {k.path[0] for k in keys} == {"synthetic-demo"} == {ns.survey}
    assert {k.path[-1] for k in keys} == ASSETS
    partitioned = {k.path[-1] for k in keys if defs.resolve_assets_def(k).partitions_def is not None}
    assert partitioned == ASSETS - {
        "survey_calibration",
        "camera_pair_geometry",
        "benchmark_summary",
        "change_summary",
    }
    for key in keys:  # every partitioned asset: the survey's own dynamic frame partitions only
        partitions = defs.resolve_assets_def(key).partitions_def
        if partitions is not None:
            assert isinstance(partitions, dg.DynamicPartitionsDefinition)
            assert partitions.name == "synthetic-demo__frames"
    sensors = {s.name: s for s in defs.sensors}
    assert set(sensors) == {"new_frames_sensor", "automation"}
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in sensors.values())
    assert isinstance(sensors["automation"], dg.AutomationConditionSensorDefinition)


def test_the_stage_registry_names_the_assets_products_and_the_reconstruct_job(synthetic_survey_file, ns):
    defs = build_definitions(synthetic_survey_file)
    job_keys = defs.resolve_job_def(RECONSTRUCT_JOB).asset_layer.executable_asset_keys
    assert set(reconstruction_asset_keys(ns)) == set(job_keys)
    chain = [ns.key("frames"), *(ns.key(s.name) for s in STAGES), ns.key("bed_change")]
    assert reconstruction_asset_keys(ns) == chain
    for stage in STAGES:
        asset = defs.resolve_assets_def(ns.key(stage.name))
        assert Product(stage.name) is stage.product
        assert asset.code_versions_by_key[ns.key(stage.name)] is not None
        assert asset.automation_conditions_by_key[ns.key(stage.name)] is not None


def _validate(env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_the_default_code_location_loads_and_writes_nothing(synthetic_survey_file, tmp_path):
    spec = load_survey_spec(synthetic_survey_file)
    out = _validate(
        {"AQUAMVS_SURVEY": str(synthetic_survey_file)}, PROJECT_ROOT, "-m", "aquamvs_assets.location"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert not Path(spec.store).exists()  # loading definitions writes no store


def test_without_a_survey_the_location_fails_clearly_and_generates_nothing(tmp_path):
    missing = tmp_path / "nowhere" / "survey.yaml"
    out = _validate({"AQUAMVS_SURVEY": str(missing)}, tmp_path, "-m", "aquamvs_assets.location")
    assert out.returncode != 0
    assert f"no survey file at {missing}" in out.stdout + out.stderr
    assert not missing.parent.exists()
