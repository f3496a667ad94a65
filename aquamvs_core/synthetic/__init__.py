"""The built-in synthetic survey: a rig filming a sandy bottom with a fish nest through flat water.

It is both the project's demo and the test fixture of everything downstream, so it is physically
exact: every pixel is ray traced through the lens distortion, the refractive interface and onto the
ground-truth heightfield (the bilinear interpolation of a grid), see :mod:`.render`.

* :mod:`.config` — :class:`SyntheticSurveyConfig` (all parameters, with defaults);
* :mod:`.rig` — the rig layout (:func:`make_rig`);
* :mod:`.terrain` — heightfield per frame (:func:`make_terrain`, :class:`Terrain`), with the
  texture of :mod:`.texture` draped on it;
* :mod:`.heightfield` — the bilinear ground-truth surface and exact ray intersection;
* :mod:`.render` — exact refractive ray tracing and shading (:func:`render_view`, :func:`trace_pixels`);
* :mod:`.ground_truth` — ``ground_truth.npz`` (:func:`load_ground_truth`);
* :mod:`.ground_truth_views` — exact ground-truth depth maps of the cameras;
* :mod:`.exact_matches` — exact dense correspondences between two cameras (for the RoMa pathway's tests);
* :mod:`.generate` — :func:`generate_survey` writes calibration, videos, ground truth and survey.yaml.
"""

from aquamvs_core.synthetic.conditions import CONDITIONS, condition_config
from aquamvs_core.synthetic.config import GENERATOR_NAME, GENERATOR_VERSION, SyntheticSurveyConfig
from aquamvs_core.synthetic.generate import SyntheticSurveyMismatch, generate_survey, read_config
from aquamvs_core.synthetic.ground_truth import GroundTruth, load_ground_truth, save_ground_truth
from aquamvs_core.synthetic.heightfield import Heightfield
from aquamvs_core.synthetic.lenses import LensReport, lens_report
from aquamvs_core.synthetic.render import (
    CameraRays,
    RayHits,
    RenderSettings,
    pixel_rays,
    render_frames,
    render_view,
    trace_pixels,
)
from aquamvs_core.synthetic.rig import make_rig, rig_center, ring_center
from aquamvs_core.synthetic.terrain import Crater, Terrain, make_terrain

__all__ = [
    "CONDITIONS",
    "GENERATOR_NAME",
    "GENERATOR_VERSION",
    "CameraRays",
    "Crater",
    "GroundTruth",
    "Heightfield",
    "LensReport",
    "RayHits",
    "RenderSettings",
    "SyntheticSurveyConfig",
    "SyntheticSurveyMismatch",
    "Terrain",
    "condition_config",
    "generate_survey",
    "lens_report",
    "load_ground_truth",
    "make_rig",
    "make_terrain",
    "pixel_rays",
    "read_config",
    "render_frames",
    "render_view",
    "rig_center",
    "ring_center",
    "save_ground_truth",
    "trace_pixels",
]
