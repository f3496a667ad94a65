"""Named survey conditions: presets of :class:`SyntheticSurveyConfig` fields for real-lab conditions.

Each condition is a set of field overrides; conditions combine (later ones win) and any field can
be overridden after them (:func:`condition_config`; CLI: ``aquamvs generate OUT --condition NAME``,
repeatable, plus ``--set FIELD=VALUE``). Every one is deterministic for its seed and has exact
ground truth.

* ``default``: the benign demo survey (8 ring cameras tilted 12° plus a fisheye, 640×480, mild
  lenses, clear water, 0.5 m of water below 0.7 m of air).
* ``ring``: an inward-tilted ring like the earlier AquaMVS rig: 12 cameras tilted 24° inward on a
  0.55 m ring plus a central fisheye auxiliary, 800×600, water 0.98 m below the reference camera
  and 0.5 m deep; 2 frames.
* ``lab-rig``: the real 12-camera lab rig: a 3 × 4 grid 0.33 m apart (up to 1.19 m between
  cameras), tilts of 1–4°, water 0.99 m below the reference camera and 0.5 m deep, the strong
  lens distortion of :mod:`.lenses` (half the lens models fold 45–48° off axis, just outside the
  image; the undistorted image with the calibrated K keeps ~78 % of the original); 640×480, no
  auxiliary camera; 2 frames. ``--size 1600x1200 --set texel_size=0.0005`` gives the full sensor.
* ``turbid-silt``: the default rig with hard photometry (per-camera gain and white balance,
  vignetting, shot and read noise), turbid water (attenuation plus a backscatter haze that grows
  with each ray's path in water), six smooth silt patches with 5–10× less texture contrast than
  the sand, and three steep bowers (walls up to slope 1.1); 2 frames.
"""

from __future__ import annotations

from typing import Any

from aquamvs_core.synthetic.config import SyntheticSurveyConfig

CONDITIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "ring": {
        "n_ring_cameras": 12,
        "ring_radius": 0.55,
        "ring_tilt_deg": 24.0,
        "image_size": (800, 600),
        "water_z": 0.98,
        "bottom_z": 1.48,
        "terrain_size": 2.3,
        "terrain_cell": 0.001,
        "texel_size": 0.001,
        "n_frames": 2,
    },
    "lab-rig": {
        "rig_layout": "grid",
        "grid_shape": (3, 4),
        "grid_spacing": 0.33,
        "grid_tilt_deg": (1.0, 4.0),
        "lens_profile": "lab",
        "fold_fraction": 0.5,
        "auxiliary_camera": False,
        "horizontal_fov_deg": 61.0,
        "image_size": (640, 480),
        "water_z": 0.99,
        "bottom_z": 1.49,
        "terrain_size": 2.6,
        "terrain_cell": 0.002,
        "texel_size": 0.001,
        "n_frames": 2,
    },
    "turbid-silt": {
        "gain_spread": 0.15,
        "white_balance_spread": 0.06,
        "vignetting": 0.4,
        "full_well": 2000.0,
        "read_noise": 0.004,
        "water_attenuation": (0.9, 0.55, 0.5),
        "backscatter": (1.2, 1.0, 0.9),
        "water_colour": (0.20, 0.30, 0.28),
        "silt_patches": 6,
        "silt_radius": (0.06, 0.12),
        "silt_contrast": (5.0, 10.0),
        "bowers": 3,
        "bower_max_slope": 1.1,
        "n_frames": 2,
    },
}


def condition_config(
    *names: str, seed: int = 0, overrides: dict[str, Any] | None = None
) -> SyntheticSurveyConfig:
    """The configuration of the conditions ``names`` (applied in order), then ``overrides``.

    Raises ValueError naming an unknown condition or an invalid field (pydantic's message).
    """
    fields: dict[str, Any] = {}
    for name in names:
        if name not in CONDITIONS:
            raise ValueError(f"unknown condition {name!r}; choose from {sorted(CONDITIONS)}")
        fields.update(CONDITIONS[name])
    fields.update(overrides or {})
    fields["seed"] = fields.get("seed", seed)
    return SyntheticSurveyConfig(**fields)
