"""One long-lived instance, several rigs: each survey keeps its own assets, frames and figures; every
frame reports its own materialization and quality verdict; a re-run redoes nothing that is current;
a changed configuration redoes exactly what it changes; and the UI (a real dagster-webserver on the
shared instance, with one code location per rig) shows all of it, stale products included."""

from __future__ import annotations

import os

import dagster as dg
import pytest
from dagster_helpers import webserver
from graphql_client import graphql

from aquamvs_assets.assets.surface import QUALITY_CHECK
from aquamvs_assets.definitions import build_definitions, survey_namespace
from aquamvs_assets.project import ensure_dagster_home
from aquamvs_assets.resources import ReconstructionSettings
from aquamvs_assets.runner import run_reconstruction
from aquamvs_assets.workspace import add_survey_location
from aquamvs_core.evaluation.quality import quality_report
from aquamvs_core.steps import read_mesh
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Product, load_survey_spec

FRAMES = {"rig-a": [0, 1], "rig-b": [0]}
#: Fast, and 6 dense pairs a frame (one source per camera by view geometry, no auxiliary sources):
#: these tests are about the platform, not the accuracy.
CHEAP = "use_auxiliary_sources: false"


def _fast(extra: str = "") -> ReconstructionSettings:
    return ReconstructionSettings(preset="fast", overrides_yaml=f"{CHEAP}\n{extra}")


FAST = _fast()


def _written(store: SurveyStore) -> dict[str, str]:
    """Every committed product of the store → its commit time."""
    paths = [p for product in Product for p in store.product_paths(product.value)]
    return {p: store.product_attrs(p)["written_at"] for p in paths}


@pytest.fixture(scope="module")
def lab(synthetic_small_survey, tmp_path_factory):
    """Two rigs (surveys) reconstructed into one persistent instance."""
    root = tmp_path_factory.mktemp("lab")
    previous = os.environ.get("DAGSTER_HOME")
    home = ensure_dagster_home(root / "home")
    surveys = {}
    try:
        for name, frames in FRAMES.items():
            spec = load_survey_spec(synthetic_small_survey).model_copy(
                update={"name": name, "store": str(root / name / "store.zarr"), "pair_neighbours": 1}
            )
            survey_file = spec.to_yaml(root / name / "survey.yaml")
            instance = dg.DagsterInstance.from_config(str(home))
            surveys[name] = (survey_file, run_reconstruction(survey_file, instance, FAST, frames))
        yield root, home, surveys
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous


def test_two_rigs_keep_their_own_assets_frames_and_figures(lab):
    _, home, surveys = lab
    instance = dg.DagsterInstance.from_config(str(home))
    for name, (survey_file, run) in surveys.items():
        ns = survey_namespace(survey_file)
        keys = [f"f{i:06d}" for i in FRAMES[name]]
        assert instance.get_dynamic_partitions(ns.frames.name) == keys
        assert instance.get_materialized_partitions(ns.key("mesh")) == set(keys)
        store = SurveyStore(load_survey_spec(survey_file).store)
        assert store.survey == name and store.list_frames() == keys
        spec = load_survey_spec(survey_file)
        for frame in keys:  # each partition shows its own figures and its own verdict
            (record,) = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=ns.key("mesh"), asset_partitions=[frame]), limit=1
            ).records
            vertices = record.asset_materialization.metadata["vertices"].value
            assert vertices == len(read_mesh(store, frame).vertices)
            (verdict,) = [c for c in run.checks if c.check_name == QUALITY_CHECK and c.partition == frame]
            report = quality_report(store, frame, spec.ground_truth, FAST.config())
            assert verdict.metadata["cloud_points"].value == report["cloud_points"]
            assert verdict.passed == report["passed"]
    a_frames = {
        frame: instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(["rig-a", "fused_cloud"]), asset_partitions=[frame]),
            limit=1,
        ).records[0]
        for frame in ("f000000", "f000001")
    }
    points = {f: r.asset_materialization.metadata["points"].value for f, r in a_frames.items()}
    assert points["f000000"] != points["f000001"]  # two frames, two different clouds, two figures


def test_a_rerun_recomputes_nothing_and_a_new_configuration_only_what_it_changes(lab):
    _, home, surveys = lab
    survey_file, _ = surveys["rig-b"]
    store = SurveyStore(load_survey_spec(survey_file).store)
    instance = dg.DagsterInstance.from_config(str(home))
    before = _written(store)
    # With one source per camera chosen by view geometry (stages/pairs.py), every ring camera's best
    # source is the fisheye, cam0 and cam2 also pair for the coverage guarantee, and the fisheye is a
    # reference with the 4 ring cameras: 10 sparse pairs and the sparse cloud; without auxiliary
    # sources 6 dense pairs (cam0-cam2, cam2-cam0, aux-cam*) and 3 cameras with a depth map (cam1
    # and cam3 have only the fisheye as source); fused cloud, mesh, heightfield.
    assert len(before) == 10 + 1 + 6 + 3 + 1 + 1 + 1
    run_reconstruction(survey_file, instance, FAST, FRAMES["rig-b"])
    assert _written(store) == before  # nothing recomputed

    meshier = ReconstructionSettings(
        preset="fast", overrides_yaml=f"{CHEAP}\nmesh: {{heightfield_cell_mm: 3.0}}"
    )
    run_reconstruction(survey_file, instance, meshier, FRAMES["rig-b"])
    after = _written(store)
    changed = {p for p in after if after[p] != before[p]}
    assert changed == {"mesh/f000000"}  # only the mesh depends on the mesh configuration

    sparser = ReconstructionSettings(
        preset="fast", overrides_yaml=f"{CHEAP}\nmatching: {{max_keypoints: 512}}"
    )
    run_reconstruction(survey_file, instance, sparser, FRAMES["rig-b"])
    final = _written(store)
    untouched = {p for p in final if final[p] == after[p]}
    assert untouched == set()  # the sparse points bound every depth: everything downstream is redone


def test_the_ui_shows_both_rigs_their_partitions_and_stale_products(lab, tmp_path):
    _, home, surveys = lab
    workspace = tmp_path / "workspace.yaml"
    for survey_file, _ in surveys.values():
        add_survey_location(survey_file, workspace)
    # rig-a's sparse matches of frame 0 are made again with another configuration: everything
    # downstream of them in frame 0 is now stale, frame 1 is not.
    survey_a, _ = surveys["rig-a"]
    ns = survey_namespace(survey_a)
    defs = build_definitions(survey_a, _fast("matching: {max_keypoints: 700}"))
    job = dg.define_asset_job("sparse_only", selection=[ns.key("sparse_matches")]).resolve(
        asset_graph=defs.resolve_asset_graph()
    )
    instance = dg.DagsterInstance.from_config(str(home))
    assert job.execute_in_process(instance=instance, partition_key="f000000").success

    listing = "{ assetNodes { assetKey { path } isPartitioned } }"
    query = """query ($keys: [AssetKeyInput!]) { assetNodes(assetKeys: $keys) {
        assetKey { path } partitionKeys staleStatusByPartition(partitions: ["f000000", "f000001"])
        assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions } } } }"""
    with webserver(home, workspace, tmp_path / "webserver.log") as port:
        listed = graphql(port, listing)["data"]["assetNodes"]
        keys = [{"path": n["assetKey"]["path"]} for n in listed if n["isPartitioned"]]
        nodes = graphql(port, query, {"keys": keys})["data"]["assetNodes"]
    assert {n["assetKey"]["path"][0] for n in listed} == {"rig-a", "rig-b"}
    by_key = {tuple(n["assetKey"]["path"]): n for n in nodes}
    assert by_key[("rig-a", "frames")]["partitionKeys"] == ["f000000", "f000001"]
    assert by_key[("rig-b", "frames")]["partitionKeys"] == ["f000000"]
    assert sorted(by_key[("rig-a", "mesh")]["assetPartitionStatuses"]["materializedPartitions"]) == [
        "f000000",
        "f000001",
    ]
    assert by_key[("rig-b", "mesh")]["assetPartitionStatuses"]["materializedPartitions"] == ["f000000"]
    # Dagster marks the direct dependants of a changed data version stale (its staleness does not
    # propagate further); the steps' fingerprints keep every further product from using old inputs.
    assert by_key[("rig-a", "sparse_cloud")]["staleStatusByPartition"] == ["STALE", "FRESH"]
    assert by_key[("rig-a", "sparse_matches")]["staleStatusByPartition"] == ["FRESH", "FRESH"]
    assert by_key[("rig-b", "sparse_cloud")]["staleStatusByPartition"] == ["FRESH", "MISSING"]
