"""Depth-map fusion: multi-view geometric consistency in 3-D, merging, de-duplication, clean-up.

Inputs follow the depth-map contract of :mod:`aquamvs_core.stages.depth_map`: one :class:`DepthMap` per camera
(ray depths on the camera's stored pixel grid, NaN = no depth, confidence in [0, 1]), the
matching :class:`~aquamvs_core.camera.refraction.RefractiveCamera` (of that grid: an undistorted
pinhole, or the original image with the lens model) and optionally the (H, W, 3) uint8 RGB images
for colours. Frames and units are those of :mod:`aquamvs_core.camera.calibration` (world Z down, metres).

:func:`fuse_views` works one source camera at a time and streams the cameras: a camera's maps are
loaded when they are needed (through a cache of at most ``view_cache_mb``), so memory does not grow
with the number of cameras; :func:`fuse_depth_maps` is the same on maps already in memory.

1. **Consistency.** A source pixel with a depth (and confidence ≥ ``min_confidence``) gives the world
   point ``X = o + s d``. ``X`` is projected into every other camera *j* whose image the source's
   points can reach (decided per 16-pixel tile from the rig geometry, see
   :mod:`.consistency`) with the exact refractive projection; *j*'s depth map is sampled there
   (bilinear) and *j*'s point ``X'_j`` on the same ray is rebuilt. Camera *j* agrees when
   ``|X - X'_j| <= tol_3d_mm + tol_rel · s`` (``X'_j`` lies on *j*'s ray through ``X``, so this is
   the ray-depth disagreement seen from *j*, an occluder in front of ``X`` included). The bilinear
   read falls back to the nearest pixel where the four depths are not nearly coplanar, so one wrong
   depth is not blended into its neighbours (see :func:`sample_map`). The point is kept when at
   least ``min_consistent_views`` other cameras agree and fewer cameras see *through* it (their
   depth there lies beyond ``X``: free space that ``X`` would block) than agree with it.
2. **Merging.** The kept point is the confidence-weighted mean of ``X`` and all agreeing ``X'_j``;
   its colour is the mean of the colours seen by those views (bilinear at the projected pixels);
   ``support`` counts the agreeing cameras, the source included.
3. **De-duplication.** Each camera's points are averaged on a voxel grid (cells
   ``floor(X / voxel)``, as Open3D's ``voxel_down_sample``), then the cameras' per-voxel means are
   averaged (:class:`~.cleanup.VoxelGrid`, as each camera arrives). Positions and colours are
   carried as confidence-weighted sums, so the result in a voxel is ``Σ_c W̄_c X̂_c / Σ_c W̄_c``: each
   camera's confidence-weighted mean ``X̂_c`` within the voxel, weighted by its mean confidence
   ``W̄_c`` there (cameras with more pixels in the voxel do not dominate: their points are already
   multi-view means). ``support`` is averaged and rounded.
4. **Outlier removal** (statistical, as Open3D's), before anything is returned or written.
5. **Normals** (PCA of the k nearest neighbours, as Open3D's), from the same neighbour search as the
   outlier removal (:func:`~.cleanup.outliers_and_normals`), oriented towards the cameras: each
   point carries the mean direction back along the refracted rays of the views that agreed on it,
   and its normal is flipped to face that way (for a bed seen from above: pointing up, -Z).

The consistency test runs in float32 on ``device`` (pixels to ~1e-4 px, points to ~0.1 µm, far
below the millimetre tolerances); positions are summed in float64.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.camera.sampling import SampleMode
from aquamvs_core.runtime import TorchDevice, default_workers, map_in_threads, torch_threads
from aquamvs_core.stages.depth_map import DepthMap
from aquamvs_core.stages.fusion.cleanup import VoxelGrid, outliers_and_normals, spatial_order
from aquamvs_core.stages.fusion.cloud import FusedCloud
from aquamvs_core.stages.fusion.consistency import (
    Agreement,
    auto_pixel_stride,
    check_witness,
    source_points,
    tile_boxes,
    tiles_seen,
)
from aquamvs_core.stages.fusion.views import FusionView, ViewCache, ViewLoader

log = logging.getLogger("aquamvs.fusion")

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
        chunk_size: source points tested against a witness at once (bounds the temporaries: ~1 kB
            a point).
        pixel_stride: use every n-th pixel of every n-th row of each depth map as a source point
            (witness maps are still read at full resolution); 2 quarters the work. ``"auto"``: per
            camera, the largest stride that keeps its source points within ``source_spacing_mm`` of
            each other on the bed (:func:`~.consistency.auto_pixel_stride`): 1 at 640×480 on the
            default rig (2.1 mm footprint), 2 at 1600×1200 (0.96 mm).
        source_spacing_mm: the spacing of ``"auto"``, mm. Measured: source points 1.9 mm apart
            (stride 2 at 1600×1200) cost 0.1 point of completeness and fusion took a third of the
            time; 4.2 mm apart (stride 2 at 640×480) cost 1.4 points
            (``benchmarks/results/frame_profile_rig1600_cpu.md``, ``profile_cpu.md``).
        threads: torch intra-op threads while fusing with one worker (None: leave torch's setting
            alone). One by default: the work is many small element-wise ops, which multi-threading
            on a small, busy CPU slows down many times over (measured 10-20x on 2 shared cores).
        workers: source cameras fused at once, in threads with one torch thread each (None: the
            CPU cores this process may use, at most 4, and 1 on a GPU). The cameras' points are
            merged in camera order whatever the order they finish in, so the cloud is the same.
            The normals' chunks are also computed this many at a time (on the CPU: None gives the
            cores there, also with a GPU device).
        device: torch device of the consistency test (the neighbour searches run on the CPU).
        view_cache_mb: prepared camera maps kept in memory at once, MB (20 bytes a pixel with an
            image: 38 MB for 1600×1200); more cameras than fit are reloaded when needed again.
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
    pixel_stride: Annotated[int, Field(ge=1, le=8)] | Literal["auto"] = "auto"
    source_spacing_mm: float = Field(2.0, gt=0.0, le=100.0)
    threads: int | None = Field(1, ge=1)
    workers: int | None = Field(None, ge=1)
    device: TorchDevice = "cpu"
    view_cache_mb: float = Field(768.0, ge=0.0)


# --------------------------------------------------------------------------------------------
# Fusion
# --------------------------------------------------------------------------------------------


def _camera_points(
    src: str, names: list[str], views: ViewCache, config: FusionConfig
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, int]]:
    """Fused points whose source is camera ``src``: merged positions (n, 3) and the voxel
    attributes (weight and weighted point, colour, view direction; support), and counts."""
    me = views.get(src)
    stride = config.pixel_stride
    if stride == "auto":
        stride = auto_pixel_stride(me, config.source_spacing_mm)
    points, n_src = source_points(me, stride, config.tol_3d_mm, config.tol_rel, config.chunk_size)
    counts = {"source_pixels": n_src, "witnesses": 0, "pixel_stride": stride}
    acc = Agreement(points)
    if len(points):
        used, corners = tile_boxes(points)
        for name in names:
            if name == src:
                continue
            seen = tiles_seen(views.cameras[name], views.sizes[name], used, corners, points.n_tiles)
            candidates = torch.nonzero(seen[points.tile]).squeeze(1)
            if candidates.numel() == 0:
                continue  # the source's points cannot reach this camera: never loaded for it
            witness = views.get(name)
            counts["witnesses"] += 1
            for start in range(0, candidates.numel(), config.chunk_size):
                check_witness(
                    points, candidates[start : start + config.chunk_size], witness, acc, config.sampling
                )
            me = views.get(src)  # keep the source most recently used
    keep = acc.count >= config.min_consistent_views
    if config.free_space_check:
        keep &= acc.through < acc.count.clamp_min(1)
    keep = torch.nonzero(keep).squeeze(1)

    def kept(rows: torch.Tensor) -> torch.Tensor:
        """(n_kept, k) float64 of (k, n) or (n,) rows."""
        rows = rows.index_select(rows.ndim - 1, keep).to(torch.float64)
        return rows.unsqueeze(1) if rows.ndim == 1 else rows.T

    wsum = kept(acc.w)
    merged = kept(acc.wx) / wsum
    ncol = kept(acc.ncol)
    colour = torch.where(ncol > 0, kept(acc.col) / ncol.clamp_min(1), 128.0)
    view = kept(acc.wview)
    view = view / torch.linalg.vector_norm(view, dim=1, keepdim=True).clamp_min(1e-12)
    attrs = {
        "w": wsum,
        "wpos": wsum * merged,
        "wcol": wsum * colour,
        "wview": wsum * view,
        "support": kept(acc.count) + 1,
    }
    counts["consistent"] = int(keep.numel())
    return merged.cpu().numpy(), {k: v.cpu().numpy() for k, v in attrs.items()}, counts


def estimate_normals(
    points: np.ndarray, towards: np.ndarray, neighbors: int = 30, radius: float | None = None
) -> np.ndarray:
    """(N, 3) float32 unit normals of ``points`` (N, 3) (PCA over the neighbours, as Open3D's
    ``estimate_normals``), flipped to have a positive dot product with ``towards`` (N, 3) (e.g.
    directions to the cameras)."""
    _, normals = outliers_and_normals(np.asarray(points, dtype=np.float64), 0, 1.0, neighbors, radius)
    return _orient(normals, np.asarray(towards, dtype=np.float64))


def _orient(normals: np.ndarray, towards: np.ndarray) -> np.ndarray:
    """Unit ``normals`` flipped to face ``towards``; ``towards`` where a normal is missing."""
    if normals.shape[0] < 3:
        normals = towards.copy()
    norm = np.linalg.norm(normals, axis=1, keepdims=True)
    good = np.isfinite(norm[:, 0]) & (norm[:, 0] > 0)
    normals = np.where(good[:, None], normals / np.where(good[:, None], norm, 1.0), towards)
    flip = np.einsum("ij,ij->i", normals, towards) < 0
    normals[flip] *= -1.0
    return normals.astype(np.float32)


class _ViewsInMemory:
    def __init__(self, depth_maps: Mapping[str, DepthMap], images: Mapping[str, np.ndarray] | None):
        self.depth_maps, self.images = depth_maps, images or {}

    def __call__(self, name: str) -> FusionView:
        return FusionView(self.depth_maps[name], self.images.get(name))


def fuse_views(
    load: ViewLoader,
    sizes: Mapping[str, tuple[int, int]],
    cameras: Mapping[str, RefractiveCamera],
    config: FusionConfig | None = None,
) -> FusedCloud:
    """Fuse the cameras' depth maps into one cleaned, coloured point cloud (see the module docstring),
    loading each camera's :class:`FusionView` with ``load(name)`` when it is needed.

    Args:
        load: camera name → its :class:`FusionView` (depth map and optional image); may be called
            more than once for a camera when the views do not all fit in ``config.view_cache_mb``.
        sizes: camera name → (H, W) of its depth map, for every camera to fuse (in this order).
        cameras: camera name → :class:`RefractiveCamera` of its depth map's grid (undistorted
            intrinsics, or the original image with the lens); must contain every camera of ``sizes``.
        config: :class:`FusionConfig` (defaults if None).

    Returns:
        The :class:`FusedCloud` (outliers already removed). ``stats`` has the point counts after
        each stage, the witness cameras consulted and the view loads.
    """
    config = config or FusionConfig()
    names = list(sizes)
    missing = [n for n in names if n not in cameras]
    if missing:
        raise KeyError(f"depth maps of {missing} have no camera (cameras: {sorted(cameras)})")
    stats: dict = {
        "source_pixels": 0,
        "consistent": 0,
        "after_voxel": 0,
        "after_outliers": 0,
        "witnesses": 0,
        "pixel_stride": {},
    }
    grid = VoxelGrid(config.voxel_size_mm * 1e-3)
    budget = int(config.view_cache_mb * 2**20)
    workers = config.workers or default_workers(config.device)
    with torch.no_grad(), torch_threads(config.threads):
        views = ViewCache(load, cameras, sizes, config.min_confidence, torch.device(config.device), budget)
        one_camera = functools.partial(_camera_points, names=names, views=views, config=config)
        # Merged in camera order: the sums then do not depend on the workers.
        for src, (positions, attrs, counts) in map_in_threads(one_camera, names, workers, in_order=True):
            for k in ("source_pixels", "consistent", "witnesses"):
                stats[k] += counts[k]
            stats["pixel_stride"][src] = counts["pixel_stride"]
            grid.add(positions, attrs)
            del positions, attrs
        stats["view_loads"] = views.loads
        del one_camera, views
    merged = grid.means()
    del grid
    order = spatial_order(merged["wpos"] / merged["w"][:, 0:1], 1e-3)
    merged = {k: v[order] for k, v in merged.items()}
    wsum = merged["w"][:, 0:1]
    if wsum.shape[0] == 0:
        empty = FusedCloud.empty()
        empty.stats = stats
        return empty
    points = merged["wpos"] / wsum
    colors = np.clip(np.round(merged["wcol"] / wsum), 0, 255).astype(np.uint8)
    view = merged["wview"] / wsum
    view /= np.maximum(np.linalg.norm(view, axis=1, keepdims=True), 1e-12)
    support = np.round(merged["support"][:, 0]).astype(np.int32)
    del merged
    stats["after_voxel"] = points.shape[0]
    radius = None if config.normal_radius_mm is None else config.normal_radius_mm * 1e-3
    keep, normals = outliers_and_normals(  # on the CPU, whatever the device
        points,
        config.outlier_neighbors,
        config.outlier_std_ratio,
        config.normal_neighbors,
        radius,
        config.workers or default_workers("cpu"),
    )
    points, colors, view, support = points[keep], colors[keep], view[keep], support[keep]
    stats["after_outliers"] = points.shape[0]
    normals = _orient(normals, view)
    return FusedCloud(points=points, colors=colors, normals=normals, support=support, stats=stats)


def fuse_depth_maps(
    depth_maps: Mapping[str, DepthMap],
    cameras: Mapping[str, RefractiveCamera],
    images: Mapping[str, np.ndarray] | None = None,
    config: FusionConfig | None = None,
) -> FusedCloud:
    """:func:`fuse_views` on depth maps (and images) already in memory.

    Args:
        depth_maps: camera name → :class:`DepthMap` (ray depths on the undistorted grid).
        cameras: camera name → :class:`RefractiveCamera` with the *undistorted* intrinsics; must
            contain every camera of ``depth_maps``.
        images: camera name → (H, W, 3) uint8 RGB undistorted image, same size as the depth map.
            Cameras without an image contribute no colour; points seen by none are mid-grey.
        config: :class:`FusionConfig` (defaults if None).
    """
    sizes = {name: tuple(dm.depth.shape) for name, dm in depth_maps.items()}
    return fuse_views(_ViewsInMemory(depth_maps, images), sizes, cameras, config)
