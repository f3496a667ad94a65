"""Benchmark the reconstruction: profile every stage of one frame, and run a matrix of pathways ×
presets on private copies of a survey's store, with accuracy against ground truth when known."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from aquamvs_core import steps
from aquamvs_core.config import ReconstructionConfig, build_config
from aquamvs_core.evaluation.profiling import Profiler
from aquamvs_core.evaluation.quality import quality_report
from aquamvs_core.stages.pairs import CameraPair
from aquamvs_core.store import SurveyStore

#: Stage names (= asset names) in flow order, and those of the dense stages.
STAGES = tuple(stage.name for stage in steps.STAGES)
DENSE_STAGES = tuple(stage.name for stage in steps.DENSE_STAGES)


def profile_frame(
    store: SurveyStore,
    frame: str,
    pairs: Sequence[CameraPair],
    config: ReconstructionConfig,
    profiler: Profiler | None = None,
) -> tuple[Profiler, dict[str, int]]:
    """Run every reconstruction step of ``frame`` (the same steps as the assets), one profiled stage
    each. Returns the profiler and the output sizes."""
    profiler = profiler or Profiler()
    cams = steps.StoreCameras.load(store)
    dense_pairs = steps.dense_pairs(store, pairs, config)
    sparse_matches, sparse_cloud, pairwise_depths, camera_depths, fused_cloud, mesh_stage, heightfield = (
        STAGES
    )
    with profiler.stage(sparse_matches):
        steps.match_frame_pairs(store, frame, pairs, config, cams)
    with profiler.stage(sparse_cloud):
        steps.sparse_cloud_step(store, frame, pairs, config)
    with profiler.stage(pairwise_depths):
        steps.sweep_frame_pairs(store, frame, dense_pairs, config, cams)
    with profiler.stage(camera_depths):
        steps.camera_depths_step(store, frame, dense_pairs, config)
    with profiler.stage(fused_cloud):
        cloud = steps.fused_cloud_step(store, frame, config)
    with profiler.stage(mesh_stage):
        mesh = steps.mesh_step(store, frame, config)
    with profiler.stage(heightfield):
        bed = steps.heightfield_step(store, frame, config)
    sizes = {"points": len(cloud), "vertices": len(mesh.vertices), "triangles": len(mesh.triangles)}
    return profiler, {**sizes, "heightfield_cells": int(bed.valid.sum())}


def accuracy_columns(report: dict[str, Any]) -> dict[str, float]:
    """The benchmark table's accuracy columns from :func:`~aquamvs_core.evaluation.quality.quality_report`."""
    return {
        "median_mm": report["cloud_median_abs_error_mm"],
        "p90_mm": report["cloud_p90_abs_error_mm"],
        "outlier_fraction": report["cloud_outlier_fraction"],
        "completeness": report["cloud_completeness"],
        "mesh_median_mm": report["mesh_median_abs_error_mm"],
        "mesh_completeness": report["mesh_completeness"],
    }


def benchmark_matrix(
    store_root: str | Path,
    frame: str,
    pairs: Sequence[CameraPair],
    pathways: Sequence[str],
    presets: Sequence[str],
    work_dir: str | Path,
    ground_truth: str | Path | None = None,
) -> pd.DataFrame:
    """One row per (pathway, preset): stage wall times (s), dense and total time, peak RSS (MB),
    output sizes and, with ``ground_truth``, accuracy. Each row runs on a private copy of the
    (local) store at ``store_root`` that already holds the ingested ``frame``."""
    source = Path(store_root)
    if not source.is_dir():
        raise ValueError(f"{store_root}: the benchmark needs a local store with the ingested frame")
    rows = []
    for pathway in pathways:
        for preset in presets:
            config = build_config(preset, pathway)
            copy = Path(work_dir) / f"store-{pathway}-{preset}.zarr"
            if copy.exists():
                shutil.rmtree(copy)
            shutil.copytree(source, copy)
            store = SurveyStore(copy)
            profiler, sizes = profile_frame(store, frame, pairs, config)
            times = profiler.table().set_index("stage")
            row: dict[str, Any] = {
                "pathway": pathway,
                "preset": preset,
                "num_depths": config.plane_sweep.num_depths,
            }
            row.update({f"{stage}_s": round(float(times.loc[stage, "wall_s"]), 3) for stage in STAGES})
            row["dense_s"] = round(sum(row[f"{s}_s"] for s in DENSE_STAGES), 3)
            row["total_s"] = round(sum(row[f"{s}_s"] for s in STAGES), 3)
            row["peak_rss_mb"] = round(float(times["peak_rss_mb"].max()), 1)
            row.update(sizes)
            if ground_truth is not None:
                row.update(accuracy_columns(quality_report(store, frame, ground_truth, config)))
            rows.append(row)
    return pd.DataFrame(rows)
