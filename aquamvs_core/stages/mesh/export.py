"""Mesh export (:func:`export_mesh`): .ply, .obj, .stl or .glb, written atomically."""

from __future__ import annotations

from pathlib import Path

import open3d as o3d

from aquamvs_core.files import atomic_path

MESH_FORMATS = (".ply", ".obj", ".stl", ".glb")


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
