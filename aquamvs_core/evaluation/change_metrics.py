"""Accuracy of heightfields and bed changes against a ground-truth heightfield per frame.

* **Heightfield** (:func:`heightfield_metrics`): ``z − z_gt`` at the cell centres (the ground
  truth's bilinear surface), in mm, over the cells with a height; and its **coverage**: the
  fraction of the cells that two or more cameras see (occlusion-aware,
  :func:`~aquamvs_core.evaluation.metrics.visibility_count` on the cell centres) that have a height.
* **Change** (:func:`change_metrics`): ``dz − dz_gt`` (mm) over the compared cells; volumes
  deepened, raised and net against the ground truth's over the same cells; and the **calibration
  of the level of detection**: the fraction of truly unchanged cells (``|dz_gt| <
  unchanged_tol_mm``) whose ``|dz|`` is under the LoD, against its nominal confidence (also at
  other confidences, the LoD rescaled by the ratio of the normal quantiles), and the fraction of all
  compared cells whose error ``|dz − dz_gt|`` is under the LoD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.evaluation.metrics import visibility_count
from aquamvs_core.stages.bed_grid import BedGrid
from aquamvs_core.stages.change import BedChange
from aquamvs_core.stages.depth_map import DepthMap
from aquamvs_core.stages.heightfield import Heightfield
from aquamvs_core.synthetic.ground_truth import HeightGrid, bilinear_height

#: Confidences at which the LoD's calibration is reported besides its own.
CALIBRATION_LEVELS = (0.68, 0.95, 0.99)


def gt_on_grid(gt: HeightGrid, frame_index: int, grid: BedGrid, step: int = 1) -> np.ndarray:
    """(ny', nx') ground-truth Z at the centres of every ``step``-th cell of ``grid`` (NaN outside)."""
    xx, yy = np.meshgrid(grid.x[::step], grid.y[::step])
    xy = np.stack([xx.ravel(), yy.ravel()], axis=1)
    return bilinear_height(gt.x, gt.y, gt.heights(frame_index), xy).reshape(xx.shape)


@dataclass(frozen=True)
class _GridTruth:
    """The ground truth resampled at (every ``step``-th) cell centre of a grid: a
    :class:`~aquamvs_core.synthetic.ground_truth.HeightGrid` for :func:`visibility_count`."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    def heights(self, frame_index: int) -> np.ndarray:
        return self.z


def seen_cells(
    gt: HeightGrid,
    frame_index: int,
    grid: BedGrid,
    cameras: dict[str, RefractiveCamera],
    masks: dict[str, np.ndarray] | None = None,
    gt_depth_maps: dict[str, DepthMap] | None = None,
    step: int = 2,
) -> np.ndarray:
    """(ny', nx') int32: cameras that see the true bed at every ``step``-th cell centre (0 where the
    ground truth has no height)."""
    z = gt_on_grid(gt, frame_index, grid, step)
    truth = _GridTruth(grid.x[::step], grid.y[::step], np.nan_to_num(z, nan=-1e6))
    views = visibility_count(truth, frame_index, cameras, masks, gt_depth_maps, cell_step=1)
    return np.where(np.isfinite(z), views, 0)


def heightfield_metrics(
    bed: Heightfield, gt: HeightGrid, frame_index: int, views: np.ndarray | None = None, step: int = 2
) -> dict[str, float]:
    """Error (mm) and coverage of ``bed`` against the ground truth (module docstring).

    Args:
        views: :func:`seen_cells` of the same ``step`` (None: no coverage figures).
    """
    err = (bed.z.astype(np.float64) - gt_on_grid(gt, frame_index, bed.grid)) * 1e3
    ok = np.isfinite(err)
    a = np.abs(err[ok])
    out = {
        "cells": float(ok.sum()),
        "median_abs_error_mm": float(np.median(a)) if a.size else math.nan,
        "p90_abs_error_mm": float(np.quantile(a, 0.9)) if a.size else math.nan,
        "mean_error_mm": float(err[ok].mean()) if a.size else math.nan,
    }
    if views is not None:
        seen = views >= 2
        have = bed.valid[::step, ::step]
        out["cells_seen_2plus"] = float(seen.sum())
        out["coverage_2plus"] = float(have[seen].mean()) if seen.any() else math.nan
        sub = np.abs(err[::step, ::step])[seen & have]
        out["median_abs_error_seen_mm"] = float(np.median(sub)) if sub.size else math.nan
    return out


def change_metrics(
    change: BedChange,
    gt: HeightGrid,
    from_index: int,
    to_index: int,
    unchanged_tol_mm: float = 0.02,
) -> dict[str, float]:
    """Error of ``change`` (frame ``from_index`` → ``to_index``) against the ground truth's exact
    change, volumes against the truth's, and the LoD's calibration (module docstring)."""
    dz_gt = gt_on_grid(gt, to_index, change.grid) - gt_on_grid(gt, from_index, change.grid)
    ok = change.valid & np.isfinite(dz_gt)
    dz, truth, lod = change.dz[ok].astype(np.float64), dz_gt[ok], change.lod[ok].astype(np.float64)
    err = np.abs(dz - truth) * 1e3
    area = change.grid.cell_area
    out: dict[str, float] = {
        "cells": float(ok.sum()),
        "median_abs_error_mm": float(np.median(err)) if err.size else math.nan,
        "p90_abs_error_mm": float(np.quantile(err, 0.9)) if err.size else math.nan,
        "median_abs_dz_gt_mm": float(np.median(np.abs(truth)) * 1e3) if err.size else math.nan,
    }
    for name, est, true in (
        ("deepened", dz[dz > 0].sum(), truth[truth > 0].sum()),
        ("raised", -dz[dz < 0].sum(), -truth[truth < 0].sum()),
        ("net", dz.sum(), truth.sum()),
    ):
        out[f"{name}_m3"] = float(est * area)
        out[f"{name}_gt_m3"] = float(true * area)
        out[f"{name}_rel_error"] = float(est / true - 1) if true else math.nan
    unchanged = np.abs(truth) * 1e3 < unchanged_tol_mm
    out["unchanged_cells"] = float(unchanged.sum())
    nominal = NormalDist().inv_cdf(0.5 + change.confidence / 2)
    for level in sorted({*CALIBRATION_LEVELS, change.confidence}):
        scaled = lod * NormalDist().inv_cdf(0.5 + level / 2) / nominal
        key = f"{round(100 * level)}"
        out[f"unchanged_under_lod_{key}"] = (
            float(np.mean(np.abs(dz[unchanged]) < scaled[unchanged])) if unchanged.any() else math.nan
        )
        out[f"error_under_lod_{key}"] = float(np.mean(err * 1e-3 < scaled)) if err.size else math.nan
    out["median_lod_mm"] = float(np.median(lod) * 1e3) if lod.size else math.nan
    return out
