"""Profiling and the benchmark matrix on a tiny survey: every stage reported, plausible values,
and accuracy columns that agree with the metrics module on a planted reconstruction."""

from __future__ import annotations

import numpy as np
import pytest

from aquamvs_assets.cli import main as cli_main
from aquamvs_core import steps as steps
from aquamvs_core.config import build_config
from aquamvs_core.evaluation.benchmark import STAGES, accuracy_columns, benchmark_matrix, profile_frame
from aquamvs_core.evaluation.quality import quality_report
from aquamvs_core.stages.fusion import FusedCloud
from aquamvs_core.stages.mesh import MeshConfig, build_mesh
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import Product, product_path
from aquamvs_core.synthetic import load_ground_truth

FRAME = "f000000"


def test_profiler_reports_every_stage(ingested):
    _, store, pairs = ingested
    profiler, sizes = profile_frame(store, FRAME, pairs, build_config("fast"))
    table = profiler.table()
    assert list(table["stage"]) == list(STAGES)
    assert (table["wall_s"] > 0).all() and (table["cpu_s"] >= 0).all()
    assert (table["peak_rss_mb"] >= table["rss_before_mb"]).all() and (table["rss_before_mb"] > 50).all()
    assert table["wall_share"].sum() == pytest.approx(1.0)
    assert sizes["points"] > 1000 and sizes["triangles"] > 1000
    top = profiler.bottlenecks(3)
    assert len(top) == 3 and all("% of the time" in line for line in top)


def test_matrix_has_the_columns_and_plausible_values(ingested, tmp_path):
    spec, store, pairs = ingested
    table = benchmark_matrix(spec.store, FRAME, pairs, ["sift"], ["fast"], tmp_path, spec.ground_truth)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["pathway"], row["preset"], row["num_depths"]) == ("sift", "fast", 64)
    for stage in STAGES:
        assert row[f"{stage}_s"] > 0
    assert row["total_s"] >= row["dense_s"] > 0 and row["peak_rss_mb"] > 50
    for column in ("median_mm", "p90_mm", "outlier_fraction", "completeness"):
        assert np.isfinite(row[column])
    # 160×120 images (~9 mm pixels on the bed) and `fast` fusing every 2nd pixel: points ~2 cm apart,
    # so completeness within 5 mm is low; loose but real bounds.
    assert 0 < row["median_mm"] < 5 and row["median_mm"] <= row["p90_mm"]
    assert 0.05 < row["completeness"] <= 1.0
    # The source store is untouched: the matrix works on copies.
    assert not store.has_product(product_path(Product.FUSED_CLOUD, FRAME))


def test_accuracy_columns_agree_with_the_metrics_on_a_planted_reconstruction(ingested):
    spec, store, _ = ingested
    gt = load_ground_truth(spec.ground_truth)
    x, y = np.meshgrid(gt.x[::3], gt.y[::3])
    xy = np.column_stack([x.ravel(), y.ravel()])
    z = gt.height_at(0, xy) + 0.0007  # the whole bed 0.7 mm too deep
    rng = np.random.default_rng(0)
    outliers = rng.random(len(z)) < 0.03
    z[outliers] += 0.020  # 3 % of the points 20 mm off
    points = np.column_stack([xy, z])
    n = len(points)
    normals = np.tile(np.array([0.0, 0.0, -1.0], np.float32), (n, 1))
    cloud = FusedCloud(points, np.full((n, 3), 128, np.uint8), normals, np.full(n, 2, np.int32))
    store.write_product(product_path(Product.FUSED_CLOUD, FRAME), cloud.as_arrays())
    clean = FusedCloud(
        points[~outliers], cloud.colors[~outliers], normals[~outliers], cloud.support[~outliers]
    )
    mesh = build_mesh(clean, MeshConfig(method="heightfield", color_source="cloud"))
    store.write_product(product_path(Product.MESH, FRAME), steps.mesh_to_arrays(mesh))
    columns = accuracy_columns(quality_report(store, FRAME, spec.ground_truth, build_config()))
    assert columns["median_mm"] == pytest.approx(0.7, abs=0.01)
    assert columns["outlier_fraction"] == pytest.approx(outliers.mean(), abs=0.002)
    assert columns["mesh_median_mm"] == pytest.approx(0.7, abs=0.05)


def test_profile_command_prints_stages_and_bottlenecks(ingested, capsys):
    spec, _, _ = ingested
    survey_file = spec.to_yaml(SurveyStore(spec.store).root + ".survey.yaml")
    assert cli_main(["profile", str(survey_file), "--preset", "fast"]) == 0
    out = capsys.readouterr().out
    assert all(stage in out for stage in STAGES)
    assert "top bottlenecks:" in out and out.count("% of the time") == 3


def test_benchmark_assets_materialize_a_table_and_a_summary(ingested, synthetic_survey_file):
    import dagster as dg

    from aquamvs_assets.assets.benchmarks import build_benchmark_assets
    from aquamvs_assets.definitions import survey_namespace
    from aquamvs_assets.resources import SurveyResource, ZarrStoreResource

    spec, store, pairs = ingested
    ns = survey_namespace(synthetic_survey_file)
    benchmark_tables, benchmark_summary = build_benchmark_assets(ns, pairs)
    resources = {
        "survey": SurveyResource(survey_file=str(synthetic_survey_file)),
        "store": ZarrStoreResource(root=spec.store),
    }
    op = ns.key("benchmark_tables").to_python_identifier()
    run_config = {"ops": {op: {"config": {"pathways": ["sift"], "presets": ["fast"]}}}}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(ns.frames.name, [FRAME])
        result = dg.materialize(
            [benchmark_tables],
            partition_key=FRAME,
            instance=instance,
            resources=resources,
            run_config=run_config,
        )
        assert result.success
        summary = dg.materialize(
            [benchmark_tables, benchmark_summary],
            selection=[benchmark_summary],
            instance=instance,
            resources=resources,
        )
        assert summary.success
    table = store.read_table(f"benchmarks/{FRAME}")
    assert list(table[["frame", "pathway", "preset"]].iloc[0]) == [FRAME, "sift", "fast"]
    assert all(table[f"{s}_s"].iloc[0] > 0 for s in STAGES) and np.isfinite(table["median_mm"].iloc[0])
    meta = result.asset_materializations_for_node(op)[0].metadata
    assert "data:image/png;base64," in meta["stage_times"].value and len(meta["table"].value.records) == 1
    totals = store.read_table("benchmark_summary")
    assert len(totals) == 1 and totals["frames"].iloc[0] == 1
    assert totals["median_mm"].iloc[0] == pytest.approx(table["median_mm"].iloc[0])


def test_profile_run_flag_adds_stage_profile_metadata(ingested, synthetic_survey_file):
    import dagster as dg

    from aquamvs_assets.assets.surface import build_surface_assets
    from aquamvs_assets.definitions import survey_namespace
    from aquamvs_assets.resources import ReconstructionSettings, ZarrStoreResource

    spec, store, pairs = ingested
    profile_frame(store, FRAME, pairs, build_config("fast"))  # upstream products of fused_cloud
    ns = survey_namespace(synthetic_survey_file)
    fused_cloud, _ = build_surface_assets(ns, None)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(ns.frames.name, [FRAME])
        result = dg.materialize(
            [fused_cloud],
            partition_key=FRAME,
            instance=instance,
            resources={
                "store": ZarrStoreResource(root=spec.store),
                "reconstruction": ReconstructionSettings(preset="fast", profile=True),
            },
        )
    meta = result.asset_materializations_for_node(ns.key("fused_cloud").to_python_identifier())[0].metadata
    assert meta["profile_wall_s"].value > 0 and meta["profile_cpu_s"].value > 0
    assert meta["profile_peak_rss_mb"].value > 50
