"""Meshes of the fused cloud, their colours from the views, and file export.

* :mod:`.config` — :class:`MeshConfig`;
* :mod:`.surface` — :func:`build_mesh`: heightfield, Poisson or ball-pivoting surface, colours;
  :func:`is_watertight`, :func:`boundary_edges`;
* :mod:`.colors` — :func:`vertex_colors_from_views`: the best view of each vertex;
* :mod:`.export` — :func:`export_mesh`: .ply, .obj, .stl, .glb, atomically.
"""

from aquamvs_core.stages.mesh.colors import vertex_colors_from_views
from aquamvs_core.stages.mesh.config import MeshConfig
from aquamvs_core.stages.mesh.export import MESH_FORMATS, export_mesh
from aquamvs_core.stages.mesh.surface import boundary_edges, build_mesh, heightfield_mesh, is_watertight

__all__ = [
    "MESH_FORMATS",
    "MeshConfig",
    "boundary_edges",
    "build_mesh",
    "export_mesh",
    "heightfield_mesh",
    "is_watertight",
    "vertex_colors_from_views",
]
