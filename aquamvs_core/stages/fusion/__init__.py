"""Fusion of the cameras' depth maps into one point cloud.

* :mod:`.cloud` — :class:`FusedCloud` and its PLY I/O;
* :mod:`.projection` — the exact refractive projection of many points into one camera, fast;
* :mod:`.views` — the cameras' maps prepared for sampling, the bounded cache that streams them, and
  the witness read;
* :mod:`.consistency` — the per-source-camera consistency test;
* :mod:`.cleanup` — the voxel grid, outlier removal and normals;
* :mod:`.fuse` — :func:`fuse_views` / :func:`fuse_depth_maps`: the whole fusion.
"""

from aquamvs_core.stages.fusion.cloud import FusedCloud
from aquamvs_core.stages.fusion.fuse import FusionConfig, estimate_normals, fuse_depth_maps, fuse_views
from aquamvs_core.stages.fusion.projection import Projection, project_points
from aquamvs_core.stages.fusion.views import FusionView, ViewLoader

__all__ = [
    "FusedCloud",
    "FusionConfig",
    "FusionView",
    "Projection",
    "ViewLoader",
    "estimate_normals",
    "fuse_depth_maps",
    "fuse_views",
    "project_points",
]
