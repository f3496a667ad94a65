"""Dense stereo: refractive plane sweep per camera pair and per-camera combination of pair depths.

* :mod:`~aquamvs_core.stages.stereo.plane_warp` — the exact refractive warp on a lattice, interpolated;
* :mod:`~aquamvs_core.stages.stereo.ncc` — windowed NCC with invalid samples excluded;
* :mod:`~aquamvs_core.stages.stereo.plane_sweep` — :class:`PlaneSweepConfig`, :data:`PRESETS`,
  :func:`sweep_pair` → :class:`PairDepth`, :func:`prepare_image` (a view used in several pairs);
* :mod:`~aquamvs_core.stages.stereo.combine` — :func:`combine_pair_depths` → :class:`CameraDepth`
  (a :class:`~aquamvs_core.stages.depth_map.DepthMap`), and :func:`depth_for_camera` (all pairs of a camera).
"""

from aquamvs_core.stages.depth_map import CameraDepth
from aquamvs_core.stages.stereo.combine import StereoView, combine_pair_depths, depth_for_camera
from aquamvs_core.stages.stereo.plane_sweep import (
    PRESETS,
    PairDepth,
    PlaneSweepConfig,
    PreparedImage,
    prepare_image,
    resolve_z_range,
    sweep_pair,
    z_range_from_points,
)
from aquamvs_core.stages.stereo.plane_warp import LevelWarp, WarpField, build_warp_field

__all__ = [
    "PRESETS",
    "CameraDepth",
    "LevelWarp",
    "PairDepth",
    "PlaneSweepConfig",
    "PreparedImage",
    "StereoView",
    "WarpField",
    "build_warp_field",
    "combine_pair_depths",
    "depth_for_camera",
    "prepare_image",
    "resolve_z_range",
    "sweep_pair",
    "z_range_from_points",
]
