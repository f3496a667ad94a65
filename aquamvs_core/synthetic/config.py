"""Configuration of the built-in synthetic survey (:class:`SyntheticSurveyConfig`)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Bumped whenever the generator's output for a given config changes; stored in the calibration's
#: metadata so that a survey made by another version is not silently reused.
GENERATOR_VERSION = 1
GENERATOR_NAME = "aquamvs synthetic"


class SyntheticSurveyConfig(BaseModel):
    """Everything that defines a synthetic survey. Same config (and generator version) → same bytes.

    Geometry follows the project's conventions (:mod:`aquamvs_core.camera.calibration`): world Z down,
    metres, origin at the centre of the reference camera (the first ring camera).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, ge=0, description="random seed (rig jitter, lens coefficients, relief, texture)")

    # --- rig -----------------------------------------------------------------------------------
    n_ring_cameras: int = Field(8, ge=2, le=32, description="primary cameras on a horizontal ring")
    auxiliary_camera: bool = Field(True, description="add a central auxiliary fisheye camera")
    ring_radius: float = Field(0.30, gt=0.0, le=2.0, description="ring radius, m")
    ring_tilt_deg: float = Field(12.0, ge=0.0, le=40.0, description="inward tilt of ring cameras, degrees")
    position_jitter: float = Field(0.002, ge=0.0, le=0.05, description="std of camera centre jitter, m")
    rotation_jitter_deg: float = Field(0.3, ge=0.0, le=5.0, description="std of orientation jitter, degrees")
    image_size: tuple[int, int] = Field((640, 480), description="(width, height), pixels")
    horizontal_fov_deg: float = Field(65.0, ge=20.0, le=110.0, description="ring cameras' horizontal FOV")
    aux_horizontal_fov_deg: float = Field(
        90.0, ge=30.0, le=150.0, description="auxiliary fisheye's horizontal FOV"
    )
    lens_distortion: bool = Field(True, description="lens distortion (else all coefficients zero)")

    # --- conditions (see :mod:`aquamvs_core.synthetic.conditions`; defaults: the benign survey) ---
    rig_layout: Literal["ring", "grid"] = Field(
        "ring",
        description="ring: inward-tilted ring (+ fisheye); grid: a lab rig looking nearly straight down",
    )
    grid_shape: tuple[int, int] = Field((3, 4), description="grid layout: (rows along Y, columns along X)")
    grid_spacing: float = Field(0.33, gt=0.0, le=2.0, description="grid layout: camera spacing, m")
    grid_tilt_deg: tuple[float, float] = Field(
        (1.0, 4.0), description="grid layout: range of each camera's tilt from the vertical, degrees"
    )
    lens_profile: Literal["mild", "lab"] = Field(
        "mild", description="mild: k1 ≈ -0.03; lab: strong barrel distortion of a real lab rig (k1 ≈ -0.5)"
    )
    fold_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="lab lenses: share of the lens models that fold 45–48° off axis"
    )
    gain_spread: float = Field(0.0, ge=0.0, le=0.5, description="std of the per-camera log gain")
    white_balance_spread: float = Field(
        0.0, ge=0.0, le=0.3, description="std of the per-camera, per-channel log white balance"
    )
    vignetting: float = Field(0.0, ge=0.0, le=0.9, description="brightness lost at the image corners")
    full_well: float = Field(
        0.0, ge=0.0, le=1e6, description="photo-electrons at full scale: Poisson shot noise (0: none)"
    )
    read_noise: float = Field(
        0.0, ge=0.0, le=0.1, description="std of the read noise, fraction of full scale"
    )
    backscatter: tuple[float, float, float] | None = Field(
        None, description="RGB backscatter coefficients of the water, 1/m (None: water_attenuation)"
    )
    silt_patches: int = Field(0, ge=0, le=64, description="number of low-contrast silt patches")
    silt_radius: tuple[float, float] = Field((0.06, 0.12), description="range of the silt patch radii, m")
    silt_contrast: tuple[float, float] = Field(
        (5.0, 10.0), description="range of how many times less texture contrast silt has than sand"
    )
    bowers: int = Field(0, ge=0, le=16, description="number of steep bowers (sand castles with a pit)")
    bower_max_slope: float = Field(1.1, gt=0.0, le=3.0, description="steepest wall slope of a bower")

    # --- water and bottom ------------------------------------------------------------------------
    water_z: float = Field(0.70, gt=0.05, le=10.0, description="world Z of the water surface, m")
    bottom_z: float = Field(1.20, gt=0.0, le=20.0, description="mean world Z of the bottom (frame 0), m")
    n_air: float = Field(1.0, gt=0.0)
    n_water: float = Field(1.333, gt=0.0)
    water_attenuation: tuple[float, float, float] = Field(
        (0.30, 0.09, 0.07), description="RGB attenuation coefficients of the water, 1/m"
    )
    water_colour: tuple[float, float, float] = Field(
        (0.05, 0.20, 0.24), description="RGB colour that attenuated light fades to (backscatter)"
    )

    # --- terrain -----------------------------------------------------------------------------------
    terrain_size: float = Field(1.4, gt=0.05, le=10.0, description="side of the square terrain, m")
    terrain_cell: float = Field(0.001, gt=0.0, le=0.05, description="heightfield grid spacing, m")
    texel_size: float = Field(0.0005, gt=0.0, le=0.02, description="texture texel size, m")
    texture_blur: float = Field(
        0.0005, ge=0.0, le=0.01, description="std of the Gaussian prefilter of the texture, m (anti-aliasing)"
    )
    relief_scale: float = Field(1.0, ge=0.0, le=3.0, description="multiplies every relief amplitude")
    change_per_frame: float = Field(
        0.0008, ge=0.0, le=0.005, description="crater deepening / mound growth per frame, m"
    )
    ripple_drift: float = Field(0.002, ge=0.0, le=0.02, description="sand ripple drift per frame, m")

    # --- rendering and output ------------------------------------------------------------------------
    n_frames: int = Field(3, ge=1, le=1000)
    fps: float = Field(30.0, gt=0.0, le=240.0)
    supersample: int = Field(2, ge=1, le=4, description="supersamples per pixel side (anti-aliasing)")
    lossless_video: bool = True
    crf: int = Field(18, ge=0, le=51, description="x264 quality when not lossless")

    @field_validator("image_size")
    @classmethod
    def _check_size(cls, v: tuple[int, int]) -> tuple[int, int]:
        w, h = v
        if w < 16 or h < 16 or w > 8192 or h > 8192:
            raise ValueError(f"image_size {v} must be between 16 and 8192 pixels on each side")
        if w % 2 or h % 2:
            raise ValueError(f"image_size {v} must have even width and height (video codecs)")
        return v

    @field_validator("water_attenuation", "water_colour", "backscatter")
    @classmethod
    def _check_rgb(cls, v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if v is not None and any(not math.isfinite(c) or c < 0 for c in v):
            raise ValueError(f"{v}: values must be finite and non-negative")
        return v

    @field_validator("grid_tilt_deg", "silt_radius", "silt_contrast")
    @classmethod
    def _check_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (math.isfinite(v[0]) and math.isfinite(v[1]) and 0 <= v[0] <= v[1]):
            raise ValueError(f"{v}: expected a range (low, high) with 0 <= low <= high")
        return v

    @field_validator("grid_shape")
    @classmethod
    def _check_grid(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 1 or v[1] < 1 or v[0] * v[1] < 2 or v[0] * v[1] > 64:
            raise ValueError(f"grid_shape {v}: need 2 to 64 cameras")
        return v

    @model_validator(mode="after")
    def _check_geometry(self) -> SyntheticSurveyConfig:
        if self.n_water <= self.n_air:
            raise ValueError(f"n_water ({self.n_water}) must exceed n_air ({self.n_air})")
        # Keep the highest mound (a few cm, times relief_scale) well under water.
        margin = 0.05 + 0.06 * self.relief_scale
        if self.bottom_z - self.water_z < margin:
            raise ValueError(
                f"bottom_z ({self.bottom_z}) must be at least {margin:.3f} m below water_z ({self.water_z})"
            )
        n_cells = self.terrain_size / self.terrain_cell
        if n_cells < 16 or n_cells > 8000:
            raise ValueError(f"terrain_size / terrain_cell = {n_cells:.0f} cells must be in [16, 8000]")
        n_texels = self.terrain_size / self.texel_size
        if n_texels < 16 or n_texels > 8000:
            raise ValueError(f"terrain_size / texel_size = {n_texels:.0f} texels must be in [16, 8000]")
        if self.grid_tilt_deg[1] > 40.0:
            raise ValueError(f"grid_tilt_deg {self.grid_tilt_deg}: tilts above 40° are not a lab rig")
        if self.silt_contrast[0] < 1.0:
            raise ValueError(f"silt_contrast {self.silt_contrast}: silt has less contrast (factors >= 1)")
        if self.silt_radius[0] <= 0.0:
            raise ValueError(f"silt_radius {self.silt_radius}: radii must be positive")
        return self

    @property
    def n_cameras(self) -> int:
        """Cameras of the rig (primaries plus the auxiliary)."""
        primaries = (
            self.grid_shape[0] * self.grid_shape[1] if self.rig_layout == "grid" else self.n_ring_cameras
        )
        return primaries + int(self.auxiliary_camera)

    def stored_config(self) -> dict[str, Any]:
        """The configuration as stored in the metadata: every field, except the condition fields
        that keep their default (so that a default survey's files are those of earlier versions)."""
        data = self.model_dump(mode="json")
        defaults = _DEFAULTS.model_dump(mode="json")
        return {k: v for k, v in data.items() if k not in CONDITION_FIELDS or v != defaults[k]}

    def metadata(self) -> dict[str, Any]:
        """The calibration file's ``metadata`` section that identifies this survey."""
        return {
            "generator": GENERATOR_NAME,
            "generator_version": GENERATOR_VERSION,
            "seed": self.seed,
            "config": self.stored_config(),
        }


#: Fields added for the real-lab conditions: stored only when they differ from their default.
CONDITION_FIELDS = frozenset(
    (
        "rig_layout",
        "grid_shape",
        "grid_spacing",
        "grid_tilt_deg",
        "lens_profile",
        "fold_fraction",
        "gain_spread",
        "white_balance_spread",
        "vignetting",
        "full_well",
        "read_noise",
        "backscatter",
        "silt_patches",
        "silt_radius",
        "silt_contrast",
        "bowers",
        "bower_max_slope",
    )
)
_DEFAULTS = SyntheticSurveyConfig()
