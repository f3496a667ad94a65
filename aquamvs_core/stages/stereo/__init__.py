"""Dense stereo: refractive plane sweep per camera pair and per-camera combination of pair depths.

In the order the data goes through them:

* :mod:`.config` — :class:`PlaneSweepConfig` and the stage's :data:`PRESETS`;
* :mod:`.plane_warp` — the exact refractive warp of every plane on a lattice, interpolated;
* :mod:`.ncc` — windowed NCC with invalid samples excluded;
* :mod:`.pyramid` — :func:`prepare_image` (grey, prefiltered, pyramid; a view used in several pairs
  is prepared once) and the per-level bundle the correlation runs on;
* :mod:`.sweep` — the full-range sweep at the coarse level (winner-take-all, parabola, margin);
* :mod:`.refine` — surface-following refinement, level by level;
* :mod:`.plane_sweep` — the entry point :func:`sweep_pair` → :class:`PairDepth`;
* :mod:`.combine` — :func:`combine_pair_depths` → :class:`CameraDepth` (a
  :class:`~aquamvs_core.stages.depth_map.DepthMap`), and :func:`depth_for_camera` (all pairs of a camera).
"""

from aquamvs_core.stages.depth_map import CameraDepth
from aquamvs_core.stages.stereo.combine import StereoView, combine_pair_depths, depth_for_camera
from aquamvs_core.stages.stereo.config import PRESETS, PlaneSweepConfig
from aquamvs_core.stages.stereo.plane_sweep import PairDepth, resolve_z_range, sweep_pair
from aquamvs_core.stages.stereo.plane_warp import LevelWarp, WarpField, build_warp_field
from aquamvs_core.stages.stereo.pyramid import PreparedImage, prepare_image
from aquamvs_core.stages.stereo.sweep import parabola_peak

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
    "parabola_peak",
    "prepare_image",
    "resolve_z_range",
    "sweep_pair",
]
