"""Depth-map fusion: multi-view geometric consistency in 3-D, merging, de-duplication, clean-up.

Inputs follow the depth-map contract of :mod:`aquamvs_core.stages.depth_map`: one :class:`DepthMap` per camera
(ray depths on the camera's *undistorted* pixel grid, NaN = no depth, confidence in [0, 1]), the
matching :class:`~aquamvs_core.camera.refraction.RefractiveCamera` (built with the undistorted
intrinsics) and optionally the undistorted (H, W, 3) uint8 RGB images for colours. Frames and units
are those of :mod:`aquamvs_core.camera.calibration` (world Z down, metres).

:func:`fuse_depth_maps` works camera by camera, in chunks of pixels (memory stays bounded):

1. **Consistency.** A source pixel with a depth (and confidence ≥ ``min_confidence``) gives the world
   point ``X = o + s d``. ``X`` is projected into every other camera *j* with the exact refractive
   projection; *j*'s depth map is sampled there (bilinear) and *j*'s point ``X'_j`` on the same
   ray is rebuilt. Camera *j* agrees when ``|X - X'_j| <= tol_3d_mm + tol_rel · s`` (``X'_j``
   lies on *j*'s ray through ``X``, so this is the ray-depth disagreement seen from *j*, an
   occluder in front of ``X`` included). The bilinear read falls back to the nearest pixel where
   the four depths are not nearly coplanar, so one wrong depth is not blended into its neighbours
   (see :func:`sample_map`). The point is kept when at least ``min_consistent_views`` other
   cameras agree and fewer cameras see *through* it (their depth there lies beyond ``X``: free
   space that ``X`` would block) than agree with it.
2. **Merging.** The kept point is the confidence-weighted mean of ``X`` and all agreeing ``X'_j``;
   its colour is the mean of the colours seen by those views (bilinear at the projected pixels);
   ``support`` counts the agreeing cameras, the source included.
3. **De-duplication.** Each camera's points are reduced on a voxel grid (Open3D tensor
   ``voxel_down_sample``, which averages every point attribute), then all cameras' points together.
   Positions and colours are carried as confidence-weighted sums, so the result in a voxel is
   ``Σ_c W̄_c X̂_c / Σ_c W̄_c``: each camera's confidence-weighted mean ``X̂_c`` within the voxel,
   weighted by its mean confidence ``W̄_c`` there (cameras with more pixels in the voxel do not
   dominate: their points are already multi-view means). ``support`` is averaged and rounded.
4. **Outlier removal** (Open3D statistical outlier removal), before anything is returned or written.
5. **Normals** (Open3D, k nearest neighbours), oriented towards the cameras: each point carries the
   mean direction back along the refracted rays of the views that agreed on it, and its normal is
   flipped to face that way (for a bed seen from above: pointing up, -Z).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import open3d as o3d
import open3d.core as o3c
import torch
from pydantic import BaseModel, ConfigDict, Field

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.camera.sampling import SampleMode, image_tensor, sample_flat_bilinear, sample_map
from aquamvs_core.runtime import torch_threads
from aquamvs_core.stages.depth_map import DepthMap
from aquamvs_core.stages.fusion.cloud import FusedCloud

# --------------------------------------------------------------------------------------------
# Configuration and result
# --------------------------------------------------------------------------------------------


class FusionConfig(BaseModel):
    """Parameters of :func:`fuse_depth_maps` (defaults for a rig ~0.5 m above a bed ~0.5 m under water).

    Attributes:
        tol_3d_mm: absolute part of the 3-D agreement tolerance, mm. 1.5 mm is about three times the
            depth noise of a good stereo match at this range (σ ≈ 0.5 mm), yet well under the
            errors of wrong matches (centimetres).
        tol_rel: part of the tolerance proportional to the source pixel's ray depth (metres per
            metre): stereo depth errors grow with range. 0.001 adds 0.5 mm at 0.5 m.
        min_consistent_views: other cameras that must agree for a point to be kept. 1: areas seen
            by only two cameras survive.
        min_confidence: depths with a lower confidence are ignored (as source and as witness).
        free_space_check: drop a point when at least as many other cameras see *through* it (their
            depth at its pixel lies beyond it by more than the tolerance: it would hide what they
            see) as agree with it. Removes "ghosts" that two wrong depth maps happen to agree on.
        sampling: how a witness camera's depth map is read at a projected pixel: ``"bilinear"``
            (where the four neighbours have depths and are nearly coplanar — twist within the
            tolerance — else the nearest pixel) or ``"nearest"``.
        voxel_size_mm: voxel edge for de-duplication, mm (0: none). 1 mm is about the ground
            sampling distance of 1600×1200 images at this range.
        outlier_neighbors: neighbours of Open3D's statistical outlier removal (0: no removal).
        outlier_std_ratio: points whose mean neighbour distance exceeds the global mean by this many
            standard deviations are removed. A safety net only (the consistency and free-space tests
            remove the wrong depths): 5.0 removes isolated points but not the sparser rim of the
            cloud, where 3.0 cost ~1.5 % of completeness on the synthetic survey.
        normal_neighbors: neighbours used to estimate each normal (k nearest).
        normal_radius_mm: optional search radius for the normals, mm (None: k nearest only, which
            adapts to the point density).
        chunk_size: source pixels processed at once (bounds memory: ~1 kB per pixel).
        pixel_stride: use every n-th pixel of every n-th row of each depth map as a source point
            (witness maps are still read at full resolution). 2 quarters the work; with several
            overlapping cameras the cloud stays denser than a 1-2 mm voxel grid.
        threads: torch intra-op threads while fusing (None: leave torch's setting alone). One by
            default: the work is many small element-wise ops, which multi-threading on a small,
            busy CPU slows down many times over (measured 10-20x on 2 shared cores).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tol_3d_mm: float = Field(1.5, gt=0.0, le=1000.0)
    tol_rel: float = Field(0.001, ge=0.0, le=0.1)
    min_consistent_views: int = Field(1, ge=0, le=64)
    min_confidence: float = Field(0.1, ge=0.0, le=1.0)
    free_space_check: bool = True
    sampling: SampleMode = "bilinear"
    voxel_size_mm: float = Field(1.0, ge=0.0, le=1000.0)
    outlier_neighbors: int = Field(20, ge=0, le=1000)
    outlier_std_ratio: float = Field(5.0, gt=0.0, le=100.0)
    normal_neighbors: int = Field(30, ge=3, le=1000)
    normal_radius_mm: float | None = Field(None, gt=0.0)
    chunk_size: int = Field(1 << 16, ge=1024)
    pixel_stride: int = Field(1, ge=1, le=8)
    threads: int | None = Field(1, ge=1)


# --------------------------------------------------------------------------------------------
# Fusion
# --------------------------------------------------------------------------------------------


@dataclass
class _Witness:
    """What a camera contributes as a witness: its model, (H, W, 2) [depth, confidence] with
    unusable depths set to NaN, its image (or None) and both as one flattened map."""

    camera: RefractiveCamera
    depth_conf: torch.Tensor
    image: torch.Tensor | None
    # (H·W, 2 or 5) [depth, confidence(, r, g, b)]: one gather reads depth and colour together.
    flat: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        both = self.depth_conf if self.image is None else torch.cat([self.depth_conf, self.image], dim=-1)
        self.flat = both.reshape(-1, both.shape[-1]).contiguous()


def _witnesses(
    depth_maps: dict[str, DepthMap],
    cameras: dict[str, RefractiveCamera],
    images: dict[str, np.ndarray] | None,
    min_confidence: float,
) -> dict[str, _Witness]:
    out: dict[str, _Witness] = {}
    for name, dm in depth_maps.items():
        if name not in cameras:
            raise KeyError(f"depth map {name!r} has no camera (cameras: {sorted(cameras)})")
        depth = dm.depth.detach().to("cpu", torch.float32)
        conf = dm.confidence.detach().to("cpu", torch.float32)
        usable = torch.isfinite(depth) & (conf >= min_confidence) & (depth >= 0)
        depth = torch.where(usable, depth, torch.full_like(depth, math.nan))
        image = None
        if images is not None and name in images:
            image = image_tensor(images[name], tuple(depth.shape), f"image of camera {name!r}")
        out[name] = _Witness(cameras[name], torch.stack([depth, conf], dim=-1), image)
    return out


@dataclass
class _Accum:
    """Per-source-pixel sums of one chunk (all (n, ·) float64 except ``count``)."""

    w: torch.Tensor  # Σ weights
    wx: torch.Tensor  # Σ weight · point
    wview: torch.Tensor  # Σ weight · unit direction back towards the camera
    col: torch.Tensor  # Σ colours
    ncol: torch.Tensor  # number of colours
    count: torch.Tensor  # other cameras that agree (int)
    through: torch.Tensor  # other cameras that see through the point (free-space violations, int)


def _consistent_chunk(
    src: str,
    pix: torch.Tensor,
    witnesses: dict[str, _Witness],
    config: FusionConfig,
) -> tuple[torch.Tensor, _Accum]:
    """Test source pixels ``pix`` (n, 2) float64 of camera ``src`` against every other camera.

    Returns the source points' validity (n,) and the accumulated sums over the agreeing views
    (the source included)."""
    me = witnesses[src]
    n = pix.shape[0]
    o, d, ok_ray = me.camera.cast_ray(pix)
    dc, _ = sample_map(me.depth_conf, pix, "nearest")  # integer pixels: exact values
    s, conf = dc[:, 0], dc[:, 1].clamp_min(1e-3)
    ok = ok_ray & torch.isfinite(s)
    s = torch.nan_to_num(s)
    x = o + s.unsqueeze(1) * d
    tol = config.tol_3d_mm * 1e-3 + config.tol_rel * s

    acc = _Accum(
        w=conf.clone(),
        wx=conf.unsqueeze(1) * x,
        wview=-conf.unsqueeze(1) * d,
        col=torch.zeros(n, 3, dtype=torch.float64),
        ncol=torch.zeros(n, dtype=torch.float64),
        count=torch.zeros(n, dtype=torch.int64),
        through=torch.zeros(n, dtype=torch.int64),
    )
    if me.image is not None:
        col, ok_c = sample_map(me.image, pix, "nearest")
        acc.col += torch.nan_to_num(col)
        acc.ncol += ok_c.to(torch.float64)

    # Only source points with a depth are projected; each witness then reads its maps only where
    # the projection can have a pixel (the others cannot agree or see through).
    sel = torch.nonzero(ok).squeeze(1)
    x_sel, tol_sel = x[sel], tol[sel]
    for name, wit in witnesses.items():
        if name == src or sel.numel() == 0:
            continue
        h, w = wit.depth_conf.shape[:2]
        # The witness ray through the projected pixel is the ray from the water crossing to X (exact,
        # and no lens inversion is needed for a camera on its original grid).
        uv, ok_p, o_all, d_all = wit.camera.project_rays(x_sel)
        u, v = uv[:, 0], uv[:, 1]
        near_image = ok_p & (u > -1) & (u < w) & (v > -1) & (v < h)  # False where NaN
        sub = torch.nonzero(near_image).squeeze(1)
        if sub.numel() == 0:
            continue
        idx, uv, xi, toli = sel[sub], uv[sub], x_sel[sub], tol_sel[sub]
        o_j, d_j = o_all[sub], d_all[sub]
        plain = 2 if wit.image is not None else None
        if config.sampling == "nearest":
            sample, ok_s = sample_map(wit.depth_conf, uv, "nearest")
            col_ok = None
        else:
            sample, ok_s, col_ok = sample_flat_bilinear(wit.flat, h, w, uv, toli, plain)
        x_j = o_j + torch.nan_to_num(torch.where(ok_s.unsqueeze(1), sample[:, :1], 0.0)) * d_j
        seen = ok_s
        agree = seen & ((xi - x_j).norm(dim=1) <= toli)
        # j's surface lies beyond X along j's ray: j sees through the place where X would be.
        through = seen & ((x_j - o_j).norm(dim=1) > (xi - o_j).norm(dim=1) + toli)
        acc.through.index_add_(0, idx, through.to(torch.int64))
        a = torch.nonzero(agree).squeeze(1)
        if a.numel() == 0:
            continue
        ia = idx[a]
        w_j = sample[a, 1].clamp_min(1e-3)
        acc.w.index_add_(0, ia, w_j)
        acc.wx.index_add_(0, ia, w_j.unsqueeze(1) * x_j[a])
        acc.wview.index_add_(0, ia, -(w_j.unsqueeze(1) * d_j[a]))
        acc.count.index_add_(0, ia, torch.ones_like(ia))
        if wit.image is not None:
            if col_ok is None:  # nearest depth sampling: colours are still read bilinearly
                col, ok_c = sample_map(wit.image, uv[a], "bilinear")
            else:
                col, ok_c = sample[a, 2:], col_ok[a]
            use = torch.nonzero(ok_c).squeeze(1)
            acc.col.index_add_(0, ia[use], col[use])
            acc.ncol.index_add_(0, ia[use], torch.ones(use.numel(), dtype=torch.float64))
    return ok, acc


def _camera_points(
    src: str, witnesses: dict[str, _Witness], config: FusionConfig
) -> tuple[dict[str, np.ndarray], int]:
    """Fused points whose source is camera ``src``, as voxel-ready attribute arrays.

    Returns the attributes ``positions`` (merged point), ``w`` (n, 1), ``wpos`` / ``wcol`` /
    ``wview`` (weight times merged point / colour / view direction), ``support`` (n, 1), and the
    number of source pixels that had a usable depth."""
    me = witnesses[src]
    w = me.depth_conf.shape[1]
    source = torch.isfinite(me.depth_conf[..., 0])
    if config.pixel_stride > 1:  # every stride-th pixel of every stride-th row is a source pixel
        grid = torch.zeros_like(source)
        grid[:: config.pixel_stride, :: config.pixel_stride] = True
        source &= grid
    flat_idx = torch.nonzero(source.reshape(-1)).squeeze(1)
    parts: list[dict[str, torch.Tensor]] = []
    for start in range(0, flat_idx.numel(), config.chunk_size):
        idx = flat_idx[start : start + config.chunk_size]
        pix = torch.stack([idx % w, idx // w], dim=1).to(torch.float64)
        ok, acc = _consistent_chunk(src, pix, witnesses, config)
        keep = ok & (acc.count >= config.min_consistent_views)
        if config.free_space_check:
            keep &= acc.through < acc.count.clamp_min(1)
        if not bool(keep.any()):
            continue
        wsum = acc.w[keep].unsqueeze(1)
        merged = acc.wx[keep] / wsum
        ncol = acc.ncol[keep].unsqueeze(1)
        colour = torch.where(ncol > 0, acc.col[keep] / ncol.clamp_min(1), torch.full_like(merged, 128.0))
        view = acc.wview[keep]
        view = view / view.norm(dim=1, keepdim=True).clamp_min(1e-12)
        parts.append(
            {
                "positions": merged,
                "w": wsum,
                "wpos": wsum * merged,
                "wcol": wsum * colour,
                "wview": wsum * view,
                "support": (acc.count[keep] + 1).to(torch.float64).unsqueeze(1),
            }
        )
    if not parts:
        return {}, int(flat_idx.numel())
    out = {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0]}
    return out, int(flat_idx.numel())


def _voxel_reduce(attrs: dict[str, np.ndarray], voxel: float) -> dict[str, np.ndarray]:
    """Average every attribute over the points of each ``voxel``-sized cell (Open3D)."""
    if voxel <= 0 or attrs["positions"].shape[0] == 0:
        return attrs
    pcd = o3d.t.geometry.PointCloud(o3c.Tensor(np.ascontiguousarray(attrs["positions"])))
    for k, a in attrs.items():
        if k != "positions":
            dtype = np.float64 if k == "wpos" else np.float32
            pcd.point[k] = o3c.Tensor(np.ascontiguousarray(a, dtype=dtype))
    down = pcd.voxel_down_sample(voxel)
    return {k: down.point[k].numpy() for k in attrs}


def _voxel_reduce_fast(attrs: dict[str, np.ndarray], voxel: float) -> dict[str, np.ndarray]:
    """:func:`_voxel_reduce` in NumPy (float64 sums), for the per-camera pass: the same cells as
    Open3D's tensor ``voxel_down_sample`` (``floor(position / voxel)``) and the same per-cell means,
    several times faster. The output order (by cell) differs, which the global pass makes moot."""
    pos = attrs["positions"]
    if voxel <= 0 or pos.shape[0] == 0:
        return attrs
    cell = np.floor(pos / voxel).astype(np.int64)
    cell -= cell.min(axis=0)
    ext = cell.max(axis=0) + 1
    key = (cell[:, 0] * ext[1] + cell[:, 1]) * ext[2] + cell[:, 2]
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    counts = np.diff(np.r_[starts, key.size]).astype(np.float64)
    names = list(attrs)
    widths = [attrs[k].shape[1] for k in names]
    # Channels as rows: the segment sums run along contiguous memory.
    table = np.concatenate([np.asarray(attrs[k], dtype=np.float64).T for k in names])[:, order]
    means = (np.add.reduceat(table, starts, axis=1) / counts).T
    out, col = {}, 0
    for k, n in zip(names, widths, strict=True):
        out[k] = means[:, col : col + n]
        col += n
    return out


def _outlier_mask(points: np.ndarray, config: FusionConfig) -> np.ndarray:
    """(N,) bool: points kept by Open3D's statistical outlier removal."""
    n = points.shape[0]
    if config.outlier_neighbors == 0 or n <= config.outlier_neighbors:
        return np.ones(n, dtype=bool)
    pcd = o3d.t.geometry.PointCloud(o3c.Tensor(np.ascontiguousarray(points)))
    _, mask = pcd.remove_statistical_outliers(config.outlier_neighbors, config.outlier_std_ratio)
    return mask.numpy().astype(bool)


def estimate_normals(
    points: np.ndarray, towards: np.ndarray, neighbors: int = 30, radius: float | None = None
) -> np.ndarray:
    """(N, 3) float32 unit normals of ``points`` (N, 3) (Open3D PCA over the neighbours), flipped to
    have a positive dot product with ``towards`` (N, 3) (e.g. directions to the cameras)."""
    n = points.shape[0]
    if n == 0:
        return np.zeros((0, 3), dtype=np.float32)
    if n < 3:
        normals = np.asarray(towards, dtype=np.float64).copy()
    else:
        pcd = o3d.t.geometry.PointCloud(o3c.Tensor(np.ascontiguousarray(points, dtype=np.float64)))
        pcd.estimate_normals(max_nn=min(neighbors, n), radius=radius)
        normals = pcd.point.normals.numpy().astype(np.float64)
    norm = np.linalg.norm(normals, axis=1, keepdims=True)
    good = np.isfinite(norm[:, 0]) & (norm[:, 0] > 0)
    normals = np.where(good[:, None], normals / np.where(good[:, None], norm, 1.0), towards)
    flip = np.einsum("ij,ij->i", normals, towards) < 0
    normals[flip] *= -1.0
    return normals.astype(np.float32)


def fuse_depth_maps(
    depth_maps: dict[str, DepthMap],
    cameras: dict[str, RefractiveCamera],
    images: dict[str, np.ndarray] | None = None,
    config: FusionConfig | None = None,
) -> FusedCloud:
    """Fuse per-camera depth maps into one cleaned, coloured point cloud (see the module docstring).

    Args:
        depth_maps: camera name → :class:`DepthMap` (ray depths on the undistorted grid).
        cameras: camera name → :class:`RefractiveCamera` with the *undistorted* intrinsics; must
            contain every camera of ``depth_maps``.
        images: camera name → (H, W, 3) uint8 RGB undistorted image, same size as the depth map.
            Cameras without an image contribute no colour; points seen by none are mid-grey.
        config: :class:`FusionConfig` (defaults if None).

    Returns:
        The :class:`FusedCloud` (outliers already removed).
    """
    config = config or FusionConfig()
    voxel = config.voxel_size_mm * 1e-3
    stats = {"source_pixels": 0, "consistent": 0, "after_voxel": 0, "after_outliers": 0}
    with torch.no_grad(), torch_threads(config.threads):
        witnesses = _witnesses(depth_maps, cameras, images, config.min_confidence)
        per_camera: list[dict[str, np.ndarray]] = []
        for src in witnesses:
            attrs, n_src = _camera_points(src, witnesses, config)
            stats["source_pixels"] += n_src
            if attrs:
                stats["consistent"] += attrs["positions"].shape[0]
                per_camera.append(_voxel_reduce_fast(attrs, voxel))
    if not per_camera:
        empty = FusedCloud.empty()
        empty.stats = stats
        return empty
    merged = {k: np.concatenate([a[k] for a in per_camera]) for k in per_camera[0]}
    del per_camera
    merged = _voxel_reduce(merged, voxel)
    wsum = merged["w"].astype(np.float64)
    points = merged["wpos"] / wsum
    colors = np.clip(np.round(merged["wcol"] / wsum), 0, 255).astype(np.uint8)
    view = merged["wview"] / wsum
    view /= np.maximum(np.linalg.norm(view, axis=1, keepdims=True), 1e-12)
    support = np.round(merged["support"][:, 0]).astype(np.int32)
    stats["after_voxel"] = points.shape[0]

    keep = _outlier_mask(points, config)
    points, colors, view, support = points[keep], colors[keep], view[keep], support[keep]
    stats["after_outliers"] = points.shape[0]
    radius = None if config.normal_radius_mm is None else config.normal_radius_mm * 1e-3
    normals = estimate_normals(points, view, config.normal_neighbors, radius)
    return FusedCloud(points=points, colors=colors, normals=normals, support=support, stats=stats)
