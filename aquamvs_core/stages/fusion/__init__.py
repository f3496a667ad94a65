"""Fusion of the cameras' depth maps into one point cloud.

* :mod:`.cloud` — :class:`FusedCloud` and its PLY I/O;
* :mod:`.fuse` — :func:`fuse_depth_maps`: multi-view consistency, merging, de-duplication, clean-up.
"""

from aquamvs_core.stages.fusion.cloud import FusedCloud
from aquamvs_core.stages.fusion.fuse import FusionConfig, estimate_normals, fuse_depth_maps

__all__ = ["FusedCloud", "FusionConfig", "estimate_normals", "fuse_depth_maps"]
