"""Surface meshes from a fused point cloud, vertex colours from the views, and mesh export.

:func:`build_mesh` turns a :class:`~aquamvs_core.stages.fusion.FusedCloud` into an Open3D
``TriangleMesh`` (world frame, metres, Z down) with one of three methods:

* ``"heightfield"``: a 2.5-D surface ``Z(x, y)`` on a regular XY grid. Each cell with points gets
  one vertex at its centre; its Z is the median, over the cell's points, of the height of each
  point's tangent plane (from its normal) at the centre, so slopes do not bias it. Only cells with
  data are triangulated (two triangles per square of four occupied cells, one where three are).
  Exact where the bed is single-valued, never extrapolates; cannot represent overhangs.
* ``"poisson"``: Open3D screened Poisson reconstruction, then trimming of the vertices with the
  lowest density (the extrapolated parts, quantile ``poisson_density_quantile``) and of everything
  outside the cloud's bounding box (plus a margin). Smooth and closed-ish; may round sharp edges.
* ``"bpa"``: Open3D ball pivoting (radii from the point spacing unless given). Interpolates the
  points; leaves holes where the sampling is sparser than the largest ball.

Then an optional quadric decimation to ``target_triangles``, and vertex colours. **Colours from
the views** (:func:`vertex_colors_from_views`): each vertex is projected into every camera (exact
refractive projection); a camera is a candidate when the pixel is in the image, inside the camera's
validity mask, the vertex faces the camera (the refracted ray makes an angle under 90° with the
normal) and the camera's depth map confirms that nothing hides the vertex (the vertex's ray depth
matches the depth map at that pixel within ``occlusion_tol_mm``; a depth map that says "farther"
rejects the view too). The best candidate is the most frontal one (or the most confident);
cameras whose depth map has no depth there are used only if no camera confirms the vertex.
Vertices that no camera sees keep the colour of the nearest cloud point.

:func:`export_mesh` writes .ply, .obj, .stl or .glb atomically (temporary file, then rename).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import open3d as o3d
import open3d.core as o3c
import torch
from pydantic import BaseModel, ConfigDict, Field

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.camera.sampling import image_tensor, sample_map
from aquamvs_core.files import atomic_path
from aquamvs_core.runtime import torch_threads
from aquamvs_core.stages.depth_map import DepthMap
from aquamvs_core.stages.fusion import FusedCloud
from aquamvs_core.stages.fusion.cloud import nearest_distances

MESH_FORMATS = (".ply", ".obj", ".stl", ".glb")


class MeshConfig(BaseModel):
    """Parameters of :func:`build_mesh`.

    Attributes:
        method: ``"heightfield"`` (default: a bed is 2.5-D; exact, fast, no extrapolation),
            ``"poisson"`` or ``"bpa"`` (see the module docstring).
        poisson_depth: octree depth of the Poisson solve; 9 gives cells of ~1/512 of the cloud's
            extent (~2.5 mm over 1.3 m), about the detail the fused cloud supports.
        poisson_scale: ratio of the reconstruction cube to the cloud's bounding cube.
        poisson_density_quantile: vertices whose Poisson density is below this quantile are removed
            (the weakly supported, extrapolated surface). 0: keep everything (closed surfaces).
        poisson_crop_margin_mm: the Poisson mesh is cropped to the cloud's bounding box grown by this
            margin, mm (None: no crop).
        poisson_max_distance_mm: vertices farther than this from every cloud point are removed, mm
            (None: three times the median point spacing; 0: keep all). Trims the surface Poisson
            extrapolates past the rim of an open cloud, which density trimming alone leaves.
        heightfield_cell_mm: grid cell of the heightfield, mm (None: twice the median distance from a
            point to its 4th nearest neighbour, at least 1 mm: about 2 mm for a cloud fused with the
            default 1 mm voxels). Cells must be larger than the point spacing or the mesh is full of
            holes; the 4th neighbour is not fooled by near-duplicates from different cameras.
        heightfield_min_points: points a cell needs to get a vertex.
        bpa_radii_mm: ball radii for ball pivoting, mm (None: 1, 2 and 4 times the median spacing of
            the points).
        target_triangles: decimate (quadric error) to at most this many triangles (None: no).
        color_source: ``"views"`` (best view that sees the vertex, needs cameras and images) or
            ``"cloud"`` (nearest cloud point).
        view_selection: ``"frontal"`` (smallest angle between the refracted ray and the normal) or
            ``"confidence"`` (highest depth-map confidence at the pixel).
        occlusion_tol_mm: tolerance between a vertex's ray depth and a depth map, mm. A mesh vertex
            is a smoothed estimate, so a few mm.
        threads: torch threads while colouring (see :class:`~aquamvs_core.stages.fusion.FusionConfig`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["heightfield", "poisson", "bpa"] = "heightfield"
    poisson_depth: int = Field(9, ge=4, le=13)
    poisson_scale: float = Field(1.1, ge=1.0, le=3.0)
    poisson_density_quantile: float = Field(0.02, ge=0.0, lt=1.0)
    poisson_crop_margin_mm: float | None = Field(2.0, ge=0.0)
    poisson_max_distance_mm: float | None = Field(None, ge=0.0)
    heightfield_cell_mm: float | None = Field(None, gt=0.0, le=1000.0)
    heightfield_min_points: int = Field(1, ge=1)
    bpa_radii_mm: tuple[float, ...] | None = None
    target_triangles: int | None = Field(None, ge=4)
    color_source: Literal["views", "cloud"] = "views"
    view_selection: Literal["frontal", "confidence"] = "frontal"
    occlusion_tol_mm: float = Field(3.0, gt=0.0)
    threads: int | None = Field(1, ge=1)


# --------------------------------------------------------------------------------------------
# Surface reconstruction
# --------------------------------------------------------------------------------------------


def _group_median(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median of ``values`` per distinct key: (unique keys, medians, counts)."""
    order = np.lexsort((values, keys))
    k, v = keys[order], values[order]
    uniq, start, counts = np.unique(k, return_index=True, return_counts=True)
    lo, hi = start + (counts - 1) // 2, start + counts // 2
    return uniq, 0.5 * (v[lo] + v[hi]), counts


def heightfield_mesh(
    points: np.ndarray, normals: np.ndarray, cell: float, min_points: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """2.5-D triangulation of ``points`` (N, 3) on a regular XY grid of ``cell`` metres.

    Returns vertices (V, 3) float64 — cell centres with the median tangent-plane height (see the
    module docstring; a point whose normal is steeper than ~73° from the vertical contributes its
    own Z) — and triangles (T, 3) int64, wound so that their normals point up (-Z).
    """
    if points.shape[0] == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    xy = points[:, :2]
    origin = np.floor(xy.min(axis=0) / cell) * cell
    ij = np.floor((xy - origin) / cell).astype(np.int64)
    nx, ny = int(ij[:, 0].max()) + 2, int(ij[:, 1].max()) + 2  # one spare column/row: no wrap-around
    centre = origin + (ij + 0.5) * cell
    n = np.asarray(normals, dtype=np.float64)
    steep = np.abs(n[:, 2]) < 0.3
    nz = np.where(steep, 1.0, n[:, 2])
    dz = -(n[:, 0] * (centre[:, 0] - xy[:, 0]) + n[:, 1] * (centre[:, 1] - xy[:, 1])) / nz
    z = points[:, 2] + np.where(steep, 0.0, dz)
    keys, zmed, counts = _group_median(ij[:, 1] * nx + ij[:, 0], z)
    keep = counts >= min_points
    keys, zmed = keys[keep], zmed[keep]
    vid = np.full(nx * ny, -1, dtype=np.int64)
    vid[keys] = np.arange(keys.size)
    kx, ky = keys % nx, keys // nx
    vertices = np.stack([origin[0] + (kx + 0.5) * cell, origin[1] + (ky + 0.5) * cell, zmed], axis=1)

    grid = vid.reshape(ny, nx)
    a, b = grid[:-1, :-1].ravel(), grid[:-1, 1:].ravel()  # (x, y), (x+1, y)
    c, d = grid[1:, :-1].ravel(), grid[1:, 1:].ravel()  # (x, y+1), (x+1, y+1)
    ha, hb, hc, hd = a >= 0, b >= 0, c >= 0, d >= 0
    tris = [
        np.stack([a, c, b], 1)[ha & hb & hc],  # the (a, b, c) half of a square, or a missing d
        np.stack([b, c, d], 1)[hb & hc & hd],  # the (b, c, d) half, or a missing a
        np.stack([a, c, d], 1)[ha & hc & hd & ~hb],  # three corners without b
        np.stack([a, d, b], 1)[ha & hb & hd & ~hc],  # three corners without c
    ]
    return vertices, np.concatenate(tris).astype(np.int64)


def _median_spacing(points: np.ndarray, k: int = 1) -> float:
    """Median distance from a point to its ``k``-th nearest neighbour, metres."""
    p = np.ascontiguousarray(points, dtype=np.float64)
    k = min(k, p.shape[0] - 1)
    nns = o3c.nns.NearestNeighborSearch(o3c.Tensor(p))
    nns.knn_index()
    _, d2 = nns.knn_search(o3c.Tensor(p), k + 1)
    return float(np.median(np.sqrt(d2.numpy()[:, k])))


def _poisson(pcd: o3d.geometry.PointCloud, config: MeshConfig) -> o3d.geometry.TriangleMesh:
    mesh, densities = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(
        pcd, depth=config.poisson_depth, scale=config.poisson_scale, linear_fit=False
    )
    dens = np.asarray(densities)
    if config.poisson_density_quantile > 0 and dens.size:
        mesh.remove_vertices_by_mask(dens < np.quantile(dens, config.poisson_density_quantile))
    pts = np.asarray(pcd.points)
    if config.poisson_crop_margin_mm is not None:
        margin = config.poisson_crop_margin_mm * 1e-3
        box = o3d.geometry.AxisAlignedBoundingBox(pts.min(axis=0) - margin, pts.max(axis=0) + margin)
        mesh = mesh.crop(box)
    max_dist = config.poisson_max_distance_mm
    limit = 3.0 * _median_spacing(pts) if max_dist is None else max_dist * 1e-3
    if limit > 0 and len(mesh.vertices):
        far = nearest_distances(pts, np.asarray(mesh.vertices)) > limit
        mesh.remove_vertices_by_mask(far)
    return mesh


def _bpa(pcd: o3d.geometry.PointCloud, config: MeshConfig) -> o3d.geometry.TriangleMesh:
    if config.bpa_radii_mm is None:
        spacing = _median_spacing(np.asarray(pcd.points))
        radii = [spacing, 2 * spacing, 4 * spacing]
    else:
        radii = [r * 1e-3 for r in config.bpa_radii_mm]
    return o3d.geometry.TriangleMesh.create_from_point_cloud_ball_pivoting(
        pcd, o3d.utility.DoubleVector(radii)
    )


def _clean(mesh: o3d.geometry.TriangleMesh) -> o3d.geometry.TriangleMesh:
    mesh.remove_degenerate_triangles()
    mesh.remove_duplicated_triangles()
    mesh.remove_duplicated_vertices()
    mesh.remove_unreferenced_vertices()
    return mesh


def build_mesh(
    cloud: FusedCloud,
    config: MeshConfig | None = None,
    cameras: dict[str, RefractiveCamera] | None = None,
    images: dict[str, np.ndarray] | None = None,
    depth_maps: dict[str, DepthMap] | None = None,
    masks: dict[str, np.ndarray] | None = None,
) -> o3d.geometry.TriangleMesh:
    """Mesh a fused cloud (see the module docstring).

    Args:
        cloud: the fused cloud (points, normals oriented towards the cameras, colours).
        config: :class:`MeshConfig` (defaults if None).
        cameras, images: refractive cameras (undistorted intrinsics) and undistorted RGB images for
            colours from the views; without them (or with ``color_source="cloud"``) the vertices
            get the colour of the nearest cloud point.
        depth_maps: per camera, for the occlusion test of the colour views (recommended).
        masks: per camera (H, W) bool validity of the undistorted image (e.g.
            ``UndistortionMap.valid``).

    Returns:
        An Open3D ``TriangleMesh`` with vertex normals and vertex colours (in [0, 1]).
    """
    config = config or MeshConfig()
    if len(cloud) < 3:
        raise ValueError(f"cannot mesh a cloud of {len(cloud)} points")
    if config.method == "heightfield":
        if config.heightfield_cell_mm is None:
            cell = max(1e-3, 2.0 * _median_spacing(cloud.points, k=4))
        else:
            cell = config.heightfield_cell_mm * 1e-3
        v, t = heightfield_mesh(cloud.points, cloud.normals, cell, config.heightfield_min_points)
        mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(t))
    else:
        pcd = cloud.to_open3d()
        mesh = _poisson(pcd, config) if config.method == "poisson" else _bpa(pcd, config)
    mesh = _clean(mesh)
    if config.target_triangles is not None and len(mesh.triangles) > config.target_triangles:
        mesh = _clean(mesh.simplify_quadric_decimation(target_number_of_triangles=config.target_triangles))
    mesh.compute_vertex_normals()
    mesh.compute_triangle_normals()

    vertices = np.asarray(mesh.vertices)
    colors = _nearest_cloud_colors(cloud, vertices)
    if config.color_source == "views" and cameras and images:
        view_colors, view = vertex_colors_from_views(
            vertices, np.asarray(mesh.vertex_normals), cameras, images, depth_maps, masks, config
        )
        colors = np.where((view >= 0)[:, None], view_colors, colors)
    mesh.vertex_colors = o3d.utility.Vector3dVector(colors.astype(np.float64) / 255.0)
    return mesh


def _nearest_cloud_colors(cloud: FusedCloud, vertices: np.ndarray) -> np.ndarray:
    """(V, 3) uint8 colour of the nearest cloud point of each vertex."""
    if vertices.shape[0] == 0:
        return np.zeros((0, 3), dtype=np.uint8)
    nns = o3c.nns.NearestNeighborSearch(o3c.Tensor(np.ascontiguousarray(cloud.points, dtype=np.float64)))
    nns.knn_index()
    idx, _ = nns.knn_search(o3c.Tensor(np.ascontiguousarray(vertices, dtype=np.float64)), 1)
    return cloud.colors[idx.numpy()[:, 0]]


# --------------------------------------------------------------------------------------------
# Colours from the views
# --------------------------------------------------------------------------------------------


def vertex_colors_from_views(
    vertices: np.ndarray,
    normals: np.ndarray,
    cameras: dict[str, RefractiveCamera],
    images: dict[str, np.ndarray],
    depth_maps: dict[str, DepthMap] | None = None,
    masks: dict[str, np.ndarray] | None = None,
    config: MeshConfig | None = None,
    chunk_size: int = 1 << 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Colour of each vertex from the best camera that sees it (see the module docstring).

    Args:
        vertices: (V, 3) world points, metres. normals: (V, 3) unit normals facing the cameras.
        cameras, images: camera name → refractive camera / (H, W, 3) uint8 undistorted RGB image;
            only cameras with an image are used.
        depth_maps: camera name → :class:`DepthMap` for the occlusion test (cameras without one
            count as "unconfirmed" views).
        masks: camera name → (H, W) bool validity of the undistorted image.

    Returns:
        colors: (V, 3) uint8 (0 where no camera sees the vertex).
        view: (V,) int32 index into ``list(cameras)`` of the chosen camera, -1 for none.
    """
    config = config or MeshConfig()
    names = list(cameras)
    v_all = torch.from_numpy(np.ascontiguousarray(vertices, dtype=np.float64))
    n_all = torch.from_numpy(np.ascontiguousarray(normals, dtype=np.float64))
    nv = v_all.shape[0]
    best_score = torch.full((nv,), -math.inf, dtype=torch.float64)
    best_color = torch.zeros(nv, 3, dtype=torch.float64)
    best_view = torch.full((nv,), -1, dtype=torch.int32)
    tol = config.occlusion_tol_mm * 1e-3
    with torch.no_grad(), torch_threads(config.threads):
        for ci, name in enumerate(names):
            if name not in images:
                continue
            cam = cameras[name]
            dm = None if depth_maps is None else depth_maps.get(name)
            img = np.asarray(images[name])
            image = image_tensor(img, img.shape[:2], f"image of camera {name!r}")
            h, w = img.shape[:2]
            dc = None
            if dm is not None:
                if tuple(dm.depth.shape) != (h, w):
                    raise ValueError(f"camera {name!r}: depth map {tuple(dm.depth.shape)} vs image {(h, w)}")
                dc = torch.stack([dm.depth.detach().cpu().float(), dm.confidence.detach().cpu().float()], -1)
            mask = None
            if masks is not None and name in masks:
                mask = torch.as_tensor(np.asarray(masks[name], dtype=bool))
            for start in range(0, nv, chunk_size):
                sl = slice(start, start + chunk_size)
                score, color = _view_score(cam, v_all[sl], n_all[sl], image, dc, mask, tol, config)
                better = score > best_score[sl]
                best_score[sl] = torch.where(better, score, best_score[sl])
                best_color[sl] = torch.where(better.unsqueeze(1), color, best_color[sl])
                best_view[sl] = torch.where(better, torch.full_like(best_view[sl], ci), best_view[sl])
    colors = np.clip(np.round(best_color.numpy()), 0, 255).astype(np.uint8)
    return colors, best_view.numpy()


def _view_score(
    cam: RefractiveCamera,
    x: torch.Tensor,
    normal: torch.Tensor,
    image: torch.Tensor,
    depth_conf: torch.Tensor | None,
    mask: torch.Tensor | None,
    tol: float,
    config: MeshConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score (n,) of a camera for vertices ``x`` (-inf where it does not see them) and the colour
    (n, 3) it sees. Confirmed views score in [2, 3], unconfirmed ones (no depth there) in [0, 1]."""
    h, w = image.shape[:2]
    uv, ok, origins, d = cam.project_rays(x)  # the ray of the projected pixel, without a lens inversion
    u, v = uv[:, 0], uv[:, 1]
    ok = ok & (u >= -0.5) & (u <= w - 0.5) & (v >= -0.5) & (v <= h - 0.5)
    if mask is not None:
        ok = ok & mask[torch.round(v).clamp(0, h - 1).long(), torch.round(u).clamp(0, w - 1).long()]
    cos = -(normal * d).sum(dim=1)
    ok = ok & (cos > 0)
    confidence = torch.zeros_like(cos)
    confirmed = torch.zeros_like(ok)
    if depth_conf is not None:
        s = (x - origins).norm(dim=1)
        sample, known = sample_map(depth_conf, uv, "bilinear")
        agrees = (torch.nan_to_num(sample[:, 0]) - s).abs() <= tol
        ok = ok & (~known | agrees)
        confirmed = known & agrees
        confidence = torch.nan_to_num(sample[:, 1])
    quality = cos if config.view_selection == "frontal" else confidence
    score = quality.clamp(0, 1) + 2.0 * confirmed.to(cos.dtype)
    score = torch.where(ok, score, torch.full_like(score, -math.inf))
    color, ok_c = sample_map(image, uv, "bilinear")
    score = torch.where(ok_c, score, torch.full_like(score, -math.inf))
    return score, torch.nan_to_num(color)


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def export_mesh(mesh: o3d.geometry.TriangleMesh, path: str | Path) -> Path:
    """Write ``mesh`` to ``path``; the extension chooses the format: .ply (binary, float64 positions,
    vertex colours and normals), .obj (text, vertex colours as ``v x y z r g b``; Open3D writes 6
    significant digits, i.e. a few µm at metre scale), .stl (binary float32, geometry and facet
    normals only) or .glb (binary glTF, float32 positions, vertex colours and normals). Written
    atomically (a temporary file in the same folder, then renamed). Raises ValueError for another
    extension, OSError if writing fails.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_FORMATS:
        raise ValueError(
            f"{path}: unsupported mesh format {path.suffix or '(no extension)'!r}; "
            f"use one of {', '.join(MESH_FORMATS)}"
        )
    out = o3d.geometry.TriangleMesh(mesh)
    if not out.has_triangle_normals():
        out.compute_triangle_normals()
    if not out.has_vertex_normals():
        out.compute_vertex_normals()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix) as tmp:
        if suffix == ".glb":
            # The tensor writer emits a standard binary chunk (the legacy one embeds a base64
            # buffer that Open3D's own reader rejects).
            ok = o3d.t.io.write_triangle_mesh(str(tmp), o3d.t.geometry.TriangleMesh.from_legacy(out))
        else:
            ok = o3d.io.write_triangle_mesh(
                str(tmp), out, write_ascii=False, write_vertex_colors=suffix != ".stl"
            )
        if not ok:
            raise OSError(f"{path}: Open3D could not write the mesh")
    return path
