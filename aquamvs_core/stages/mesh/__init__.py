"""Meshes of the fused cloud, their colours from the views, and file export.

* :mod:`.config` — :class:`MeshConfig`;
* :mod:`.surface` — :func:`build_mesh`: heightfield, Poisson or ball-pivoting surface, colours;
* :mod:`.colors` — :func:`vertex_colors_from_views`: the best view of each vertex;
* :mod:`.export` — :func:`export_mesh`: .ply, .obj, .stl, .glb, atomically.
"""

from aquamvs_core.stages.mesh.colors import vertex_colors_from_views
from aquamvs_core.stages.mesh.config import MeshConfig
from aquamvs_core.stages.mesh.export import MESH_FORMATS, export_mesh
from aquamvs_core.stages.mesh.surface import build_mesh, heightfield_mesh

__all__ = [
    "MESH_FORMATS",
    "MeshConfig",
    "build_mesh",
    "export_mesh",
    "heightfield_mesh",
    "vertex_colors_from_views",
]
