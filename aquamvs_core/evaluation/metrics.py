"""Accuracy and completeness of a reconstruction against a ground-truth heightfield.

The ground truth is a :class:`~aquamvs_core.synthetic.GroundTruth` (or a
:class:`~aquamvs_core.synthetic.Terrain`): a bilinear heightfield ``Z = h(x, y)`` per frame, world Z
down, metres. Errors are reported in **millimetres**.

* **Accuracy** (:func:`cloud_errors`): the signed *vertical* error ``Z_point - h(x_point, y_point)``
  (positive: the point is below the true bottom). For the gentle slopes of a bed this is within a
  few per cent of the distance to the surface, and it is exact and cheap.
* **Completeness**: the fraction of evaluation cells (ground-truth grid nodes, subsampled to about
  2 mm spacing with ``cell_step``) that have a reconstructed point within ``completeness_radius_mm``
  in 3-D (Open3D nearest-neighbour search). Usually restricted to the cells that at least two
  cameras see (:func:`visibility_count`), since nothing else can be reconstructed.
* **Completeness by condition** (:func:`cell_completeness`, :func:`completeness_split`): which
  cells are complete, split by how many cameras see them (2, 3, 4–5, 6+) and inside / outside the
  ground truth's silt mask (surveys with silt patches).
* The exact ground-truth depth maps that the occlusion test of :func:`visibility_count` takes are
  :func:`aquamvs_core.synthetic.ground_truth_views.gt_depth_maps` (undistorted grids); counts on
  the original images (lens, fold guard) are :mod:`aquamvs_core.evaluation.lens_visibility`'s.
"""

from __future__ import annotations

import math

import numpy as np
import open3d as o3d
import torch

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.camera.sampling import sample_map
from aquamvs_core.runtime import torch_threads
from aquamvs_core.stages.depth_map import DepthMap
from aquamvs_core.stages.fusion.cloud import nearest_distances
from aquamvs_core.synthetic.ground_truth import HeightGrid, bilinear_height

DEFAULT_CELL_SPACING = 0.002
"""Target spacing (metres) of the evaluation cells when ``cell_step`` is not given."""

VIEW_BANDS: tuple[tuple[str, int, int | None], ...] = (
    ("2_views", 2, 2),
    ("3_views", 3, 3),
    ("4_to_5_views", 4, 5),
    ("6plus_views", 6, None),
)
"""(key suffix, lowest, highest or None) of the view-count bands of :func:`completeness_split`."""


# --------------------------------------------------------------------------------------------
# Ground-truth grid helpers
# --------------------------------------------------------------------------------------------


def height_at(gt: HeightGrid, frame_index: int, xy: np.ndarray) -> np.ndarray:
    """World Z (N,) of the bilinear ground truth at ``xy`` (N, 2), metres; NaN outside the grid."""
    return bilinear_height(gt.x, gt.y, gt.heights(frame_index), xy)


def default_cell_step(gt: HeightGrid, spacing: float = DEFAULT_CELL_SPACING) -> int:
    """Grid subsampling step giving evaluation cells about ``spacing`` metres apart (at least 1)."""
    dx = float(gt.x[1] - gt.x[0])
    return max(1, round(spacing / dx))


def cell_points(gt: HeightGrid, frame_index: int, cell_step: int | None = None) -> np.ndarray:
    """(Ny', Nx', 3) world points of the evaluation cells: grid nodes ``[::cell_step, ::cell_step]``."""
    step = default_cell_step(gt) if cell_step is None else int(cell_step)
    if step < 1:
        raise ValueError(f"cell_step must be >= 1, got {cell_step}")
    x, y = gt.x[::step], gt.y[::step]
    z = gt.heights(frame_index)[::step, ::step]
    xx, yy = np.meshgrid(x, y)
    return np.stack([xx, yy, z], axis=-1)


# --------------------------------------------------------------------------------------------
# Accuracy and completeness
# --------------------------------------------------------------------------------------------


def cloud_errors(points: np.ndarray, gt: HeightGrid, frame_index: int) -> np.ndarray:
    """(N,) signed vertical errors, mm: ``Z_point - h(x, y)`` (NaN outside the ground-truth grid)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return (pts[:, 2] - height_at(gt, frame_index, pts[:, :2])) * 1e3


def reconstruction_metrics(
    points: np.ndarray,
    gt: HeightGrid,
    frame_index: int,
    seen_mask: np.ndarray | None = None,
    completeness_radius_mm: float = 5.0,
    outlier_mm: float = 10.0,
    cell_step: int | None = None,
) -> dict[str, float]:
    """Accuracy and completeness of ``points`` (N, 3) against the ground truth of ``frame_index``.

    Args:
        seen_mask: (Ny', Nx') bool over the evaluation cells (``cell_points(gt, f, cell_step)``),
            e.g. ``visibility_count(...) >= 2``; completeness counts only these cells (all if None).
        completeness_radius_mm: a cell is complete when a point lies within this 3-D distance.
        outlier_mm: points with a larger absolute vertical error are outliers.
        cell_step: subsampling of the ground-truth grid (default: about 2 mm spacing).

    Returns:
        ``n_points``; ``n_evaluated`` (points over the ground-truth grid; the error statistics use
        these); ``median_abs_error_mm``, ``p90_abs_error_mm``, ``mean_error_mm`` (signed bias),
        ``rmse_mm``, ``outlier_fraction``; ``n_cells`` (cells in the mask) and ``completeness``.
        Statistics over no points are NaN.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    err = cloud_errors(pts, gt, frame_index)
    err = err[np.isfinite(err)]
    out: dict[str, float] = {"n_points": float(pts.shape[0]), "n_evaluated": float(err.size)}
    if err.size:
        a = np.abs(err)
        out.update(
            median_abs_error_mm=float(np.median(a)),
            p90_abs_error_mm=float(np.quantile(a, 0.9)),
            mean_error_mm=float(err.mean()),
            rmse_mm=float(np.sqrt(np.mean(err * err))),
            outlier_fraction=float(np.mean(a > outlier_mm)),
        )
    else:
        for k in ("median_abs_error_mm", "p90_abs_error_mm", "mean_error_mm", "rmse_mm", "outlier_fraction"):
            out[k] = math.nan
    cells = cell_points(gt, frame_index, cell_step)
    if seen_mask is not None:
        mask = np.asarray(seen_mask, dtype=bool)
        if mask.shape != cells.shape[:2]:
            raise ValueError(f"seen_mask has shape {mask.shape}, the evaluation cells {cells.shape[:2]}")
        cells = cells[mask]
    cells = cells.reshape(-1, 3)
    out["n_cells"] = float(cells.shape[0])
    if cells.shape[0]:
        near = nearest_distances(pts, cells) <= completeness_radius_mm * 1e-3
        out["completeness"] = float(near.mean())
    else:
        out["completeness"] = math.nan
    return out


def cell_completeness(
    points: np.ndarray,
    gt: HeightGrid,
    frame_index: int,
    completeness_radius_mm: float = 5.0,
    cell_step: int | None = None,
) -> np.ndarray:
    """(Ny', Nx') bool: the evaluation cells (:func:`cell_points`) that have a point of ``points``
    (N, 3) within ``completeness_radius_mm`` in 3-D (the test of :func:`reconstruction_metrics`)."""
    cells = cell_points(gt, frame_index, cell_step)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if pts.shape[0] == 0:
        return np.zeros(cells.shape[:2], dtype=bool)
    near = nearest_distances(pts, cells.reshape(-1, 3)) <= completeness_radius_mm * 1e-3
    return near.reshape(cells.shape[:2])


def silt_cells(gt: HeightGrid, cell_step: int | None = None) -> np.ndarray | None:
    """(Ny', Nx') bool silt mask of the evaluation cells, or None when the ground truth has none."""
    mask = getattr(gt, "silt_mask", None)
    if mask is None:
        return None
    step = default_cell_step(gt) if cell_step is None else int(cell_step)
    return np.asarray(mask, dtype=bool)[::step, ::step]


def completeness_split(
    complete: np.ndarray, views: np.ndarray, silt: np.ndarray | None = None, min_views: int = 2
) -> dict[str, float | int | None]:
    """Completeness of the cells by how many cameras see them, and inside / outside the silt.

    Args:
        complete: (Ny', Nx') bool, :func:`cell_completeness`.
        views: (Ny', Nx') int, :func:`visibility_count`.
        silt: (Ny', Nx') bool, :func:`silt_cells` (None: no silt keys).
        min_views: the silt split counts the cells seen by at least this many cameras.

    Returns:
        ``completeness_<band>`` (fraction, None where the band has no cell) and ``cells_<band>``
        for each band of :data:`VIEW_BANDS`; with ``silt``: ``silt_completeness``,
        ``outside_silt_completeness``, ``silt_cells``, ``outside_silt_cells``.
    """
    complete, views = np.asarray(complete, dtype=bool), np.asarray(views)
    if complete.shape != views.shape:
        raise ValueError(f"complete {complete.shape} and views {views.shape} must have the same shape")

    def fraction(mask: np.ndarray) -> float | None:
        return float(complete[mask].mean()) if mask.any() else None

    out: dict[str, float | int | None] = {}
    for key, lo, hi in VIEW_BANDS:
        band = (views >= lo) & (views <= hi) if hi is not None else views >= lo
        out[f"completeness_{key}"] = fraction(band)
        out[f"cells_{key}"] = int(band.sum())
    if silt is not None:
        silt = np.asarray(silt, dtype=bool)
        if silt.shape != views.shape:
            raise ValueError(f"silt {silt.shape} and views {views.shape} must have the same shape")
        seen = views >= min_views
        out["silt_completeness"] = fraction(seen & silt)
        out["outside_silt_completeness"] = fraction(seen & ~silt)
        out["silt_cells"] = int((seen & silt).sum())
        out["outside_silt_cells"] = int((seen & ~silt).sum())
    return out


def in_silt(points: np.ndarray, gt: HeightGrid) -> np.ndarray:
    """(N,) bool: points whose nearest ground-truth node lies in the silt mask (all False without one
    or outside the grid)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    mask = getattr(gt, "silt_mask", None)
    if mask is None or pts.shape[0] == 0:
        return np.zeros(pts.shape[0], dtype=bool)
    dx, dy = float(gt.x[1] - gt.x[0]), float(gt.y[1] - gt.y[0])
    ix = np.round((pts[:, 0] - gt.x[0]) / dx)
    iy = np.round((pts[:, 1] - gt.y[0]) / dy)
    inside = (ix >= 0) & (ix < gt.x.size) & (iy >= 0) & (iy < gt.y.size)
    ix = np.clip(np.nan_to_num(ix), 0, gt.x.size - 1).astype(np.int64)
    iy = np.clip(np.nan_to_num(iy), 0, gt.y.size - 1).astype(np.int64)
    return inside & np.asarray(mask, dtype=bool)[iy, ix]


def sample_mesh_surface(mesh: o3d.geometry.TriangleMesh, n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) points drawn uniformly (by area) on the triangles of ``mesh`` (deterministic for ``seed``)."""
    v = np.asarray(mesh.vertices, dtype=np.float64)
    t = np.asarray(mesh.triangles, dtype=np.int64)
    if t.shape[0] == 0 or n <= 0:
        return np.zeros((0, 3))
    a, b, c = v[t[:, 0]], v[t[:, 1]], v[t[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    if not area.sum() > 0:
        return np.zeros((0, 3))
    rng = np.random.default_rng(seed)
    tri = rng.choice(t.shape[0], size=n, p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
    wa, wb, wc = 1 - r1, r1 * (1 - r2), r1 * r2
    return wa[:, None] * a[tri] + wb[:, None] * b[tri] + wc[:, None] * c[tri]


def mesh_metrics(
    mesh: o3d.geometry.TriangleMesh,
    gt: HeightGrid,
    frame_index: int,
    seen_mask: np.ndarray | None = None,
    n_samples: int | None = None,
    completeness_radius_mm: float = 5.0,
    outlier_mm: float = 10.0,
    cell_step: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Metrics of a mesh: :func:`reconstruction_metrics` of ``n_samples`` points sampled uniformly on
    its surface (default: one per mm² of surface, at most 4 million, so that completeness measures
    the mesh and not the sampling), plus ``vertex_median_abs_error_mm``, ``vertex_p90_abs_error_mm``,
    ``n_vertices``, ``n_triangles`` and ``area_m2``."""
    area = mesh.get_surface_area() if len(mesh.triangles) else 0.0
    if n_samples is None:
        n_samples = min(4_000_000, max(1000, int(area * 1e6)))
    samples = sample_mesh_surface(mesh, n_samples, seed)
    out = reconstruction_metrics(
        samples, gt, frame_index, seen_mask, completeness_radius_mm, outlier_mm, cell_step
    )
    verr = cloud_errors(np.asarray(mesh.vertices), gt, frame_index)
    verr = np.abs(verr[np.isfinite(verr)])
    out["vertex_median_abs_error_mm"] = float(np.median(verr)) if verr.size else math.nan
    out["vertex_p90_abs_error_mm"] = float(np.quantile(verr, 0.9)) if verr.size else math.nan
    out["n_vertices"] = float(len(mesh.vertices))
    out["n_triangles"] = float(len(mesh.triangles))
    out["area_m2"] = float(area)
    return out


# --------------------------------------------------------------------------------------------
# Visibility
# --------------------------------------------------------------------------------------------


def visibility_count(
    gt: HeightGrid,
    frame_index: int,
    cameras: dict[str, RefractiveCamera],
    masks: dict[str, np.ndarray] | None = None,
    gt_depth_maps: dict[str, DepthMap] | None = None,
    cell_step: int | None = None,
    occlusion_tol_mm: float = 3.0,
    chunk_size: int = 1 << 16,
    threads: int | None = 1,
) -> np.ndarray:
    """(Ny', Nx') int32: how many cameras see each evaluation cell (see :func:`cell_points`).

    A camera sees a cell when the cell's ground-truth point projects (exact refractive projection)
    inside its image, inside its validity mask (``masks[name]``, (H, W) bool on the undistorted
    grid, e.g. ``UndistortionMap.valid``), and — when ``gt_depth_maps`` has the camera — the point's
    ray depth matches the ground-truth depth map there within ``occlusion_tol_mm`` (else something
    in front hides it). The image size comes from the camera, its mask or its depth map.
    ``threads``: torch threads while projecting (see :class:`~aquamvs_core.stages.fusion.FusionConfig`).
    """
    cells = cell_points(gt, frame_index, cell_step)
    shape = cells.shape[:2]
    pts = torch.from_numpy(np.ascontiguousarray(cells.reshape(-1, 3)))
    count = torch.zeros(pts.shape[0], dtype=torch.int32)
    with torch.no_grad(), torch_threads(threads):
        for name, cam in cameras.items():
            mask = None if masks is None or name not in masks else torch.as_tensor(np.asarray(masks[name]))
            dm = None if gt_depth_maps is None else gt_depth_maps.get(name)
            size = _image_hw(cam, mask, dm, name)
            dmap = None if dm is None else dm.depth.detach().cpu().to(torch.float32).unsqueeze(-1)
            for start in range(0, pts.shape[0], chunk_size):
                x = pts[start : start + chunk_size]
                seen = _sees(cam, x, size, mask, dmap, occlusion_tol_mm * 1e-3)
                count[start : start + chunk_size] += seen.to(torch.int32)
    return count.reshape(shape).numpy()


def _image_hw(
    cam: RefractiveCamera, mask: torch.Tensor | None, dm: DepthMap | None, name: str
) -> tuple[int, int]:
    if cam.image_size is not None:
        return int(cam.image_size[1]), int(cam.image_size[0])
    if mask is not None:
        return int(mask.shape[0]), int(mask.shape[1])
    if dm is not None:
        return int(dm.depth.shape[0]), int(dm.depth.shape[1])
    raise ValueError(f"camera {name!r}: no image size (set it on the camera, or give a mask or depth map)")


def _sees(
    cam: RefractiveCamera,
    x: torch.Tensor,
    size: tuple[int, int],
    mask: torch.Tensor | None,
    depth: torch.Tensor | None,
    tol: float,
) -> torch.Tensor:
    """(n,) bool: world points ``x`` (n, 3) float64 are seen by ``cam`` (see :func:`visibility_count`)."""
    h, w = size
    uv, ok, origins, _ = cam.project_rays(x)
    u, v = uv[:, 0], uv[:, 1]
    ok = ok & (u >= -0.5) & (u <= w - 0.5) & (v >= -0.5) & (v <= h - 0.5)
    if mask is not None:
        iu = torch.round(u).clamp(0, w - 1).long()
        iv = torch.round(v).clamp(0, h - 1).long()
        ok = ok & mask.to(torch.bool)[iv, iu]
    if depth is not None:
        s = (x - origins).norm(dim=1)  # ray depth of x along the ray of its pixel
        d, ok_d = sample_map(depth, uv, "bilinear")
        ok = ok & ok_d & ((torch.nan_to_num(d[:, 0]) - s).abs() <= tol)
    return ok
