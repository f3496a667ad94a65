"""Benchmark assets: a table per frame (pathway × preset: stage times, memory, sizes, accuracy) and
a survey summary across frames."""

import tempfile

import dagster as dg
import pandas as pd
from pydantic import Field

from aquamvs_assets import metadata
from aquamvs_assets.assets.ingestion import frames
from aquamvs_assets.partitions import frame_partitions
from aquamvs_assets.resources import SurveyResource, ZarrStoreResource
from aquamvs_core.evaluation.benchmark import STAGES, benchmark_matrix
from aquamvs_core.preview import bar_chart
from aquamvs_core.stages.pairs import survey_pairs

GROUP = "benchmarks"


class BenchmarkConfig(dg.Config):
    """Launchpad configuration of ``benchmark_tables``."""

    pathways: list[str] = Field(default_factory=lambda: ["sift"], description="sift and/or lightglue")
    presets: list[str] = Field(default_factory=lambda: ["fast", "balanced"], description="presets to run")


@dg.asset(
    partitions_def=frame_partitions,
    deps=[frames],
    group_name=GROUP,
    kinds={"pandas", "csv"},
    description="Pathway × preset benchmark of one frame: stage times, peak memory, point and vertex "
    "counts, and accuracy against the ground truth when the survey has one. Runs on copies of the store.",
)
def benchmark_tables(
    context: dg.AssetExecutionContext,
    config: BenchmarkConfig,
    survey: SurveyResource,
    store: ZarrStoreResource,
) -> dg.MaterializeResult:
    spec, survey_store = survey.spec(), store.get()
    frame = context.partition_key
    pairs = survey_pairs(survey.rig(), spec)
    with tempfile.TemporaryDirectory(prefix="aquamvs-benchmark-") as tmp:
        table = benchmark_matrix(
            spec.store, frame, pairs, config.pathways, config.presets, tmp, spec.ground_truth
        )
    table.insert(0, "frame", frame)
    path = survey_store.write_table(f"benchmarks/{frame}", table)
    labels = [f"{r.pathway} {r.preset}" for r in table.itertuples()]
    timing = bar_chart(labels, {s: table[f"{s}_s"].tolist() for s in STAGES}, "stage wall time (s)")
    meta = {
        "table": metadata.table(table),
        "path": dg.MetadataValue.path(path),
        "stage_times": metadata.png(timing, "stage wall time"),
    }
    if "median_mm" in table:
        accuracy = bar_chart(labels, {c: table[c].tolist() for c in ("median_mm", "p90_mm")}, "error (mm)")
        meta["accuracy"] = metadata.png(accuracy, "error")
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    deps=[dg.AssetDep(benchmark_tables, partition_mapping=dg.AllPartitionMapping())],
    group_name=GROUP,
    kinds={"pandas", "csv"},
    description="All frames' benchmark tables: mean per pathway and preset, and accuracy over time.",
)
def benchmark_summary(context: dg.AssetExecutionContext, store: ZarrStoreResource) -> dg.MaterializeResult:
    survey_store = store.get()
    keys = context.instance.get_materialized_partitions(benchmark_tables.key)
    tables = [survey_store.read_table(f"benchmarks/{k}") for k in sorted(keys)]
    if not tables:
        raise dg.Failure("no benchmark_tables partition has been materialized yet")
    rows = pd.concat(tables, ignore_index=True)
    numeric = [c for c in rows.columns if c not in ("frame", "pathway", "preset")]
    summary = rows.groupby(["pathway", "preset"], as_index=False)[numeric].mean()
    summary.insert(2, "frames", rows.groupby(["pathway", "preset"]).size().values)
    path = survey_store.write_table("benchmark_summary", summary)
    meta = {
        "summary": metadata.table(summary),
        "path": dg.MetadataValue.path(path),
        "frames": len(tables),
    }
    if "median_mm" in rows:
        over_time = rows.pivot_table(index="frame", columns=["pathway", "preset"], values="median_mm")
        meta["median_mm_over_frames"] = dg.MetadataValue.md(over_time.to_markdown(floatfmt=".3f"))
    return dg.MaterializeResult(metadata=meta)
