"""The quality of a frame's reconstruction against the survey's ground truth (the
``reconstruction_quality`` check and the benchmark's accuracy columns)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aquamvs_core.config import ReconstructionConfig
from aquamvs_core.evaluation.metrics import (
    cell_completeness,
    cloud_errors,
    completeness_split,
    in_silt,
    mesh_metrics,
    reconstruction_metrics,
    silt_cells,
)
from aquamvs_core.evaluation.visibility import rig_visibility
from aquamvs_core.steps import read_cloud, read_mesh
from aquamvs_core.store import SurveyStore
from aquamvs_core.survey import frame_index
from aquamvs_core.synthetic import load_ground_truth


def _rounded(value: float | int | None, digits: int = 4) -> float | int | None:
    return round(value, digits) if isinstance(value, float) else value


def quality_report(
    store: SurveyStore, frame: str, ground_truth: str | Path, config: ReconstructionConfig
) -> dict[str, Any]:
    """Fused cloud and mesh of ``frame`` against the synthetic ground truth, with completeness over
    the cells seen by at least ``config.quality.min_views`` cameras in their original images
    (occlusion-aware, :func:`~aquamvs_core.evaluation.visibility.rig_visibility`: independent of the
    grid the reconstruction works on), and whether every target of ``config.quality`` is met.

    Besides the cloud and mesh accuracy and completeness, the report splits the cloud's completeness
    by how many cameras see a cell (``completeness_2_views``, ``_3_views``, ``_4_to_5_views``,
    ``_6plus_views``, with their ``cells_*`` counts; the earlier ``completeness_2_to_3_views`` and
    ``completeness_4plus_views`` too) and, when the ground truth has a silt mask, inside and outside
    the silt (``silt_completeness``, ``outside_silt_completeness``, ``silt_median_abs_error_mm``).
    Keys of empty bands are None.
    """
    gt = load_ground_truth(ground_truth)
    index = frame_index(frame)
    q = config.quality
    views = rig_visibility(gt, index, store.read_rig())
    seen = views >= q.min_views
    kwargs = {"completeness_radius_mm": q.completeness_radius_mm, "outlier_mm": q.outlier_mm}
    points = read_cloud(store, frame).points
    cloud = reconstruction_metrics(points, gt, index, seen_mask=seen, **kwargs)
    surface = mesh_metrics(read_mesh(store, frame), gt, index, seen_mask=seen, **kwargs)

    complete = cell_completeness(points, gt, index, q.completeness_radius_mm)
    by_views: dict[str, Any] = {}
    for key, band in (("2_to_3", (views >= 2) & (views <= 3)), ("4plus", views >= 4)):
        if band.any():
            by_views[f"completeness_{key}_views"] = round(float(complete[band].mean()), 4)
    silt = silt_cells(gt)
    split = completeness_split(complete, views, silt, q.min_views)
    if silt is not None:
        err = np.abs(cloud_errors(points, gt, index))
        inside = in_silt(points, gt)
        for key, sel in (("silt", inside), ("outside_silt", ~inside)):
            e = err[sel & np.isfinite(err)]
            split[f"{key}_median_abs_error_mm"] = float(np.median(e)) if e.size else None
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
        **{k: _rounded(v) for k, v in split.items()},
    }
