"""Surface meshes from a fused point cloud.

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

Then an optional quadric decimation to ``target_triangles``, and vertex colours: from the views
(:mod:`.colors`), and for vertices that no camera sees, the colour of the nearest cloud point.

The heightfield's cell comes from the spacing of the points (median distance to the 4th nearest
neighbour), estimated on every ``SPACING_SAMPLE``-th point of the cloud (a median, not a per-point
quantity: ~65 k samples fix it to a fraction of a percent); the KD-tree of the cloud built for it
also finds the nearest cloud colours.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import open3d as o3d
import open3d.core as o3c

from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.stages.depth_map import DepthMap
from aquamvs_core.stages.fusion import FusedCloud, ViewLoader
from aquamvs_core.stages.fusion.cloud import nearest_distances
from aquamvs_core.stages.mesh.colors import vertex_colors_from_views, views_in_memory
from aquamvs_core.stages.mesh.config import MeshConfig

#: Queries of the point-spacing estimate: at most about this many points of the cloud.
SPACING_QUERIES = 1 << 16


# --------------------------------------------------------------------------------------------
# Surface reconstruction
# --------------------------------------------------------------------------------------------


def _group_median(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median of ``values`` per distinct key (non-negative integers): (unique keys, medians, counts).

    One sort on ``key + v'`` with ``v'`` the values scaled into [0, 0.5]: by key, then by value (to
    ~1e-16 of the key's magnitude times the values' range: far below a micrometre here)."""
    lo, span = float(values.min()), float(np.ptp(values))
    scaled = (values - lo) * (0.5 / span) if span > 0 else np.zeros_like(values)
    order = np.argsort(keys.astype(np.float64) + scaled, kind="stable")
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


class _CloudIndex:
    """A KD-tree of the cloud's points, built once on first use (Open3D)."""

    def __init__(self, points: np.ndarray):
        self.points = np.ascontiguousarray(points, dtype=np.float64)
        self._nns: o3c.nns.NearestNeighborSearch | None = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices (m, k) and distances (m, k) of the ``k`` nearest points of each query (m, 3)."""
        if self._nns is None:
            self._nns = o3c.nns.NearestNeighborSearch(o3c.Tensor(self.points))
            self._nns.knn_index()
        idx, d2 = self._nns.knn_search(o3c.Tensor(np.ascontiguousarray(queries, dtype=np.float64)), k)
        return idx.numpy(), np.sqrt(d2.numpy())

    def spacing(self, k: int = 1) -> float:
        """Median distance from a point to its ``k``-th nearest neighbour, metres (over every
        n-th point, at most ~:data:`SPACING_QUERIES` of them)."""
        k = min(k, self.points.shape[0] - 1)
        step = max(1, self.points.shape[0] // SPACING_QUERIES)
        _, dist = self.search(self.points[::step], k + 1)
        return float(np.median(dist[:, k]))


def _median_spacing(points: np.ndarray, k: int = 1) -> float:
    """Median distance from a point to its ``k``-th nearest neighbour, metres."""
    return _CloudIndex(points).spacing(k)


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


def _drop_unreferenced(mesh: o3d.geometry.TriangleMesh) -> o3d.geometry.TriangleMesh:
    """``remove_unreferenced_vertices`` in NumPy (vertex order kept)."""
    v, t = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    used = np.zeros(v.shape[0], dtype=bool)
    used[t.reshape(-1)] = True
    if used.all():
        return mesh
    new_id = np.cumsum(used) - 1
    return o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(v[used]), o3d.utility.Vector3iVector(new_id[t].astype(np.int32))
    )


def boundary_edges(mesh: o3d.geometry.TriangleMesh) -> int:
    """Number of edges used by exactly one triangle (the rim of an open surface)."""
    tri = np.asarray(mesh.triangles, dtype=np.int64)
    if tri.size == 0:
        return 0
    edges = np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges[:, 0] * (int(tri.max()) + 1) + edges[:, 1], return_counts=True)
    return int((counts == 1).sum())


def is_watertight(mesh: o3d.geometry.TriangleMesh) -> bool:
    """Open3D's ``is_watertight``, answered at once for a mesh with a rim (a bed surface always has
    one): a boundary edge alone makes a mesh not watertight, while Open3D's full test, which also
    looks for self-intersections, takes seconds on a frame's mesh."""
    return boundary_edges(mesh) == 0 and bool(mesh.is_watertight())


def build_mesh(
    cloud: FusedCloud,
    config: MeshConfig | None = None,
    cameras: Mapping[str, RefractiveCamera] | None = None,
    images: Mapping[str, np.ndarray] | None = None,
    depth_maps: Mapping[str, DepthMap] | None = None,
    masks: Mapping[str, np.ndarray] | None = None,
    views: ViewLoader | None = None,
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
        views: instead of ``images`` and ``depth_maps``: camera name → its
            :class:`~aquamvs_core.stages.fusion.FusionView`, loaded one camera at a time.

    Returns:
        An Open3D ``TriangleMesh`` with vertex normals and vertex colours (in [0, 1]).
    """
    config = config or MeshConfig()
    if len(cloud) < 3:
        raise ValueError(f"cannot mesh a cloud of {len(cloud)} points")
    index = _CloudIndex(cloud.points)
    if config.method == "heightfield":
        if config.heightfield_cell_mm is None:
            cell = max(1e-3, 2.0 * index.spacing(k=4))
        else:
            cell = config.heightfield_cell_mm * 1e-3
        v, t = heightfield_mesh(cloud.points, cloud.normals, cell, config.heightfield_min_points)
        mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(t))
        # One vertex per cell and distinct triangles by construction: only isolated cells to drop.
        mesh = _drop_unreferenced(mesh)
    else:
        pcd = cloud.to_open3d()
        mesh = _clean(_poisson(pcd, config) if config.method == "poisson" else _bpa(pcd, config))
    if config.target_triangles is not None and len(mesh.triangles) > config.target_triangles:
        mesh = _clean(mesh.simplify_quadric_decimation(target_number_of_triangles=config.target_triangles))
    mesh.compute_vertex_normals()
    mesh.compute_triangle_normals()

    vertices = np.asarray(mesh.vertices)
    colors = np.zeros((vertices.shape[0], 3), dtype=np.uint8)
    seen = np.zeros(vertices.shape[0], dtype=bool)
    if views is None and images:
        views = views_in_memory(images, depth_maps)
    if config.color_source == "views" and cameras and views is not None:
        colors, view = vertex_colors_from_views(
            vertices, np.asarray(mesh.vertex_normals), cameras, views=views, masks=masks, config=config
        )
        seen = view >= 0
    if not seen.all():
        unseen = np.flatnonzero(~seen)
        colors[unseen] = _nearest_cloud_colors(cloud, vertices[unseen], index)
    mesh.vertex_colors = o3d.utility.Vector3dVector(colors.astype(np.float64) / 255.0)
    return mesh


def _nearest_cloud_colors(cloud: FusedCloud, vertices: np.ndarray, index: _CloudIndex) -> np.ndarray:
    """(V, 3) uint8 colour of the nearest cloud point of each vertex."""
    if vertices.shape[0] == 0:
        return np.zeros((0, 3), dtype=np.uint8)
    idx, _ = index.search(vertices, 1)
    return cloud.colors[idx[:, 0]]
