"""Refractive plane-sweep stereo of one (reference, source) camera pair.

**Hypotheses.** Every pixel of the reference (undistorted) image has a fixed refracted ray
``o + s d`` (:meth:`~aquamvs_core.camera.refraction.RefractiveCamera.cast_ray`). Hypothesis ``k`` is the
horizontal world plane ``Z = z_k`` (``z_k`` uniform in ``[z_min, z_max]``), i.e. the per-pixel ray
depth ``s_k(u, v) = (z_k − water_z) / d_z(u, v)``. Why planes of constant world Z:

* they are parallel to the water surface and to the nominal bed, so for a bed that is roughly
  horizontal the correlation windows of the two views see nearly the same patch (fronto-parallel
  to the *bed*, which the refracted rays are not);
* uniform steps in world Z are uniform steps in ray depth for every pixel (``ds = dz / d_z``), so
  the same hypothesis count resolves every pixel alike;
* under refraction no homography maps one view of a plane to another, so "plane-induced
  homographies" are not an option anyway: the warp is computed exactly on a lattice and
  interpolated (:mod:`aquamvs_core.stages.stereo.plane_warp`).

**Pipeline** (:func:`sweep_pair`):

1. images → grey in [0, 1], Gaussian prefilter (normalized by the validity mask; it reduces the
   aliasing noise of the sub-pixel matching), NaN where invalid; a pyramid by ``2^L`` block
   averaging (:class:`PreparedImage`, cached per view);
2. the warp field (exact projections on a lattice, :func:`~aquamvs_core.stages.stereo.plane_warp.build_warp_field`)
   over ``[z_min − range_margin, z_max + range_margin]``;
3. **sweep** at pyramid level ``coarse_level`` over all ``num_depths`` planes, in batches of
   ``hypothesis_batch`` planes: windowed NCC (:mod:`aquamvs_core.stages.stereo.ncc`); only the running best
   score, its plane, the scores of its two neighbouring planes and the per-bin maxima (for the second
   peak) are kept. Winner-take-all, then a parabola through the best plane and its neighbours gives
   the sub-plane depth;
4. **refinement** (``refine_schedule``: a list of ``(level, step_px)``): the depth map is upsampled
   to ``level`` when needed (world Z, bilinear, after filling small holes) and searched again at
   ``2 refine_radius + 1`` offsets ``j δ`` around it, ``δ = step_px / |∂w/∂z|`` (the world-Z step
   that moves the source sample by ``step_px`` pixels at this pixel). Offset ``j`` is the *surface*
   ``z(u, v) + j δ(u, v)``, so the windows follow the current depth estimate (slanted and curved
   beds included) instead of a fronto-parallel plane; a parabola through the best offset and its
   neighbours gives the new depth. A best offset at the band edge only moves the estimate and marks
   it unconverged; the next iteration re-centres on it. The surface is the previous depth
   box-filtered over ``surface_smoothing`` pixels (NaN-aware): without it each iteration would add
   its pixel-level noise to the last one's (measured: repeating iterations made the error grow),
   with it they converge;
5. validity: a finite depth whose last iteration converged (best offset strictly inside the band),
   with NCC ``>= min_ncc``, world Z within ``range_margin / 2`` of ``[z_min, z_max]``, a valid
   reference pixel and confidence ``>= min_confidence`` (confidence: see :class:`PairDepth`).

**Memory.** Hypotheses are evaluated in tiles of at most ``tile_elements`` samples (a slice of
``hypothesis_batch`` planes, or of the ``2 refine_radius + 1`` offsets, times a band of rows plus
the window halo); a tile needs about ``4 bytes × 12 × tile_elements`` (3 MB at the default 65 536).
Everything else is a set of per-level (H_l, W_l) maps: the warp coefficients
(``2 (warp_degree + 1)`` maps, briefly twice while they are built), the refinement's Taylor maps and
their padded copies (~20), the reference window statistics (7), the running best / neighbours /
second-peak bins of the sweep (``nbins ≤ num_depths`` at the coarse level; bins are about
``peak_exclusion_px`` wide, a handful for a sparse range) and work maps. Peak ≈ 100 full-resolution
float32 maps, ``≈ 400 × H × W`` bytes: measured 140 MB at 640×480 and 740 MB at 1600×1200 above
the process baseline (balanced preset). No (D, H, W) volume is ever stored; ``tile_elements`` and
``hypothesis_batch`` do not change the result (tested).

All computation runs under ``torch.no_grad()`` on ``config.device`` in ``config.dtype`` (float32 by
default; the warp fit is float64).
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aquamvs_core.stages.depth_map import pixel_grid
from aquamvs_core.camera.refraction import RefractiveCamera
from aquamvs_core.runtime import TorchDevice
from aquamvs_core.stages.stereo.ncc import (
    GridFn,
    RefWindows,
    downsample,
    gaussian_blur,
    pad_nan,
    ref_windows,
    slice_ncc,
    to_grey,
    window_sum,
)
from aquamvs_core.stages.stereo.plane_warp import OUTSIDE, LevelWarp, WarpField, build_warp_field

ImageLike = np.ndarray | torch.Tensor


class PlaneSweepConfig(BaseModel):
    """Parameters of the plane sweep (:func:`sweep_pair`) and of the per-camera combination
    (:func:`~aquamvs_core.stages.stereo.combine.combine_pair_depths`). See :data:`PRESETS`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- hypotheses -------------------------------------------------------------------------------
    num_depths: int = Field(128, ge=2, le=4096, description="hypothesis planes of the full-range sweep")
    z_min: float | None = Field(None, description="world Z of the shallowest plane, m (see z_range)")
    z_max: float | None = Field(None, description="world Z of the deepest plane, m (see z_range)")
    fallback_depth_below_water: tuple[float, float] = Field(
        (0.05, 2.0),
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
    surface_smoothing: int = Field(
        9,
        ge=0,
        le=31,
        description="side of the box filter applied to the depth before it is used as the surface of a "
        "refinement iteration, pixels of that level (odd; at least the window is used)",
    )
    hypothesis_batch: int = Field(32, ge=1, le=4096, description="planes evaluated at once")
    tile_elements: int = Field(
        1 << 16, ge=1 << 10, description="samples per NCC tile (cache-sized; also bounds the memory)"
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


@dataclass
class PairDepth:
    """Depth of the reference camera of one pair, on its undistorted full-resolution pixel grid.

    Attributes:
        ref, src: camera names (may be empty).
        depth: (H, W) ray depth, metres (:mod:`aquamvs_core.stages.depth_map` convention); NaN where invalid.
        confidence: (H, W) in [0, 1]; 0 where ``depth`` is NaN. The product of an NCC term
            ``(ncc − min_ncc) / (1 − min_ncc)`` and a distinctiveness term
            ``min(1, margin / margin_scale)`` (``margin``: best sweep NCC minus the best NCC at least
            ``peak_exclusion_px`` away).
        ncc: (H, W) final NCC at the depth (NaN where none could be computed).
        world_z: (H, W) world Z of the depth, metres; NaN where invalid.
        px_per_mm: (H, W) how far (full-resolution source pixels) the source sample moves per mm of
            world Z at this depth: the pair's depth resolution (its precision scales with it).
        timings: seconds per stage.
        warp_fit_residual_px: largest residual of the warp polynomial at its fit nodes, pixels.
    """

    ref: str
    src: str
    depth: torch.Tensor
    confidence: torch.Tensor
    ncc: torch.Tensor
    world_z: torch.Tensor
    px_per_mm: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)
    warp_fit_residual_px: float = 0.0

    @property
    def valid(self) -> torch.Tensor:
        return torch.isfinite(self.depth)


def resolve_z_range(
    config: PlaneSweepConfig, water_z: float, z_range: tuple[float, float] | None = None
) -> tuple[float, float]:
    """World-Z range of the sweep: ``z_range`` if given (e.g. from sparse points), else the config's
    ``z_min``/``z_max``, else ``water_z + fallback_depth_below_water``. Must lie below the water."""
    if z_range is not None:
        lo, hi = float(z_range[0]), float(z_range[1])
    elif config.z_min is not None and config.z_max is not None:
        lo, hi = config.z_min, config.z_max
    else:
        lo, hi = (water_z + d for d in config.fallback_depth_below_water)
    if not water_z < lo < hi:
        raise ValueError(f"invalid depth range [{lo}, {hi}] for water at Z={water_z}")
    return lo, hi


def z_range_from_points(
    points: torch.Tensor, water_z: float, margin: float = 0.02, quantiles: tuple[float, float] = (0.01, 0.99)
) -> tuple[float, float]:
    """Sweep range from 3-D points (N, 3) (e.g. sparse triangulation): the ``quantiles`` of their world
    Z widened by ``margin`` metres on both sides, kept below the water surface."""
    z = points.reshape(-1, 3)[:, 2].double()
    z = z[torch.isfinite(z) & (z > water_z)]
    if z.numel() < 2:
        raise ValueError("need at least two finite underwater points")
    lo, hi = torch.quantile(z, torch.tensor(quantiles, dtype=z.dtype)).tolist()
    return max(water_z + 1e-3, lo - margin), hi + margin


# ---------------------------------------------------------------------------------------------
# Preparation
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class PreparedImage:
    """An image ready for matching (:func:`prepare_image`); its pyramid levels and reference window
    statistics are computed on first use and cached, so a view used in several pairs is prepared once.

    Attributes:
        grey: (H, W) grey values in [0, 1] after the prefilter, NaN where invalid.
        blur_sigma: the Gaussian prefilter applied, pixels.
    """

    grey: torch.Tensor
    blur_sigma: float
    _cache: dict = field(default_factory=dict, repr=False)

    def level(self, level: int) -> torch.Tensor:
        """(H_l, W_l) pyramid level ``level`` minus its mean over finite pixels."""
        key = ("level", level)
        if key not in self._cache:
            img = downsample(self.grey, level)
            self._cache[key] = img - torch.nan_to_num(torch.nanmean(img), nan=0.0)
        return self._cache[key]

    def windows(self, level: int, window: int, min_std: float) -> RefWindows:
        """Reference window statistics of pyramid level ``level``."""
        key = ("windows", level, window, min_std)
        if key not in self._cache:
            self._cache[key] = ref_windows(self.level(level), window, min_std)
        return self._cache[key]


@torch.no_grad()
def prepare_image(image: ImageLike, mask: ImageLike | None, config: PlaneSweepConfig) -> PreparedImage:
    """Grey image in [0, 1] on the config's device/dtype, NaN outside ``mask`` (H, W) bool, after the
    Gaussian prefilter ``config.image_blur_sigma``.

    The prefilter is normalized by the mask (``blur(image · mask) / blur(mask)``), so invalid (black)
    pixels do not bleed into valid ones.
    """
    device, dtype = torch.device(config.device), config.torch_dtype
    grey = to_grey(image, device, dtype)
    valid = torch.isfinite(grey)
    if mask is not None:
        m = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.asarray(mask))
        if tuple(m.shape) != tuple(grey.shape):
            raise ValueError(f"mask {tuple(m.shape)} does not match the image {tuple(grey.shape)}")
        valid = valid & m.to(device=device, dtype=torch.bool)
    sigma = config.image_blur_sigma
    if sigma > 0:
        if bool(valid.all()):
            grey = gaussian_blur(grey, sigma)
        else:
            both = gaussian_blur(torch.stack([torch.where(valid, grey, 0.0), valid.to(dtype)]), sigma)
            grey = both[0] / both[1].clamp_min(1e-6)
    return PreparedImage(torch.where(valid, grey, torch.full_like(grey, math.nan)), sigma)


def _as_prepared(
    image: ImageLike | PreparedImage, mask: ImageLike | None, config: PlaneSweepConfig
) -> PreparedImage:
    if not isinstance(image, PreparedImage):
        return prepare_image(image, mask, config)
    if abs(image.blur_sigma - config.image_blur_sigma) > 1e-12:
        raise ValueError(
            f"image prepared with blur {image.blur_sigma}, the config asks for {config.image_blur_sigma}"
        )
    if image.grey.dtype != config.torch_dtype or image.grey.device != torch.device(config.device):
        raise ValueError(
            f"image prepared as {image.grey.dtype} on {image.grey.device}, the config asks for "
            f"{config.torch_dtype} on {config.device}"
        )
    return image


@dataclass
class _Level:
    """Everything a pyramid level needs."""

    level: int
    ref: RefWindows
    src_padded: torch.Tensor
    warp: LevelWarp


def _make_level(
    level: int, ref_p: PreparedImage, src_p: PreparedImage, field_: WarpField, config: PlaneSweepConfig
) -> _Level:
    pad = 2  # NaN border of the sampled source: enough for bicubic taps
    src_l = src_p.level(level)
    warp = field_.level(
        level,
        (src_l.shape[1], src_l.shape[0]),
        pad,
        border=config.window // 2,
        dtype=config.torch_dtype,
        device=config.device,
    )
    return _Level(
        level=level,
        ref=ref_p.windows(level, config.window, config.min_std),
        src_padded=pad_nan(src_l, pad),
        warp=warp,
    )


def _ncc(
    lv: _Level,
    grid_fn: GridFn,
    n_slices: int,
    config: PlaneSweepConfig,
    min_valid_fraction: float,
    mode: str,
) -> torch.Tensor:
    return slice_ncc(
        lv.ref,
        lv.src_padded,
        grid_fn,
        n_slices,
        mode=mode,
        min_std=config.min_std,
        min_valid_fraction=min_valid_fraction,
        tile_elements=config.tile_elements,
    )


# ---------------------------------------------------------------------------------------------
# Sub-hypothesis refinement helpers
# ---------------------------------------------------------------------------------------------


def parabola_peak(
    left: torch.Tensor, centre: torch.Tensor, right: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertex of the parabola through ``(-1, left), (0, centre), (1, right)`` (same shapes).

    Returns the offset in [-0.5, 0.5] (0 where a neighbour is missing/NaN or the samples are not
    concave) and the interpolated peak value.
    """
    denom = left - 2 * centre + right
    ok = torch.isfinite(left) & torch.isfinite(right) & (denom < 0)
    off = torch.where(ok, 0.5 * (left - right) / torch.where(ok, denom, -torch.ones_like(denom)), 0.0)
    off = off.clamp(-0.5, 0.5)
    peak = torch.where(ok, centre - 0.25 * (left - right) * off, centre)
    return off, peak


def _gather(volume: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``volume[index[h, w], h, w]`` for (B, H, W) and (H, W) long ``index`` (clamped to [0, B-1])."""
    return torch.gather(volume, 0, index.clamp(0, volume.shape[0] - 1).unsqueeze(0))[0]


# ---------------------------------------------------------------------------------------------
# Sweep
# ---------------------------------------------------------------------------------------------


@dataclass
class _SweepResult:
    z: torch.Tensor  # (H_l, W_l) world Z, NaN where no hypothesis was valid
    ncc: torch.Tensor  # (H_l, W_l) peak NCC
    margin: torch.Tensor  # (H_l, W_l) best − second-best distinct peak (inf: none; NaN: no best)


def _sweep(lv: _Level, field_: WarpField, z_planes: torch.Tensor, config: PlaneSweepConfig) -> _SweepResult:
    """Winner-take-all over all planes in batches, then the parabola (see the module docstring)."""
    h, w = lv.ref.x.shape
    device, dtype = lv.ref.x.device, lv.ref.x.dtype
    d = z_planes.numel()
    t_planes = field_.t_of_z(z_planes.double()).to(dtype)
    dz = float(z_planes[1] - z_planes[0])
    # Bins for the second peak: about peak_exclusion_px wide (median sensitivity of this level).
    z_mid = torch.full((h, w), float(z_planes[d // 2]), dtype=dtype, device=device)
    sens = lv.warp.sensitivity(z_mid)
    sens_med = float(sens[torch.isfinite(sens)].median()) if bool(torch.isfinite(sens).any()) else 1.0
    group = max(1, math.ceil(config.peak_exclusion_px / max(sens_med * dz, 1e-12)))
    n_bins = math.ceil(d / group)

    neg_inf = torch.tensor(-math.inf, dtype=dtype, device=device)
    best = torch.full((h, w), -math.inf, dtype=dtype, device=device)
    idx = torch.zeros((h, w), dtype=torch.long, device=device)
    left = torch.full((h, w), math.nan, dtype=dtype, device=device)
    right = torch.full((h, w), math.nan, dtype=dtype, device=device)
    bins = torch.full((n_bins, h, w), -math.inf, dtype=dtype, device=device)
    prev: torch.Tensor | None = None
    for k0 in range(0, d, config.hypothesis_batch):
        k1 = min(d, k0 + config.hypothesis_batch)
        tb = t_planes[k0:k1]
        c = _ncc(
            lv,
            lambda sl, rows, tb=tb: lv.warp.planes(tb[sl], rows),
            k1 - k0,
            config,
            config.sweep_min_valid_fraction,
            "bilinear",
        )  # (b, H, W)
        b = k1 - k0
        if prev is not None:  # the right neighbour of a best found at the end of the previous batch
            right = torch.where(idx == k0 - 1, c[0], right)
        cf = torch.where(torch.isnan(c), neg_inf, c)
        bmax, barg = cf.max(dim=0)
        upd = bmax > best
        lft = _gather(c, barg - 1)
        if prev is not None:
            lft = torch.where(barg == 0, prev, lft)
        else:
            lft = torch.where(barg == 0, torch.full_like(lft, math.nan), lft)
        rgt = torch.where(barg == b - 1, torch.full_like(lft, math.nan), _gather(c, barg + 1))
        best = torch.where(upd, bmax, best)
        idx = torch.where(upd, barg + k0, idx)
        left = torch.where(upd, lft, left)
        right = torch.where(upd, rgt, right)
        for bi in range(k0 // group, (k1 - 1) // group + 1):
            a, e = max(k0, bi * group) - k0, min(k1, (bi + 1) * group) - k0
            bins[bi] = torch.maximum(bins[bi], cf[a:e].amax(dim=0))
        prev = c[-1]

    off, peak = parabola_peak(left, best, right)
    found = torch.isfinite(best)
    z = z_planes.to(dtype)[idx] + off * dz
    z = torch.where(found, z, torch.full_like(z, math.nan))
    bin_of_best = idx // group
    far = (torch.arange(n_bins, device=device).view(-1, 1, 1) - bin_of_best.unsqueeze(0)).abs() >= 2
    second = torch.where(far, bins, neg_inf).amax(dim=0)
    margin = torch.where(torch.isfinite(second), best - second, torch.full_like(best, math.inf))
    margin = torch.where(found, margin, torch.full_like(margin, math.nan))
    peak = torch.where(found, peak, torch.full_like(peak, math.nan))
    return _SweepResult(z=z, ncc=peak, margin=margin)


# ---------------------------------------------------------------------------------------------
# Refinement
# ---------------------------------------------------------------------------------------------


def fill_nan(z: torch.Tensor, iterations: int) -> torch.Tensor:
    """Fill NaN pixels of an (H, W) map next to finite ones with the mean of their finite 3×3
    neighbours, ``iterations`` times (grows the finite region by one pixel per iteration)."""
    for _ in range(iterations):
        finite = torch.isfinite(z)
        if bool(finite.all()) or not bool(finite.any()):
            break
        w = finite.to(z.dtype)[None, None]
        v = torch.where(finite, z, torch.zeros_like(z))[None, None]
        s = F.avg_pool2d(v, 3, 1, 1, count_include_pad=False)[0, 0]
        n = F.avg_pool2d(w, 3, 1, 1, count_include_pad=False)[0, 0]
        z = torch.where(finite | (n == 0), z, s / n.clamp_min(1e-12))
    return z


def smooth_surface(z: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of the finite values of ``z`` (H, W) over ``size × size`` windows (NaN where none; the
    window is clipped at the image border). ``size <= 1``: ``z`` unchanged."""
    if size <= 1:
        return z
    r = size // 2
    finite = torch.isfinite(z)
    stack = torch.stack([torch.where(finite, z, torch.zeros_like(z)), finite.to(z.dtype)])
    sums = window_sum(F.pad(stack, (r, r, r, r)), size)
    return torch.where(sums[1] > 0, sums[0] / sums[1].clamp_min(1.0), torch.full_like(z, math.nan))


def upsample(x: torch.Tensor, from_level: int, to_level: int, full_size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling of an (H_a, W_a) level-``from_level`` map onto level ``to_level``'s pixel
    centres (border values extend outwards; NaN spreads to the samples that touch it)."""
    if from_level == to_level:
        return x
    w_full, h_full = full_size
    f_to, f_from = 2**to_level, 2**from_level
    h_b, w_b = h_full // f_to, w_full // f_to
    h_a, w_a = x.shape
    dev, dt = x.device, x.dtype
    u = ((torch.arange(w_b, device=dev, dtype=dt) + 0.5) * f_to / f_from) * 2 / w_a - 1
    v = ((torch.arange(h_b, device=dev, dtype=dt) + 0.5) * f_to / f_from) * 2 / h_a - 1
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    grid = torch.stack([uu, vv], dim=-1)[None]
    out = F.grid_sample(x[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, 0]


@dataclass
class _RefineResult:
    z: torch.Tensor  # (H, W) new world Z (NaN where nothing could be evaluated)
    ncc: torch.Tensor  # (H, W) peak NCC (NaN: none)
    converged: torch.Tensor  # (H, W) bool: best offset strictly inside the band
    px_per_m: torch.Tensor  # (H, W) source pixels (of this level) per metre of world Z at the input z


def _refine(
    lv: _Level, field_: WarpField, z: torch.Tensor, step_px: float, config: PlaneSweepConfig
) -> _RefineResult:
    """One local search around the surface ``z`` (H_l, W_l) (see the module docstring, step 4)."""
    rad = config.refine_radius
    # The surface of the offsets: the depth, box-smoothed (NaN-aware; this also fills pixels next to
    # depths, so that a pixel without a result does not spoil its neighbours' windows).
    z = smooth_surface(z, max(config.surface_smoothing, config.window))
    seeded = torch.isfinite(z)
    zs = torch.where(seeded, z, torch.full_like(z, 0.5 * (field_.z_lo + field_.z_hi)))
    # Source position of the offset j δ: second-order Taylor expansion in j of the (polynomial) warp
    # around z; over a band of a few pixels its error is far below 1e-3 px.
    w0, d1, d2 = lv.warp.taylor(zs, order=2)
    sens = lv.warp.speed(d1)
    span = field_.z_hi - field_.z_lo
    delta = torch.where(sens > 0, step_px / sens.clamp_min(1e-12), torch.full_like(sens, span))
    delta = delta.clamp(max=span / (2 * rad))
    dd = delta.unsqueeze(-1)
    lin = d1 * dd
    quad = d2 * (0.5 * dd * dd)
    bw = config.window // 2
    h, w = z.shape
    pad_w0 = torch.full((h + 2 * bw, w + 2 * bw, 2), OUTSIDE, dtype=z.dtype, device=z.device)
    pad_w0[bw : bw + h, bw : bw + w] = torch.where(seeded.unsqueeze(-1), w0, OUTSIDE)
    pad_lin = F.pad(lin.permute(2, 0, 1), (bw,) * 4).permute(1, 2, 0)
    pad_quad = F.pad(quad.permute(2, 0, 1), (bw,) * 4).permute(1, 2, 0)
    j = torch.arange(-rad, rad + 1, device=z.device, dtype=z.dtype).view(-1, 1, 1, 1)

    def grid_fn(sl: slice, rows: slice) -> torch.Tensor:
        js = j[sl]
        return torch.addcmul(torch.addcmul(pad_w0[rows], js, pad_lin[rows]), js * js, pad_quad[rows])

    mode = config.interpolation if lv.level <= config.interpolation_max_level else "bilinear"
    c = _ncc(lv, grid_fn, 2 * rad + 1, config, config.min_valid_fraction, mode)  # (2R+1, H, W)
    cf = torch.nan_to_num(c, nan=-math.inf)
    bmax, barg = cf.max(dim=0)
    found = torch.isfinite(bmax)
    lft = torch.where(barg == 0, torch.full_like(bmax, math.nan), _gather(c, barg - 1))
    rgt = torch.where(barg == 2 * rad, torch.full_like(bmax, math.nan), _gather(c, barg + 1))
    off, peak = parabola_peak(lft, bmax, rgt)
    converged = found & (barg > 0) & (barg < 2 * rad)
    shift = (barg - rad).to(z.dtype) + torch.where(converged, off, torch.zeros_like(off))
    z_new = torch.where(found, zs + shift * delta, torch.full_like(z, math.nan))
    ncc = torch.where(found, peak, torch.full_like(peak, math.nan))
    return _RefineResult(z=z_new, ncc=ncc, converged=converged, px_per_m=sens)


_DZ_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_DZ_LOCK = threading.Lock()


def _ray_dz(
    cam: RefractiveCamera, w: int, h: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``d_z`` (H, W) of the refracted rays of every pixel and their validity (cached per camera)."""
    key = (w, h, str(device), dtype)
    with _DZ_LOCK:
        hit = _DZ_CACHE.get(cam, {}).get(key)
    if hit is None:
        _, directions, ok = cam.cast_ray(pixel_grid(w, h, device, dtype))
        hit = (directions[..., 2].contiguous(), ok)
        with _DZ_LOCK:
            _DZ_CACHE.setdefault(cam, {})[key] = hit
    return hit


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def sweep_pair(
    ref_img: ImageLike | PreparedImage,
    src_img: ImageLike | PreparedImage,
    ref_cam: RefractiveCamera,
    src_cam: RefractiveCamera,
    ref_mask: ImageLike | None = None,
    src_mask: ImageLike | None = None,
    config: PlaneSweepConfig | None = None,
    z_range: tuple[float, float] | None = None,
    names: tuple[str, str] = ("", ""),
) -> PairDepth:
    """Depth of ``ref_cam``'s view from the pair (ref, src) by refractive plane sweep.

    Args:
        ref_img, src_img: *undistorted* images, (H, W, 3) / (H, W) uint8 or float in [0, 1]
            (numpy or torch; they may differ in size), or :class:`PreparedImage` (then the mask
            arguments are ignored): prepare a view used in several pairs once.
        ref_cam, src_cam: refractive cameras of the undistorted images (``image_size`` set).
        ref_mask, src_mask: (H, W) bool validity of the undistorted images
            (:attr:`~aquamvs_core.camera.distortion.UndistortionMap.valid`); None: all valid.
        config: parameters (default :class:`PlaneSweepConfig`).
        z_range: world-Z range to sweep (overrides the config; see :func:`resolve_z_range`).
        names: (ref, src) camera names stored in the result.

    Returns:
        :class:`PairDepth` on the reference's full-resolution undistorted pixel grid.
    """
    config = config or PlaneSweepConfig()
    timings: dict[str, float] = {}
    t_start = t0 = time.perf_counter()
    if ref_cam.image_size is None:
        raise ValueError("ref_cam needs image_size")
    z_lo, z_hi = resolve_z_range(config, ref_cam.water_z, z_range)
    ref_p = _as_prepared(ref_img, ref_mask, config)
    src_p = _as_prepared(src_img, src_mask, config)
    h, w = ref_p.grey.shape
    if (w, h) != tuple(ref_cam.image_size):
        raise ValueError(f"reference image {w}x{h} does not match ref_cam.image_size {ref_cam.image_size}")
    timings["prepare"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    field_ = build_warp_field(
        ref_cam,
        src_cam,
        z_lo - config.range_margin,
        z_hi + config.range_margin,
        stride=config.warp_stride,
        degree=config.warp_degree,
        device=config.device,
    )
    levels = {config.coarse_level} | {lvl for lvl, _ in config.refine_schedule}
    lvs = {lvl: _make_level(lvl, ref_p, src_p, field_, config) for lvl in sorted(levels)}
    timings["warp"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    dtype, device = config.torch_dtype, torch.device(config.device)
    z_planes = torch.linspace(z_lo, z_hi, config.num_depths, dtype=torch.float64, device=device)
    sw = _sweep(lvs[config.coarse_level], field_, z_planes, config)
    timings["sweep"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    z, ncc, margin = sw.z, sw.ncc, sw.margin
    converged = torch.isfinite(z)
    px_per_m = torch.zeros_like(z)
    level = config.coarse_level
    full = (w, h)
    for lvl, step in config.refine_schedule:
        if lvl != level:
            # Pixels next to the area the sweep could evaluate (its windows reach further at coarse
            # levels) get the depth and margin of their neighbours, to be searched at finer levels.
            fill = config.window // 2 + 2
            z = upsample(fill_nan(z, fill), level, lvl, full)
            margin = upsample(fill_nan(margin.clamp(max=10.0), fill), level, lvl, full)
            level = lvl
        res = _refine(lvs[lvl], field_, z, step, config)
        z, ncc, converged, px_per_m = res.z, res.ncc, res.converged, res.px_per_m * 2.0**lvl
    if level != 0:
        z = upsample(z, level, 0, full)
        ncc = upsample(ncc, level, 0, full)
        converged = upsample(converged.to(dtype), level, 0, full) > 0.999
        margin = upsample(margin.clamp(max=10.0), level, 0, full)
        px_per_m = upsample(px_per_m, level, 0, full)
    timings["refine"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ncc_term = ((ncc - config.min_ncc) / (1.0 - config.min_ncc)).clamp(0.0, 1.0)
    distinct = (margin / config.margin_scale).clamp(0.0, 1.0)
    conf = torch.nan_to_num(ncc_term * distinct, nan=0.0)
    tol = 0.5 * config.range_margin
    valid = (
        torch.isfinite(z)
        & converged
        & (ncc >= config.min_ncc)
        & (z >= z_lo - tol)
        & (z <= z_hi + tol)
        & torch.isfinite(ref_p.grey)
        & (conf >= config.min_confidence)
    )
    d_z, ray_ok = _ray_dz(ref_cam, w, h, device, dtype)
    depth = (z - ref_cam.water_z) / d_z
    valid = valid & ray_ok
    nan = torch.full_like(z, math.nan)
    timings["finish"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    return PairDepth(
        ref=names[0],
        src=names[1],
        depth=torch.where(valid, depth, nan),
        confidence=torch.where(valid, conf, torch.zeros_like(conf)),
        ncc=ncc,
        world_z=torch.where(valid, z, nan),
        px_per_mm=px_per_m * 1e-3,
        timings=timings,
        warp_fit_residual_px=field_.fit_residual_px,
    )
