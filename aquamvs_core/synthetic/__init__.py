"""The built-in synthetic survey: a rig filming a sandy bottom with a fish nest through flat water.

It is both the project's demo and the test fixture of everything downstream, so it is physically
exact: every pixel is ray traced through the lens distortion, the refractive interface and onto the
ground-truth heightfield (the bilinear interpolation of a grid), see :mod:`.render`.

Modules, in data-flow order:

* :mod:`.config` — :class:`SyntheticSurveyConfig` (all parameters, with defaults);
* :mod:`.conditions` — named real-lab conditions (``default``, ``ring``, ``lab-rig``,
  ``turbid-silt``), presets of config fields that combine (:func:`condition_config`; CLI:
  ``aquamvs generate OUT --condition NAME --set FIELD=VALUE``);
* :mod:`.lenses` — the lens models (mild, or the strong ``lab`` distortion whose models fold 45–48°
  off axis) and :func:`lens_report` (how much of an image the model's valid range covers);
* :mod:`.rig` — the rig layout (:func:`make_rig`): an inward-tilted ring with a central fisheye, or
  a lab rig's grid looking nearly straight down;
* :mod:`.terrain` — heightfield per frame (:func:`make_terrain`, :class:`Terrain`), with the
  texture of :mod:`.texture` draped on it, the steep bowers of :mod:`.bowers` and the low-contrast
  silt patches of :mod:`.silt` (their mask is part of the ground truth);
* :mod:`.heightfield` — the bilinear ground-truth surface and exact ray intersection (a safe march
  where a ray can cross the surface only once, an exact cell walk where it may cross it twice);
* :mod:`.photometry` — per-camera gain, white balance, vignetting and sensor noise;
* :mod:`.render` — exact refractive ray tracing and shading, turbid water's attenuation and
  backscatter haze (:func:`render_view`, :func:`trace_pixels`);
* :mod:`.ground_truth` — ``ground_truth.npz`` (:func:`load_ground_truth`), with an optional silt mask;
* :mod:`.ground_truth_views` — exact ground-truth depth maps of the cameras;
* :mod:`.exact_matches` — exact dense correspondences between two cameras (for the RoMa pathway's tests);
* :mod:`.generate` — :func:`generate_survey` writes calibration, videos, ground truth and survey.yaml.

The conditions (details in :mod:`.conditions`):

* ``default`` — 8 ring cameras tilted 12° plus a central fisheye, 640×480, mild lenses, clear water;
* ``ring`` — 12 cameras tilted 24° inward on a 0.55 m ring plus a central fisheye, 800×600, water
  0.98 m below the reference camera and 0.5 m deep;
* ``lab-rig`` — a real 12-camera lab rig: 3 × 4 grid 0.33 m apart, tilts 1–4°, water 0.99 m down and
  0.5 m deep, strong barrel distortion (half the lens models fold 45–48° off axis), 640×480;
* ``turbid-silt`` — the default rig with per-camera gain, white balance, vignetting and noise,
  turbid water with a backscatter haze, smooth silt patches with 5–10× less texture contrast, and
  steep bowers (walls up to slope 1.1).

Every condition is deterministic for its seed (each feature draws from its own random stream), and
fields left at their defaults are not stored, so the default survey's files are those of every
earlier version with the same ``GENERATOR_VERSION``.
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
