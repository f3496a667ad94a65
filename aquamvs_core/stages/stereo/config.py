"""Configuration of the refractive plane sweep and of the per-camera combination, with presets
(:data:`PRESETS`; the whole reconstruction's presets are in :mod:`aquamvs_core.config`)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aquamvs_core.runtime import TorchDevice
from aquamvs_core.stages.depth_map import FALLBACK_DEPTH_BELOW_WATER_M


class PlaneSweepConfig(BaseModel):
    """Parameters of the plane sweep (:func:`sweep_pair`) and of the per-camera combination
    (:func:`~aquamvs_core.stages.stereo.combine.combine_pair_depths`). See :data:`PRESETS`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- hypotheses -------------------------------------------------------------------------------
    num_depths: int = Field(
        128, ge=2, le=4096, description="hypothesis planes of the full-range sweep, at most"
    )
    plane_step_px: float | None = Field(
        0.25,
        gt=0.0,
        le=8.0,
        description="fewer planes than num_depths when they would be closer than this: the largest step "
        "between planes, in pixels of the coarse level at the pair's most sensitive pixel (None: "
        "always num_depths)",
    )
    min_depths: int = Field(16, ge=2, le=4096, description="planes of the full-range sweep, at least")
    z_min: float | None = Field(None, description="world Z of the shallowest plane, m (see z_range)")
    z_max: float | None = Field(None, description="world Z of the deepest plane, m (see z_range)")
    fallback_depth_below_water: tuple[float, float] = Field(
        FALLBACK_DEPTH_BELOW_WATER_M,
        description="when no range is given anywhere: sweep water_z + these depths, m",
    )
    range_margin: float = Field(
        0.01, ge=0.0, description="the refinement may leave [z_min, z_max] by this much, m"
    )

    # --- correlation -----------------------------------------------------------------------------
    window: int = Field(9, ge=3, le=31, description="NCC window side, pixels (odd)")
    min_valid_fraction: float = Field(
        0.6,
        gt=0.0,
        le=1.0,
        description="1: a window with any invalid sample is invalid (fast); < 1: masked statistics over "
        "the valid part of windows that are at least this full",
    )
    sweep_min_valid_fraction: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="min_valid_fraction of the full-range sweep (the refinement re-seeds the pixels it "
        "misses near the borders from their neighbours)",
    )
    min_std: float = Field(0.004, ge=0.0, description="textureless below this window std (grey in [0, 1])")
    image_blur_sigma: float = Field(
        0.7, ge=0.0, le=5.0, description="Gaussian prefilter of both images, px (reduces aliasing noise)"
    )
    interpolation: Literal["bilinear", "bicubic"] = Field(
        "bicubic",
        description="source sampling of the refinement at levels <= interpolation_max_level (bicubic "
        "reduces the pixel-locking bias of bilinear interpolation); the sweep is always bilinear",
    )
    interpolation_max_level: int = Field(0, ge=0, le=5, description="see interpolation")

    # --- warp -------------------------------------------------------------------------------------
    warp_stride: int = Field(16, ge=2, le=256, description="lattice step of the exact warp, pixels")
    warp_degree: int = Field(5, ge=1, le=12, description="polynomial degree of the warp in inverse depth")

    # --- coarse to fine ---------------------------------------------------------------------------
    coarse_level: int = Field(2, ge=0, le=5, description="pyramid level of the full-range sweep (scale 2^-L)")
    refine_schedule: tuple[tuple[int, float], ...] = Field(
        ((1, 0.5), (1, 0.2), (0, 0.15)),
        description="refinement iterations (pyramid level, step in pixels of that level), in order",
    )
    refine_radius: int = Field(2, ge=1, le=8, description="offsets -R..R of each refinement iteration")
    multiscale_fallback: bool = Field(
        False,
        description="where the finest level's correlation fails (weak texture), keep the depth of the "
        "finest coarser refinement level that matched (off: on the turbid-silt survey it raised the silt's "
        "completeness from 96.9 to 99.6 % but the p90 from 0.78 to 0.99 mm, "
        "benchmarks/results/texture_cpu.md)",
    )
    surface_smoothing: int = Field(
        9,
        ge=0,
        le=31,
        description="side of the box filter applied to the depth before it is used as the surface of a "
        "refinement iteration, pixels of that level (odd; at least the window is used)",
    )
    hypothesis_batch: int = Field(32, ge=1, le=4096, description="planes evaluated at once")
    tile_elements: int = Field(
        1 << 18, ge=1 << 10, description="samples per NCC tile (cache-sized; also bounds the memory)"
    )

    # --- confidence -------------------------------------------------------------------------------
    min_ncc: float = Field(0.5, ge=-1.0, lt=1.0, description="final NCC below this: invalid")
    peak_exclusion_px: float = Field(
        1.0, gt=0.0, description="a second peak must be this far (sweep-level px) from the best"
    )
    margin_scale: float = Field(
        0.1, gt=0.0, description="NCC margin to the second peak giving full distinctiveness"
    )
    min_confidence: float = Field(0.05, ge=0.0, le=1.0, description="pair pixels below this: invalid")

    # --- per-camera combination -------------------------------------------------------------------
    agreement_tol_mm: float = Field(
        2.0, gt=0.0, description="pair depths agree within this world-Z distance, mm"
    )
    min_pair_confidence: float = Field(0.1, ge=0.0, le=1.0, description="pair depths below this are ignored")
    combine_method: Literal["median", "weighted_mean", "weighted_median"] = Field(
        "weighted_mean",
        description="value of the consensus: median, or mean / median weighted by confidence × px_per_mm²",
    )
    single_pair_min_confidence: float = Field(
        0.5, ge=0.0, le=1.0, description="a pixel with one supporting pair needs this confidence"
    )

    # --- execution --------------------------------------------------------------------------------
    device: TorchDevice = Field("cpu", description="torch device")
    dtype: Literal["float32", "float64"] = Field("float32", description="working precision")

    @field_validator("window", "surface_smoothing")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0 and v != 0:
            raise ValueError(f"must be odd, got {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> PlaneSweepConfig:
        if (self.z_min is None) != (self.z_max is None):
            raise ValueError("give both z_min and z_max, or neither")
        if self.z_min is not None and not self.z_max > self.z_min:  # type: ignore[operator]
            raise ValueError(f"z_max ({self.z_max}) must exceed z_min ({self.z_min})")
        lo, hi = self.fallback_depth_below_water
        if not 0 < lo < hi:
            raise ValueError(f"fallback_depth_below_water must be 0 < lo < hi, got {(lo, hi)}")
        level = self.coarse_level
        for lvl, step in self.refine_schedule:
            if not 0 <= lvl <= level:
                raise ValueError(
                    "refine_schedule levels must be non-increasing and within [0, coarse_level]: "
                    f"{self.refine_schedule}"
                )
            if not 0 < step <= 8:
                raise ValueError(f"refine_schedule steps must be in (0, 8] pixels, got {step}")
            level = lvl
        return self

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == "float64" else torch.float32


#: Presets of this stage. ``balanced`` is the default configuration. Measured on the default
#: synthetic survey (640×480; each of the 8 ring cameras against its 4 nearest ring cameras and the
#: fisheye, sparse range; one torch thread on a shared 2-core CPU), per-camera depth vs ground truth,
#: median / p90 vertical error, valid fraction, time for all 8 cameras: fast 0.27 / 0.76 mm, 98.0 %,
#: 9.3 s; balanced 0.19 / 0.55 mm, 99.0 %, 16.0 s; quality 0.17 / 0.49 mm, 99.1 %, 28.5 s.
#: (Measured with 64 / 128 / 192 planes, before ``plane_step_px``: a sparse range now takes 16 planes in
#: every preset, with the same fused accuracy, ``benchmarks/results/pipeline_cpu.md``.)
PRESETS: dict[str, PlaneSweepConfig] = {
    # Refinement ends at half resolution (the depth is upsampled): about twice as fast.
    "fast": PlaneSweepConfig(
        num_depths=64,
        window=7,
        warp_stride=32,
        warp_degree=4,
        refine_schedule=((1, 0.5), (1, 0.2), (1, 0.15)),
        interpolation_max_level=1,
    ),
    "balanced": PlaneSweepConfig(),
    "quality": PlaneSweepConfig(
        num_depths=192,
        refine_schedule=((1, 0.5), (1, 0.2), (0, 0.25), (0, 0.12), (0, 0.08)),
        surface_smoothing=11,
    ),
}
