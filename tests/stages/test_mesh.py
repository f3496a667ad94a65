"""Meshing of fused clouds, vertex colours from the views that see the vertices, and export."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import open3d as o3d
import pydantic
import pytest
import torch

from aquamvs_core.evaluation.metrics import cloud_errors, mesh_metrics, visibility_count
from aquamvs_core.stages.depth_map import DepthMap
from aquamvs_core.stages.fusion import FusedCloud, fuse_depth_maps
from aquamvs_core.stages.mesh import (
    MeshConfig,
    build_mesh,
    export_mesh,
    heightfield_mesh,
    vertex_colors_from_views,
)


@pytest.fixture(scope="module")
def scene(gt_scene) -> SimpleNamespace:
    """The shared 4-camera ground-truth scene, its seen cells and the fused ground-truth cloud."""
    g = gt_scene
    seen = visibility_count(g.terrain, 0, g.cameras, g.masks, g.depth, cell_step=2) >= 2
    return SimpleNamespace(**vars(g), seen=seen, cloud=fuse_depth_maps(g.depth, g.cameras, g.images))


@pytest.fixture(scope="module")
def heightfield(scene) -> o3d.geometry.TriangleMesh:
    return build_mesh(scene.cloud, MeshConfig(), scene.cameras, scene.images, scene.depth, scene.masks)


def _vertex_errors(mesh, terrain) -> np.ndarray:
    return np.abs(cloud_errors(np.asarray(mesh.vertices), terrain, 0))


def test_heightfield_mesh_of_the_fused_cloud(scene, heightfield):
    mesh = heightfield
    err = _vertex_errors(mesh, scene.terrain)
    # The automatic cell is ~11 mm here (the 160×120 cloud is sparse); the tangent-plane median
    # keeps the slope out of the vertex heights, the ripples' curvature over half a cell is left.
    assert np.median(err) < 0.1
    assert np.quantile(err, 0.99) < 0.5
    assert err.max() < 1.5
    m = mesh_metrics(mesh, scene.terrain, 0, scene.seen, n_samples=300_000, cell_step=2)
    assert m["outlier_fraction"] == 0.0
    assert m["completeness"] > 0.95
    assert mesh.is_edge_manifold()
    normals = np.asarray(mesh.triangle_normals)
    assert np.all(normals[:, 2] < 0)  # wound to face up, towards the cameras
    assert mesh.has_vertex_colors() and mesh.has_vertex_normals()


def test_poisson_mesh_of_the_fused_cloud(scene):
    cfg = MeshConfig(method="poisson", poisson_depth=7)
    mesh = build_mesh(scene.cloud, cfg, scene.cameras, scene.images, scene.depth, scene.masks)
    err = _vertex_errors(mesh, scene.terrain)
    assert np.median(err) < 0.5
    assert np.quantile(err, 0.99) < 2.0  # smoothing at depth 7 (~5 mm cells) and at the rim
    m = mesh_metrics(mesh, scene.terrain, 0, scene.seen, n_samples=300_000, cell_step=2)
    assert m["outlier_fraction"] == 0.0  # the extrapolated surface was trimmed
    assert m["completeness"] > 0.95
    assert mesh.is_edge_manifold() and mesh.is_vertex_manifold()
    assert np.median(np.asarray(mesh.vertex_normals)[:, 2]) < -0.9


def test_ball_pivoting_mesh_interpolates_the_cloud(scene):
    # A 30 cm square under the rig keeps the test fast.
    c = scene.cloud
    inside = np.all(np.abs(c.points[:, :2] - [-0.3, 0.0]) < 0.15, axis=1)
    crop = FusedCloud(c.points[inside], c.colors[inside], c.normals[inside], c.support[inside])
    mesh = build_mesh(crop, MeshConfig(method="bpa"))
    assert len(mesh.vertices) > 0.97 * len(crop)  # nearly every point is pivoted onto
    assert len(mesh.triangles) > 1.8 * len(crop)  # ~2 triangles per point
    err = _vertex_errors(mesh, scene.terrain)
    assert np.median(err) < 0.1 and err.max() < 1.0  # the vertices are the fused points
    assert np.median(np.asarray(mesh.triangle_normals)[:, 2]) < -0.9


def test_decimation_reaches_the_target(scene, heightfield):
    target = 5000
    assert len(heightfield.triangles) > 3 * target
    mesh = build_mesh(scene.cloud, MeshConfig(target_triangles=target))
    assert 0.9 * target <= len(mesh.triangles) <= target
    err = _vertex_errors(mesh, scene.terrain)
    assert np.median(err) < 0.5


def _flat_patch(n: int, cell: float, z: float = 1.2) -> FusedCloud:
    centres = (np.arange(n) + 0.5) * cell
    xx, yy = np.meshgrid(centres, centres)
    pts = np.c_[xx.ravel(), yy.ravel(), np.full(xx.size, z)]
    normals = np.tile(np.array([0.0, 0.0, -1.0], dtype=np.float32), (pts.shape[0], 1))
    return FusedCloud(
        points=pts,
        colors=np.full(pts.shape, 200, np.uint8),
        normals=normals,
        support=np.full(pts.shape[0], 2, np.int32),
    )


def test_heightfield_of_a_flat_patch_is_a_clean_manifold():
    n, cell = 30, 0.002
    cloud = _flat_patch(n, cell)
    mesh = build_mesh(cloud, MeshConfig(heightfield_cell_mm=2.0, color_source="cloud"))
    assert len(mesh.vertices) == n * n
    assert len(mesh.triangles) == 2 * (n - 1) ** 2
    np.testing.assert_allclose(np.asarray(mesh.vertices)[:, 2], 1.2, atol=1e-12)
    assert mesh.is_edge_manifold(allow_boundary_edges=True)
    assert mesh.is_vertex_manifold()
    # Every interior edge is shared by exactly two triangles: only the rim is open.
    assert len(mesh.get_non_manifold_edges(allow_boundary_edges=False)) == 4 * (n - 1)
    assert not mesh.is_watertight()
    assert mesh.is_orientable()
    np.testing.assert_allclose(np.asarray(mesh.triangle_normals), [[0.0, 0.0, -1.0]] * len(mesh.triangles))
    np.testing.assert_array_equal(np.asarray(mesh.vertex_colors), 200 / 255)


def test_heightfield_triangulates_only_cells_with_data():
    n, cell = 10, 0.002
    cloud = _flat_patch(n, cell)
    keep = np.ones(n * n, dtype=bool)
    keep[5 * n + 5] = False  # an interior cell without data
    v, t = heightfield_mesh(cloud.points[keep], cloud.normals[keep], cell)
    assert v.shape[0] == n * n - 1  # one cell emptied
    # Its four squares lose their two triangles each, and each gets one back from three corners.
    assert t.shape[0] == 2 * (n - 1) ** 2 - 4


def test_poisson_of_a_closed_sphere_is_watertight():
    k = 4000
    i = np.arange(k) + 0.5
    phi = np.arccos(1 - 2 * i / k)
    theta = np.pi * (1 + 5**0.5) * i
    unit = np.c_[np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)]
    centre, radius = np.array([0.1, -0.2, 1.1]), 0.05
    cloud = FusedCloud(
        points=centre + radius * unit,
        colors=np.full((k, 3), 90, np.uint8),
        normals=unit.astype(np.float32),
        support=np.full(k, 3, np.int32),
    )
    cfg = MeshConfig(
        method="poisson",
        poisson_depth=6,
        poisson_density_quantile=0.0,
        poisson_crop_margin_mm=None,
        poisson_max_distance_mm=0.0,
        color_source="cloud",
    )
    mesh = build_mesh(cloud, cfg)
    assert mesh.is_watertight() and mesh.is_orientable()
    r = np.linalg.norm(np.asarray(mesh.vertices) - centre, axis=1)
    assert np.abs(r - radius).max() < 0.001


def test_vertex_colours_come_from_a_view_that_sees_the_vertex(scene, heightfield):
    vertices = np.asarray(heightfield.vertices)
    normals = np.asarray(heightfield.vertex_normals)
    names = list(scene.cameras)
    colors, view = vertex_colors_from_views(
        vertices, normals, scene.cameras, scene.images, scene.depth, scene.masks
    )
    assert np.mean(view >= 0) > 0.98
    # Cameras scored one at a time or side by side, vertices in one chunk or many: the same choice.
    for workers, chunk in ((1, 1 << 16), (3, 777)):
        cfg = MeshConfig(workers=workers)
        again = vertex_colors_from_views(
            vertices, normals, scene.cameras, scene.images, scene.depth, scene.masks, cfg, chunk
        )
        np.testing.assert_array_equal(again[0], colors)
        np.testing.assert_array_equal(again[1], view)
    counts = np.bincount(view[view >= 0], minlength=len(names))
    assert np.all(counts > 0.05 * len(view))  # every camera is the best view somewhere
    # Check the choice independently: the chosen camera's GT depth at the vertex's pixel matches.
    x = torch.from_numpy(vertices)
    for ci, name in enumerate(names):
        sel = view == ci
        cam = scene.cameras[name]
        uv, ok = cam.project(x[sel])
        assert ok.all() and cam.in_image(uv).all()
        origins, _, _ = cam.cast_ray(uv)
        s = (x[sel] - origins).norm(dim=1).numpy()
        iu = np.clip(np.round(uv[:, 0].numpy()).astype(int), 0, 159)
        iv = np.clip(np.round(uv[:, 1].numpy()).astype(int), 0, 119)
        d = scene.depth[name].depth.numpy()[iv, iu]
        assert np.all(np.abs(d - s) < 0.008)  # nearest pixel: within the ray-depth step of a pixel
    # The mesh carries exactly these colours where a view was found.
    mesh_rgb = np.round(np.asarray(heightfield.vertex_colors) * 255).astype(np.uint8)
    np.testing.assert_array_equal(mesh_rgb[view >= 0], colors[view >= 0])

    # cam0's depth map now says an occluder hides everything 5 cm in front: cam0 is never chosen,
    # its vertices go to other views that see them.
    occluded = dict(scene.depth)
    d0 = scene.depth["cam0"]
    occluded["cam0"] = DepthMap("cam0", d0.depth - 0.05, d0.confidence)
    _, view_occ = vertex_colors_from_views(
        vertices, normals, scene.cameras, scene.images, occluded, scene.masks
    )
    assert not np.any(view_occ == 0)
    was_cam0 = view == 0
    assert np.mean(view_occ[was_cam0] >= 1) > 0.95
    np.testing.assert_array_equal(view_occ[~was_cam0], view[~was_cam0])


def test_unseen_vertices_get_no_view_and_the_cloud_colour(scene):
    below = np.array([[-0.3, 0.0, 1.3]])  # 10 cm under the bed: every depth map says "nearer"
    outside = np.array([[3.0, 3.0, 1.2]])  # outside every image
    vertices = np.concatenate([below, outside])
    normals = np.array([[0.0, 0.0, -1.0]] * 2)
    _, view = vertex_colors_from_views(vertices, normals, scene.cameras, scene.images, scene.depth)
    assert view.tolist() == [-1, -1]
    # Facing away (normal down) from cameras that would see the point: no view either.
    on_bed = scene.cloud.points[np.argmin(np.linalg.norm(scene.cloud.points[:, :2] - [-0.3, 0.0], axis=1))]
    _, view = vertex_colors_from_views(on_bed[None], np.array([[0.0, 0.0, 1.0]]), scene.cameras, scene.images)
    assert view.tolist() == [-1]
    _, view = vertex_colors_from_views(
        on_bed[None], np.array([[0.0, 0.0, -1.0]]), scene.cameras, scene.images
    )
    assert view[0] >= 0


@pytest.mark.parametrize("ext", [".ply", ".obj", ".stl", ".glb"])
def test_export_round_trips(heightfield, tmp_path, ext):
    path = tmp_path / "meshes" / f"bed{ext}"
    out = export_mesh(heightfield, path)
    assert out == path and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left
    back = o3d.io.read_triangle_mesh(str(path))
    assert len(back.triangles) == len(heightfield.triangles)
    if ext == ".stl":  # a triangle soup: re-merge the corners
        back.merge_close_vertices(1e-9)
    assert len(back.vertices) == len(heightfield.vertices)
    np.testing.assert_allclose(
        back.get_axis_aligned_bounding_box().get_box_points(),
        heightfield.get_axis_aligned_bounding_box().get_box_points(),
        atol=1e-5 if ext == ".obj" else 1e-6,  # OBJ: 6 significant digits; STL, GLB: float32
    )
    assert back.has_vertex_colors() == (ext != ".stl")
    # Exporting again replaces the file in place.
    export_mesh(heightfield, path)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_export_rejects_unknown_extensions(heightfield, tmp_path):
    with pytest.raises(ValueError, match=r"unsupported mesh format '\.xyz'.*\.ply, \.obj, \.stl, \.glb"):
        export_mesh(heightfield, tmp_path / "bed.xyz")
    with pytest.raises(ValueError, match="no extension"):
        export_mesh(heightfield, tmp_path / "bed")
    assert list(tmp_path.iterdir()) == []


def test_mesh_config_is_validated(scene):
    with pytest.raises(pydantic.ValidationError):
        MeshConfig(method="marching-cubes")
    with pytest.raises(pydantic.ValidationError):
        MeshConfig(poisson_density_quantile=1.5)
    with pytest.raises(pydantic.ValidationError):
        MeshConfig(target_triangles=0)
    with pytest.raises(ValueError, match="cannot mesh"):
        build_mesh(FusedCloud.empty())


def test_is_watertight_agrees_with_open3d_and_answers_open_surfaces_at_once():
    import open3d as o3d

    from aquamvs_core.stages.mesh import boundary_edges, is_watertight

    sphere = o3d.geometry.TriangleMesh.create_sphere(radius=1.0, resolution=12)
    assert boundary_edges(sphere) == 0
    assert is_watertight(sphere) is True and sphere.is_watertight()
    # A grid of 3×3 cells (18 triangles) has a rim of 12 edges.
    xs, ys = np.meshgrid(np.arange(4.0), np.arange(4.0))
    vertices = np.c_[xs.ravel(), ys.ravel(), np.zeros(16)]
    quads = [(r * 4 + c, r * 4 + c + 1, (r + 1) * 4 + c) for r in range(3) for c in range(3)]
    quads += [(r * 4 + c + 1, (r + 1) * 4 + c + 1, (r + 1) * 4 + c) for r in range(3) for c in range(3)]
    grid = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(quads))
    assert boundary_edges(grid) == 12
    assert is_watertight(grid) is False and not grid.is_watertight()
    # A sphere with one triangle removed has a rim of 3 edges.
    holed = o3d.geometry.TriangleMesh(
        sphere.vertices, o3d.utility.Vector3iVector(np.asarray(sphere.triangles)[1:])
    )
    assert boundary_edges(holed) == 3 and is_watertight(holed) is False and not holed.is_watertight()
    assert boundary_edges(o3d.geometry.TriangleMesh()) == 0
