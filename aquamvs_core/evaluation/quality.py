"""The quality of a frame's reconstruction against the survey's ground truth (the
``reconstruction_quality`` check and the benchmark's accuracy columns)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aquamvs_core.config import ReconstructionConfig
from aquamvs_core.evaluation.metrics import mesh_metrics, reconstruction_metrics
from aquamvs_core.evaluation.visibility import rig_visibility
from aquamvs_core.steps import read_cloud, read_mesh
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import frame_index
from aquamvs_core.synthetic import load_ground_truth


def quality_report(
    store: SurveyStore, frame: str, ground_truth: str | Path, config: ReconstructionConfig
) -> dict[str, Any]:
    """Fused cloud and mesh of ``frame`` against the synthetic ground truth, with completeness over
    the cells seen by at least ``config.quality.min_views`` cameras in their original images
    (occlusion-aware, :func:`~aquamvs_core.evaluation.visibility.rig_visibility`), and whether every
    target of ``config.quality`` is met."""
    gt = load_ground_truth(ground_truth)
    index = frame_index(frame)
    q = config.quality
    views = rig_visibility(gt, index, store.read_rig())
    seen = views >= q.min_views
    kwargs = {"completeness_radius_mm": q.completeness_radius_mm, "outlier_mm": q.outlier_mm}
    cloud = reconstruction_metrics(read_cloud(store, frame).points, gt, index, seen_mask=seen, **kwargs)

    surface = mesh_metrics(read_mesh(store, frame), gt, index, seen_mask=seen, **kwargs)
    by_views = {}
    for lo, hi in ((2, 3), (4, 99)):
        band = (views >= lo) & (views <= hi)
        if band.any():
            m = reconstruction_metrics(read_cloud(store, frame).points, gt, index, seen_mask=band, **kwargs)
            by_views[f"completeness_{lo}_to_{hi}_views" if hi < 99 else f"completeness_{lo}plus_views"] = (
                round(m["completeness"], 4)
            )
    passed = (
        cloud["median_abs_error_mm"] <= q.median_abs_error_mm
        and cloud["p90_abs_error_mm"] <= q.p90_abs_error_mm
        and cloud["outlier_fraction"] <= q.outlier_fraction
        and cloud["completeness"] >= q.completeness
    )
    return {
        "passed": bool(passed),
        "cloud_median_abs_error_mm": round(cloud["median_abs_error_mm"], 4),
        "cloud_p90_abs_error_mm": round(cloud["p90_abs_error_mm"], 4),
        "cloud_outlier_fraction": round(cloud["outlier_fraction"], 6),
        "cloud_completeness": round(cloud["completeness"], 4),
        "cloud_points": int(cloud["n_points"]),
        "mesh_median_abs_error_mm": round(surface["median_abs_error_mm"], 4),
        "mesh_p90_abs_error_mm": round(surface["p90_abs_error_mm"], 4),
        "mesh_outlier_fraction": round(surface["outlier_fraction"], 6),
        "mesh_completeness": round(surface["completeness"], 4),
        "cells_seen_by_2plus": int(seen.sum()),
        **by_views,
    }
